"""The Debian package that brings each build tool or C header the project uses: one table, so
that every refusal names the same package (.ci/run installs them all)."""

DEBIAN_PACKAGES = {
    "gcc": "gcc",
    "make": "make",
    "arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
    "mosquitto.h": "libmosquitto-dev",
    "msgpack.h": "libmsgpack-dev",
}
