"""The services without PyTorch: every module of the devices, the local aggregator, the
upper tiers and the capture imports, and a live deployment whose device, aggregator and
(packed) cloud processes cannot import torch decides every sample as offline evaluation
does."""

from __future__ import annotations

import sys
from pathlib import Path

from ddnn.core.exits import cascade, exit_points
from ddnn.core.roles import Role
from ddnn.live.broker.start import start_broker
from ddnn.nn.checkpoint import load_model
from ddnn.nn.evaluate import load_for_eval, run_model
from ddnn.ops.deploy import deployment, prepare
from tests.helpers import BLOCK_TORCH, run_without_torch

# What the services import; torch-free by the import-linter contracts, and here by running them.
TORCH_FREE = [
    "devices",
    "aggregator",
    "cloud",
    "capture",
    "ddnn.core",
    "ddnn.live",
    "ddnn.packed",
    "ddnn.data",
]


def test_every_module_of_the_services_imports_without_pytorch():
    proc = run_without_torch(
        f"""
        import importlib, pkgutil
        names = []
        for package in {TORCH_FREE!r}:
            module = importlib.import_module(package)
            names.append(package)
            for info in pkgutil.walk_packages(module.__path__, package + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        import ddnn.core.config
        ddnn.core.config.load_config(overrides=["model.device.conv_filters=[4, 2]"])
        print("torch" in sys.modules, " ".join(names))
        """
    )
    assert proc.returncode == 0, proc.stderr
    imported, *names = proc.stdout.split()
    assert imported == "False"
    for module in ("devices.cli", "devices.sources", "aggregator.cli", "aggregator.service"):
        assert module in names
    assert {"cloud.cli", "cloud.service", "cloud.runtime", "ddnn.packed.tier"} <= set(names)
    assert {"capture.cli", "capture.service", "capture.folder"} <= set(names)


def without_torch(role: Role) -> list[str]:
    """Every service starts where `import torch` fails."""
    return [sys.executable, "-c", BLOCK_TORCH + "from ddnn.cli import main\nmain()\n"]


def test_a_live_deployment_runs_without_pytorch(tiny, tmp_path: Path):
    net, cfg, meta = load_model(tiny)
    samples = 60
    prepared = prepare(net, cfg, meta, tmp_path, "no-torch")
    with start_broker(access=prepared.access) as broker:
        settings = broker.settings()
        with deployment(
            prepared, settings, tmp_path, log_level="info", launch=without_torch
        ) as running:
            running.driver.run(range(samples))
            decisions = running.driver.decisions
            artifacts = running.artifacts
    assert all(code == 0 for code in running.codes.values()), running.codes
    for role in running.roles:
        if role.tier == "device":
            assert "slice runtime: packed" in (tmp_path / f"{role}.log").read_text()
    assert "tier runtime: packed" in (tmp_path / "cloud.log").read_text()
    model, cfg, _, test = load_for_eval(artifacts, part="test")
    points = exit_points(cfg, model.exits)
    offline = cascade(points, run_model(model, test).inputs)
    assert sorted(decisions) == list(range(samples))
    live = [(decisions[k].class_index, decisions[k].exit) for k in range(samples)]
    want = [
        (int(offline.predictions[k]), points[offline.exit_index[k]].name) for k in range(samples)
    ]
    assert live == want
    assert {exit for _, exit in live} == {"local", "cloud"}  # both paths covered
