"""`ddnn bench device`: per-frame latency of a device slice at batch 1, in one run: torch
float, torch binary, the bit-packed slice (numba, and NumPy for reference) and its generated
C, each checked against torch binary. How it is timed, and why: docs/design/bench.md.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddnn.core.config import load_config
from ddnn.core.payloads import camera_frames, pack_bits
from ddnn.core.roles import Role
from ddnn.nn.export import load_device
from ddnn.nn.model import DeviceSlice
from ddnn.nn.pack import pack_slice
from ddnn.ops.cslice import BENCH_CFLAGS, HostSlice
from ddnn.ops.stats import percentiles
from ddnn.packed.inspect import read_exported
from ddnn.packed.kernels import kernel_name, runner

BLOCK = 50  # frames timed per path in a row: caches stay as warm as on a device


def _default_slice(seed: int = 0):
    """The paper's device slice (1 ConvP 3->4, FC 1024->3), untrained, with batch-norm
    statistics that put the thresholds inside the range of the conv sums."""
    cfg = load_config()
    torch.manual_seed(seed)
    module = DeviceSlice(cfg.model)
    with torch.no_grad():
        for bn, scale in ((module.blocks[0].bn, 2000.0), (module.head.bn, 100.0)):
            bn.running_mean.uniform_(-scale / 2, scale / 2)
            bn.running_var.uniform_(1.0, scale)
    return module.eval(), cfg.model


def bench_device(
    artifacts: Path | str | None = None, device: int = 0, frames: int = 2000, seed: int = 0
) -> dict[str, Any]:
    if artifacts is not None:
        manifest, binary = load_device(artifacts, device)
        cfg = manifest.ddnn_config().model
        if Role.device(device) in manifest.packed:
            packed, _ = read_exported(artifacts, device, manifest)
        else:
            packed = pack_slice(binary, cfg.input_shape)  # raises NotPackable: float tier
        source = f"{artifacts} device {device}"
    else:
        binary, cfg = _default_slice(seed)
        packed = pack_slice(binary, cfg.input_shape)
        source = "the default device slice (untrained)"
    float_cfg = cfg.model_copy(
        update={"device": cfg.device.model_copy(update={"precision": "float"})}
    )
    floating = DeviceSlice(float_cfg)
    floating.load_state_dict(binary.state_dict())
    floating.eval()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tempfile.TemporaryDirectory(prefix="ddnn-bench-c-")
    try:

        def torch_path(module):
            def run(image: np.ndarray):
                with torch.no_grad():
                    s, f = module(torch.from_numpy(image[None]))
                return s[0].numpy(), f[0].numpy()

            return run

        paths = {
            "torch_float": torch_path(floating),
            "torch_binary": torch_path(binary),
            "packed": runner(packed, "auto"),
        }
        kernel = kernel_name("auto")
        if kernel != "numpy":
            paths["packed_numpy"] = runner(packed, "numpy")
        rng = np.random.default_rng(seed)
        pixels = camera_frames(rng.uniform(0, 255, (64, *cfg.input_shape)))
        pool = pixels.astype(np.float32)
        inputs = dict.fromkeys(paths, pool)
        if shutil.which("gcc") is not None:
            paths["c"], inputs["c"] = HostSlice.of(packed, Path(folder.name), BENCH_CFLAGS), pixels
        exact = 0
        for i in range(len(pool)):  # warm-up (numba compiles here), and exactness
            outs = {name: run(inputs[name][i]) for name, run in paths.items()}
            s, f = outs["torch_binary"]
            exact += all(
                np.array_equal(outs[p][0].view(np.uint32), s.view(np.uint32))
                and (outs[p][1] == pack_bits(f) if p == "c" else np.array_equal(outs[p][1], f))
                for p in paths
                if p.startswith("packed") or p == "c"
            )
            if i == 0:
                for _ in range(50):
                    for name, run in paths.items():
                        run(inputs[name][i])
        names = list(paths)
        times: dict[str, list[int]] = {name: [] for name in names}
        for block, start in enumerate(range(0, frames, BLOCK)):
            for j in range(len(names)):
                name = names[(block + j) % len(names)]
                run, frames_in = paths[name], inputs[name]
                run(frames_in[(start + len(pool) // 2) % len(pool)])  # untimed: warm caches
                for i in range(start, min(start + BLOCK, frames)):
                    image = frames_in[i % len(pool)]
                    t0 = time.perf_counter_ns()
                    run(image)
                    times[name].append(time.perf_counter_ns() - t0)
    finally:
        torch.set_num_threads(threads)
        folder.cleanup()

    latency = {name: percentiles(t, scale=1e-3) for name, t in times.items()}
    packed_p50 = latency["packed"]["p50"]
    return {
        "slice": source,
        "frames": frames,
        "threads": 1,
        "kernel": kernel,
        "latency_us": latency,
        # how many times the packed path's p50 is faster than each path's p50
        "speedup": {
            name: round(v["p50"] / packed_p50, 2) for name, v in latency.items() if name != "packed"
        },
        "weights_bytes": packed.weights_bytes,
        "torch_float32_bytes": packed.torch_float32_bytes,
        # frames on which every packed (and the C) path's scores and features equal torch_binary's
        "bit_exact_frames": exact,
        "checked_frames": len(pool),
    }
