"""Exit placement (the exit-placement paper): where along a deeper path should the early exit sit?

And is one model with an exit after many blocks (the multi-exit model, MEM) as good as one
model per position (single-exit models, SEMs)? Its Figs. 5 and 6, on our data. The path is
the blocks above the devices, the edge's first and the cloud's after them; the edge is the
only early exit. SEM-k puts the first k blocks and its exit on one edge over every device,
the rest in the cloud; the MEM taps the edge after each compared block, trains all exits
jointly and uses one at a time. Each row is measured on the test split at one fixed
entropy threshold (T = 0.3, no calibration): the edge's share and accuracy, the cloud's, the
overall accuracy, and the energy per sample of the SEM-k split.

Design: docs/design/placement.md (the models compared, the measurement).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ddnn.core.config import CloudSpec, DDNNConfig, EdgeSpec, tap_exit
from ddnn.core.energy import energy_uj
from ddnn.core.errors import DDNNError
from ddnn.core.exits import POLICIES, ExitInputs, ExitPoint, cascade
from ddnn.data import Splits
from ddnn.nn.evaluate import ExitOutputs, accuracy_percent, run_model
from ddnn.nn.studies.compare import Candidate, replaced
from ddnn.nn.train import EpochCallback, fit

MEM = "MEM"

PAPER = {
    "source": "the exit-placement paper (analysis of local exit), CIFAR-10 on a CNN of 9 blocks, "
    "exits after "
    "blocks 1-8, T = 0.3, 10,000 test samples",
    "finding": "the SEM beats the MEM at every exit point: more samples exit at the edge, "
    "higher edge, cloud and overall accuracy",
    "sem": {  # Fig. 5, the figures its text gives
        "edge_accuracy": {"SEM-1": 87.20, "SEM-8": 95.24},
        "cloud_accuracy": {"SEM-1": 88.51, "SEM-2": 86.13, "SEM-8": 58.07},
        "accuracy": {"SEM-3": 86.04, "SEM-8": 92.04},
        "edge_exit": {"SEM-3": 53.83},
    },
    "mem": {"accuracy": {"MEM@2": 84.31, "MEM@8": 86.10}},  # Fig. 6
}


def placement_candidates(
    cfg: DDNNConfig, path: Sequence[int], positions: Sequence[int], threshold: float
) -> list[Candidate]:
    """SEM-k for each position k, then the MEM with an exit at every position. `cfg` gives
    the devices, precisions, the edge's fusion and the training; it must fit the data
    already (`adapt_config`)."""
    path, positions = list(path), list(positions)
    if len(path) < 2 or any(f < 1 for f in path):
        raise DDNNError(f"the path needs at least two blocks of 1 or more filters, got {path}")
    if not positions or sorted(set(positions)) != positions or positions[0] < 1:
        raise DDNNError(f"exit positions must be increasing block numbers, got {positions}")
    if positions[-1] >= len(path):
        raise DDNNError(
            f"an exit after block {positions[-1]} leaves no block for the cloud (the path "
            f"has {len(path)} blocks)"
        )
    if not 0 < threshold < 1:
        raise DDNNError(f"the entropy threshold must lie between 0 and 1, got {threshold}")
    sems = [
        Candidate({"model": f"SEM-{k}", "exit_block": k}, split_config(cfg, path, k, threshold))
        for k in positions
    ]
    mem = split_config(cfg, path, positions[-1], threshold, taps=positions[:-1])
    return [*sems, Candidate({"model": MEM}, mem)]


def split_config(
    cfg: DDNNConfig, path: list[int], k: int, threshold: float, taps: Sequence[int] = ()
) -> DDNNConfig:
    """`cfg`'s devices under the path split after block k: blocks 1..k on one edge over
    every device (with `taps`), the rest in the cloud, the edge's exit at `threshold`."""
    model = cfg.model
    edge = model.edge or EdgeSpec(groups=[[]])
    edge = edge.model_copy(
        update={
            "groups": [list(range(model.n_devices))],
            "conv_filters": path[:k],
            "taps": list(taps),
        }
    )
    cloud = (model.cloud or CloudSpec()).model_copy(update={"conv_filters": path[k:]})
    tree = model.model_dump() | {
        "local": None,
        "edge": edge.model_dump(),
        "cloud": cloud.model_dump(),
    }
    exits = {"edge": {"policy": "entropy", "threshold": threshold}}
    train = cfg.train.model_dump() | {"strategy": "joint", "exit_weights": {}}
    return replaced(cfg, model=tree, exits=exits, train=train)


def measure_placement(
    candidate: Candidate, parts: Splits, on_epoch: EpochCallback | None
) -> list[dict]:
    """Train the candidate (no calibration: the threshold is fixed), then its rows on the
    test split: one for a SEM, one per exit position for the MEM."""
    result = fit(parts.train, candidate.config, on_epoch)
    cfg = result.config
    outputs = run_model(result.model, parts.test)
    edge = cfg.model.edge
    threshold = cfg.exits["edge"].threshold
    if candidate.label["model"] != MEM:
        return [_row(candidate.label, outputs, outputs.inputs["edge"], threshold, cfg)]
    path = [*edge.conv_filters, *cfg.model.cloud.conv_filters]
    rows = []
    for k in [*edge.taps, len(edge.conv_filters)]:
        exit_inputs = outputs.inputs[tap_exit(k) if k in edge.taps else "edge"]
        label = {"model": f"{MEM}@{k}", "exit_block": k}
        rows.append(
            _row(label, outputs, exit_inputs, threshold, split_config(cfg, path, k, threshold))
        )
    return rows


def _row(
    label: dict, outputs: ExitOutputs, edge: ExitInputs, threshold: float, split: DDNNConfig
) -> dict:
    """The exit-placement paper's measures of one exit position: the edge's exit at `threshold`,
    then the cloud; energy per sample as the path split at that position spends it."""
    entropy = POLICIES["entropy"]
    points = [ExitPoint("edge", entropy, threshold), ExitPoint("cloud", entropy, 1.0)]
    decided = cascade(points, {"edge": edge, "cloud": outputs.inputs["cloud"]})
    at_edge = decided.exit_index == 0
    labels, predictions = outputs.labels, decided.predictions

    def accuracy_where(chosen: np.ndarray) -> float | None:
        return accuracy_percent(predictions[chosen], labels[chosen]) if chosen.any() else None

    energy = energy_uj(split.model, outputs.present, decided.exit_index, ["edge", "cloud"])
    return {
        **label,
        "edge_exit": round(100.0 * float(at_edge.mean()), 2),
        "edge_exited": int(at_edge.sum()),
        "edge_accuracy": accuracy_where(at_edge),
        "cloud_accuracy": accuracy_where(~at_edge),
        "accuracy": accuracy_percent(predictions, labels),
        "energy_uj": energy["total"],
    }
