"""What the aggregator's artifact holds: the fusion of the local and the edge exit, and the
learned router of each exit that has one, read into NumPy (no PyTorch at the aggregator)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddnn.core.fusion import ScoreFusion, score_fusions
from ddnn.core.manifest import Manifest, read_manifest, read_npz_artifact
from ddnn.core.routing import Router, routers_from_state


@dataclass(frozen=True)
class ExitWeights:
    """What the aggregator's artifact holds, in NumPy: the fusion of the local and the edge
    exit, and the router of each exit whose policy is "router" (ddnn/core/routing.py)."""

    fusions: dict[str, ScoreFusion]
    routers: dict[str, Router]


def load_exit_weights(artifacts: Path | str) -> tuple[Manifest, ExitWeights]:
    """The manifest, and the weights of the exits from the aggregator's artifact
    (hash-checked)."""
    manifest = read_manifest(artifacts)
    arrays = read_npz_artifact(artifacts, manifest, "aggregator")
    cfg = manifest.ddnn_config()
    return manifest, ExitWeights(score_fusions(cfg.model, arrays), routers_from_state(cfg, arrays))
