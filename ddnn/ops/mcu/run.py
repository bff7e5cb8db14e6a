"""A device's generated C slice on a Cortex-M under QEMU: `ddnn inspect --mcu`.

Cross-compiled with arm-none-eabi-gcc and newlib (semihosting: the frames come from a host
file, the results go to another), run on QEMU's MPS2 board of that core with `-icount
shift=0`, and checked bit for bit against the packed runtime on the same uint8 frames. The
figures: flash and static RAM of the slice's own object (`arm-none-eabi-size`, no C
library), its measured stack, and instructions per frame (docs/design/c-devices.md).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.core.errors import DDNNError
from ddnn.core.payloads import pack_bits
from ddnn.ops.cslice import CFLAGS, compile_c, need_tool
from ddnn.packed.codegen import SOURCE, write_slice
from ddnn.packed.format import PackedModel
from ddnn.packed.kernels import runner

QEMU_TIMEOUT = 600.0  # seconds for a run under QEMU (100 frames take well under one)
MHZ = 48  # the clock the README's milliseconds per frame assume


@dataclass(frozen=True)
class Core:
    board: str  # QEMU's machine of this core
    flags: tuple[str, ...]  # arm-none-eabi-gcc's


CORES = {
    "cortex-m3": Core("mps2-an385", ("-mcpu=cortex-m3", "-mthumb")),
    "cortex-m4": Core(
        "mps2-an386", ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard")
    ),
}


def _harness_file(name: str) -> Path:
    return Path(str(resources.files("ddnn.ops.mcu").joinpath(name)))


def _size(obj: Path) -> dict[str, int]:
    """text, data and bss of an object or program, from arm-none-eabi-size."""
    out = subprocess.run(
        [need_tool("arm-none-eabi-size"), str(obj)], capture_output=True, text=True, check=True
    ).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def build(model: PackedModel, core: str, folder: Path, frames: Path, results: Path) -> Path:
    """The slice and the semihosted harness (ddnn/ops/mcu/main.c) linked for `core`."""
    if core not in CORES:
        raise DDNNError(f"--mcu must be one of {', '.join(CORES)}, got {core!r}")
    flags = [*CORES[core].flags, *CFLAGS]
    write_slice(model, 0, "mcu", "a packed slice", folder)
    objects = []
    for source, extra in (
        (folder / SOURCE, []),
        (_harness_file("main.c"), [f'-DFRAMES_FILE="{frames}"', f'-DRESULTS_FILE="{results}"']),
        (_harness_file("startup.c"), []),
    ):
        obj = folder / f"{source.stem}.o"
        compile_c(
            "arm-none-eabi-gcc", [*flags, f"-I{folder}", *extra, "-c", str(source), "-o", str(obj)]
        )
        objects.append(obj)
    program = folder / "slice.elf"
    specs = ["--specs=nano.specs", "--specs=rdimon.specs", "-T", str(_harness_file("mcu.ld"))]
    compile_c(
        "arm-none-eabi-gcc", [*CORES[core].flags, *specs, *map(str, objects), "-o", str(program)]
    )
    return program


def _figures(line: str) -> dict[str, int]:
    found = dict(re.findall(r"(\w+)=(\d+)", line))
    names = ("frames", "ticks", "most", "calibration", "loops", "stack")
    if not all(n in found for n in names):
        raise DDNNError(f"the slice under QEMU printed no figures: {line.strip()!r}")
    return {n: int(found[n]) for n in names}


def run_on_mcu(model: PackedModel, images: np.ndarray, core: str = "cortex-m3") -> dict[str, Any]:
    """Build the slice for `core`, run it on `images` (N, C, H, W) uint8 under QEMU, and
    compare every frame's scores and feature bits with the packed runtime's."""
    qemu = need_tool("qemu-system-arm")
    with tempfile.TemporaryDirectory(prefix="ddnn-mcu-") as tmp:
        folder = Path(tmp)
        frames, results = folder / "frames.u8", folder / "results.bin"
        np.ascontiguousarray(images, np.uint8).tofile(frames)
        program = build(model, core, folder, frames, results)
        command = [qemu, "-M", CORES[core].board, "-nographic", "-semihosting"]
        command += ["-icount", "shift=0", "-kernel", str(program)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=QEMU_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DDNNError(f"the slice did not finish under QEMU in {QEMU_TIMEOUT:g} s") from None
        figures = _figures(proc.stdout)
        record = np.dtype(
            [
                ("scores", "<f4", (model.n_classes,)),
                ("bits", "u1", ((_feature_bits(model) + 7) // 8,)),
            ]
        )
        got = np.fromfile(results, record)
        slice_size, program_size = _size(folder / "ddnn_slice.o"), _size(program)
    mismatched = _mismatches(model, images, got)
    # SysTick under -icount shift=0 ticks every N instructions; N from a loop of known length
    per_tick = 2 * figures["loops"] / figures["calibration"]
    instructions = figures["ticks"] * per_tick / max(1, figures["frames"])
    return {
        "mcu": core,
        "board": CORES[core].board,
        "frames": figures["frames"],
        "exact": figures["frames"] == len(images) and mismatched == 0,
        "mismatched_frames": mismatched,
        "flash_bytes": slice_size["text"] + slice_size["data"],
        "ram_bytes": slice_size["data"] + slice_size["bss"] + figures["stack"],
        "static_ram_bytes": slice_size["data"] + slice_size["bss"],
        "stack_bytes": figures["stack"],
        "instructions_per_frame": round(instructions),
        "instructions_per_frame_max": round(figures["most"] * per_tick),
        f"ms_per_frame_at_{MHZ}mhz": round(instructions / (MHZ * 1e3), 2),
        "program_flash_bytes": program_size["text"] + program_size["data"],
    }


def _feature_bits(model: PackedModel) -> int:
    return int(np.prod(model.feature_shape))


def _mismatches(model: PackedModel, images: np.ndarray, got: np.ndarray) -> int:
    """Frames whose scores or feature bits differ from the packed runtime's (or are missing)."""
    run = runner(model, "numpy")
    bad = max(0, len(images) - len(got))
    for image, out in zip(images, got, strict=False):
        scores, features = run(image.astype(np.float32))
        same = np.array_equal(scores.view(np.uint32), out["scores"].view(np.uint32))
        bad += not (same and pack_bits(features) == out["bits"].tobytes())
    return bad
