"""What several test modules share: small data, the `ddnn` command in a subprocess, a tiny
trained model, and Python that runs as on a device without PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EDGE = "model.edge={groups: [[0,1,2],[3,4,5]]}"  # two edges of three devices each


def make_mvmc_arrays(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small learnable MVMC-format set: the class is written into a corner patch of
    the views that see the object; one camera in three misses it (blank view, label 3)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.uniform(0, 120, (n, 6, 3, 32, 32)).astype(np.float32)
    for i, c in enumerate(labels):
        x[i, :, c, :10, :10] = 255.0
    y = np.repeat(labels[:, None], 6, axis=1).astype(np.int32)
    absent = rng.random((n, 6)) < 1 / 3
    absent[:, 0] = False  # every sample is seen by at least one camera
    x[absent] = 0.0
    y[absent] = 3
    return x, y


def missing_tool(message: str) -> None:
    """Skip a test that needs a tool this machine lacks; in CI (the environment variable CI
    set: .ci/run installs them all) fail it instead."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def ddnn(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "ddnn", *args], capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ddnn {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def ddnn_json(*args: str, timeout: float = 300) -> dict:
    return json.loads(ddnn(*args, "--json", timeout=timeout).stdout)


def tiny_model(tmp: Path, name: str, fractions: str, *extra: str) -> Path:
    """A model trained briefly on the default synthetic set, with thresholds set so that a
    real share of samples leaves at every exit (live tests must cover every path)."""
    model = tmp / f"{name}.pt"
    ddnn_json("train", "--out", str(model), "--epochs", "3", *extra, timeout=600)
    ddnn_json("calibrate", "--model", str(model), "--exit-fraction", fractions)
    return model


def with_drop_between_edge_and_cloud(model: Path) -> Path:
    """Give `model`'s edge exit the drop threshold at which half the test samples that
    would go on to the cloud abstain at the edge instead; returns `model`."""
    from ddnn.nn.checkpoint import save_model
    from ddnn.nn.evaluate import load_for_eval, model_exit_points, run_model

    net, cfg, meta, test = load_for_eval(model)
    points = model_exit_points(net, cfg)
    edge = next(p for p in points if p.name == "edge")
    statistic = edge.policy.statistic(run_model(net, test).inputs["edge"])
    beyond = statistic[statistic > edge.threshold]
    exits = {
        **cfg.exits,
        "edge": cfg.exits["edge"].model_copy(update={"drop": float(np.median(beyond))}),
    }
    save_model(model, net, cfg.model_copy(update={"exits": exits}), meta)
    return model


def exported(model: Path, out: Path) -> Path:
    """`ddnn export` of `model` into `out`; returns `out`."""
    ddnn_json("export", "--model", str(model), "--out", str(out))
    return out


def blocking(*packages: str) -> str:
    """Python to prepend to a `python -c` program: importing any of `packages` fails, as
    on a device where they are not installed."""
    return textwrap.dedent(
        f"""
        import sys

        class _Missing:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {packages!r}:
                    raise ImportError(f"{{name}} is not installed on this device")

        sys.meta_path.insert(0, _Missing())
        """
    )


BLOCK_TORCH = blocking("torch")


def run_without_torch(
    program: str, timeout: float = 120, block: str = BLOCK_TORCH
) -> subprocess.CompletedProcess:
    """Run a Python program (dedented) in a subprocess where importing torch fails."""
    code = block + textwrap.dedent(program)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
