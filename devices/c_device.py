"""Glue for C devices (devices/c/): their frame files, their build, and `ddnn device-frames`.

A C device process (devices/c/device.c) runs the slice `ddnn codegen` generates on uint8
frames read from a raw frame file, and speaks the wire of the Python device. This module
writes the frame file a device replays: the very frames the Python device would replay
(`open_device_source`), as a camera gives them (`camera_frames`: rounded, uint8), so that
`frames:PATH` replays the same in both (devices/sources.py `RawFrameSource`). It builds the
binaries with the system's C compiler (`make` in devices/c/), refusing by name a missing
tool, and `build_c_devices` does all of it for a deployment: what `ddnn demo
--device-runtime c` reaches through the `ddnn.device_runtimes` entry point (the library never
imports a service).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ddnn.core.errors import DDNNError
from ddnn.core.manifest import read_manifest
from ddnn.core.packages import DEBIAN_PACKAGES
from ddnn.core.payloads import camera_frames
from ddnn.core.roles import Role, fed_tier
from ddnn.packed.codegen import generate
from devices.sources import ReplaySource, open_device_source

SOURCE_DIR = Path(__file__).parent / "c"
FRAMES_SPEC = "frames:{folder}/device-{{device}}.u8"  # `--source` of every device
BUILD_TIMEOUT = 300.0


def compiler() -> str:
    """The C compiler a build uses: $CC, else gcc."""
    return os.environ.get("CC", "gcc")


def missing_tools() -> list[str]:
    """The Debian packages a C device build lacks here (none: it can build): the compiler,
    make, and the headers and libraries of libmosquitto and msgpack-c, each checked by
    compiling and linking a line that uses it."""
    missing = [DEBIAN_PACKAGES["make"]] if shutil.which("make") is None else []
    if shutil.which(compiler()) is None:
        headers = [DEBIAN_PACKAGES[h] for h in ("mosquitto.h", "msgpack.h")]
        return [DEBIAN_PACKAGES["gcc"], *missing, *headers]
    probes = {
        "mosquitto.h": ("mosquitto_lib_version(0, 0, 0)", "-lmosquitto"),
        "msgpack.h": ("msgpack_sbuffer_new()", "-lmsgpackc"),
    }
    with tempfile.TemporaryDirectory(prefix="ddnn-cc-") as tmp:
        for header, (call, lib) in probes.items():
            probe = Path(tmp) / "probe.c"
            probe.write_text(f"#include <{header}>\nint main(void) {{ (void){call}; return 0; }}\n")
            run = subprocess.run(
                [compiler(), str(probe), "-o", str(Path(tmp) / "probe"), lib],
                capture_output=True,
            )
            if run.returncode != 0:
                missing.append(DEBIAN_PACKAGES[header])
    return missing


def check_tools() -> None:
    """Refuse, naming the packages, to build where a tool is missing."""
    if missing := missing_tools():
        raise DDNNError(
            f"building C devices needs {', '.join(missing)} (Debian packages; "
            f"`apt-get install {' '.join(missing)}`)"
        )


def build_device(
    slice_dir: Path, out: Path, fed: str | None, sanitize: bool = False
) -> subprocess.Popen:
    """Start `make` for one device binary at `out` from the generated slice in `slice_dir`
    (`ddnn_slice.h`, `ddnn_slice.c`); `fed`: the tier whose offload requests it reads (None:
    none, a model with a local exit alone). The caller waits (`finish`)."""
    command = ["make", "-s", "-C", str(SOURCE_DIR), f"SLICE={slice_dir}", f"OUT={out}"]
    command += [f"FED_TIER={fed or 'none'}", f"CC={compiler()}"]
    if sanitize:
        command.append("SANITIZE=1")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(builds: dict[Path, subprocess.Popen]) -> None:
    """Wait for the builds; a failed one raises with the compiler's words."""
    for out, build in builds.items():
        output, _ = build.communicate(timeout=BUILD_TIMEOUT)
        if build.returncode != 0:
            raise DDNNError(f"building {out.name} failed:\n{output.strip()[-2000:]}")


def write_frames(source: ReplaySource, path: Path) -> Path:
    """A replay source's frames as a raw frame file (N x C x H x W uint8): `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    camera_frames(source.views).tofile(path)
    return path


@dataclass
class CDevices:
    """Built C devices of one export: a binary per device, and the `--source` that has every
    device (a C one, or a Python one run beside it) replay its frame file."""

    binaries: dict[int, Path]
    source: str

    def command(self, role: Role) -> list[str] | None:
        """The command line that starts `role` as a C device (None: not a device of these)."""
        binary = self.binaries.get(role.index) if role.tier == "device" else None
        return None if binary is None else [str(binary)]


def build_c_devices(
    artifacts: Path,
    workdir: Path,
    devices: Iterable[int] | None = None,
    data: str | None = None,
    sanitize: bool = False,
) -> CDevices:
    """Generate, build and give frames to the C devices of an export (all, or `devices`),
    under `workdir`: `slices/device-<i>/` (`ddnn codegen`), `bin/device-<i>`, and
    `frames/device-<i>.u8`, the test part of `data` (a SPEC; default: the data the model was
    trained on) that device replays, as uint8."""
    check_tools()
    manifest = read_manifest(artifacts)
    model = manifest.ddnn_config().model
    wanted = list(range(model.n_devices) if devices is None else devices)
    slices = generate(artifacts, workdir / "slices", wanted)
    builds = {}
    for device in wanted:
        out = workdir / "bin" / f"device-{device}"
        fed = fed_tier(model, Role.device(device))
        builds[out] = build_device(slices[device][0].parent, out, fed, sanitize)
    frames = workdir / "frames"
    for device in wanted:  # while the compilers run
        source = open_device_source(manifest, device, data)
        if not isinstance(source, ReplaySource):
            raise DDNNError(f"C devices replay a data set; {source.name} is not one")
        write_frames(source, frames / f"device-{device}.u8")
    finish(builds)
    return CDevices(
        {d: workdir / "bin" / f"device-{d}" for d in wanted}, FRAMES_SPEC.format(folder=frames)
    )


def device_frames(
    artifacts: Annotated[
        Path, typer.Option("--artifacts", help="a directory written by `ddnn export`")
    ],
    device_id: Annotated[int, typer.Option("--id", min=0, help="which device of the model")],
    out: Annotated[Path, typer.Option(help="the frame file to write")],
    source: Annotated[
        str | None,
        typer.Option(
            help="the data set to replay: synth | mvmc:PATH | tiles:PATH (default: the data "
            "the model was trained on); its test part, as `ddnn device` replays it"
        ),
    ] = None,
) -> None:
    """Write the raw frame file a C device replays (`--source frames:PATH`): the frames the
    Python device would replay, as uint8 (N x C x H x W, nothing else)."""
    manifest = read_manifest(artifacts)
    n = manifest.ddnn_config().model.n_devices
    if device_id >= n:
        raise DDNNError(f"--id {device_id}: the model has devices 0..{n - 1}")
    frames = open_device_source(manifest, device_id, source)
    if not isinstance(frames, ReplaySource):
        raise DDNNError(f"a frame file holds a replayed data set; {frames.name} is not one")
    write_frames(frames, out)
    shape = "x".join(map(str, frames.views.shape[1:]))
    typer.echo(f"{out}: {frames.length} frames of {shape} uint8 from {frames.name}")
