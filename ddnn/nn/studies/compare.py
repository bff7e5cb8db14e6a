"""The hybrid-precision paper's comparisons, run on our data: training strategies (its Table II),
one vs two early exits (its Table IV), and hybrid precision (a float tier over binary devices, its
Fig. 4: energy against a full-precision network).

Each candidate is a config; it is trained as `ddnn train` does and calibrated on validation data
(`fit_and_calibrate`) by rule max_loss unless asked otherwise (`with_rule` says why), then measured
on the test split: the share of samples leaving at each early exit, overall accuracy, each exit's
accuracy and the energy per sample (ddnn/core/energy.py). The hybrid-precision paper's own figures
(CIFAR-10, ResNet-32, hybrid precision) stand beside ours in `PAPER`; they are not the same
experiment, only the same question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ddnn.core.config import DDNNConfig, EdgeSpec, validate_config
from ddnn.core.energy import energy_uj
from ddnn.core.errors import DDNNError
from ddnn.core.exits import cascade
from ddnn.data import MultiViewData, Splits
from ddnn.nn.calibration import RULES
from ddnn.nn.evaluate import accuracy_percent, model_exit_points, run_model
from ddnn.nn.model import DDNN
from ddnn.nn.train import EpochCallback, fit_and_calibrate, training_stages

STRATEGIES = ("joint", "separate", "layerwise")

PAPER = {
    "source": "the hybrid-precision paper (conditionally deep hybrid networks), "
    "CIFAR-10 on ResNet-32",
    "strategies": {  # Table II: early exit %, accuracy %
        "separate": {"early_exit": 24.1, "accuracy": 88.72},
        "joint": {"early_exit": 52.8, "accuracy": 89.16},
    },
    "early_exits": {  # Table IV (20 E + 10 C): exit % per early exit, accuracy %, energy mJ
        1: {"early_exit": [59.3], "accuracy": 88.61, "energy_mj": 729},
        2: {"early_exit": [38.6, 19.7], "accuracy": 85.98, "energy_mj": 724},
    },
    "precision": {  # Fig. 4 (a), 20 E + 10 C: energy reduction against full precision
        "binary edge, float cloud, early exit": 5.5,
        "full precision, early exit": round(5.5 / 3.9, 2),
    },
}


@dataclass(frozen=True)
class Candidate:
    label: dict[str, Any]  # the columns that name the row
    config: DDNNConfig

    @property
    def epochs(self) -> int:
        """Epochs in all, over the stages of its strategy."""
        return len(training_stages(self.config)) * self.config.train.epochs


def strategy_candidates(
    cfg: DDNNConfig, strategies: Sequence[str], early_weight: float, rule: str = "max_loss"
) -> list[Candidate]:
    """The config under each strategy. Joint weighs the early exits `early_weight` in all (shared
    equally) and the last exit the rest, as the hybrid-precision paper (0.6 on its early exit).
    Every candidate is calibrated by `rule` (`with_rule`), as in the next two."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise DDNNError(f"strategies must be some of {list(STRATEGIES)}, got {list(strategies)}")
    if not 0 < early_weight < 1:
        raise DDNNError(f"the early exits' weight must lie between 0 and 1, got {early_weight}")
    cfg = with_rule(cfg, rule)
    exits = cfg.model.exits
    if len(exits) < 2:
        raise DDNNError("comparing training strategies needs a topology with an early exit")
    weights = {n: early_weight / (len(exits) - 1) for n in exits[:-1]}
    weights[exits[-1]] = 1.0 - early_weight
    out = []
    for strategy in strategies:
        train = cfg.train.model_dump() | {"strategy": strategy}
        if strategy == "joint":
            train["exit_weights"] = weights
        out.append(Candidate({"strategy": strategy}, replaced(cfg, train=train)))
    return out


def exit_count_candidates(
    cfg: DDNNConfig, groups: list[list[int]] | None, rule: str = "max_loss"
) -> list[Candidate]:
    """One early exit (local, then the cloud) and two (local, an edge, then the cloud); the
    edge tier of `groups` (default: the config's edge, or one edge over every device). `cfg`
    must already fit the data (`adapt_config`)."""
    cfg = with_rule(cfg, rule)
    model = cfg.model
    if model.local is None or model.cloud is None:
        raise DDNNError("comparing early exits needs a local exit and a cloud")
    if groups is None:
        groups = model.edge.groups if model.edge is not None else [list(range(model.n_devices))]
    edge = (model.edge or EdgeSpec(groups=groups)).model_copy(update={"groups": groups})
    exits = {n: spec.model_dump() for n, spec in cfg.exits.items() if n != "edge"}
    weights = {n: w for n, w in cfg.train.exit_weights.items() if n != "edge"}
    train = cfg.train.model_dump() | {"exit_weights": weights}
    return [
        Candidate({"early_exits": count}, replaced(cfg, model=m, exits=exits, train=train))
        for count, m in (
            (1, model.model_dump() | {"edge": None}),
            (2, model.model_dump() | {"edge": edge.model_dump()}),
        )
    ]


def precision_candidates(
    cfg: DDNNConfig, variants: Sequence[dict[str, str]], rule: str = "max_loss"
) -> list[Candidate]:
    """The config as it is (all binary by default), then each variant: tiers (device, edge,
    cloud) -> precision (binary, 2bit, 4bit, float), e.g. {"cloud": "float"}."""
    present = {
        "device": True,
        "edge": cfg.model.edge is not None,
        "cloud": cfg.model.cloud is not None,
    }
    have = [t for t, there in present.items() if there]
    cfg = with_rule(cfg, rule)
    out = [Candidate({"precision": "as configured"}, cfg)]
    if not variants:
        raise DDNNError("give at least one variant of tier precisions, e.g. cloud=float")
    for variant in variants:
        unknown = [t for t in variant if not present.get(t)]
        if unknown or not variant:
            raise DDNNError(f"tiers must be some of {have}, got {sorted(variant)}")
        model = cfg.model.model_dump()
        for tier, precision in variant.items():
            model[tier]["precision"] = precision
        label = ",".join(f"{t}={p}" for t, p in variant.items())
        out.append(Candidate({"precision": label}, replaced(cfg, model=model)))
    return out


def measure(candidate: Candidate, parts: Splits, on_epoch: EpochCallback | None) -> dict:
    """Train and calibrate the candidate, then its row on the test split."""
    result, picked = fit_and_calibrate(parts, candidate.config, on_epoch)
    return measure_trained(
        candidate.label, result.model, result.config, parts.test, picked, result.seconds
    )


def measure_trained(
    label: dict[str, Any],
    model: DDNN,
    cfg: DDNNConfig,
    test: MultiViewData,
    picked: dict[str, float],
    seconds: float,
) -> dict:
    """The row of a candidate already trained and calibrated (`picked`: its thresholds,
    `seconds`: its training time) on the test split; apart from `measure` so that a model
    trained earlier (`ddnn report`'s cache) is measured the same way."""
    outputs = run_model(model, test)
    decided = cascade(model_exit_points(model, cfg), outputs.inputs)
    labels = outputs.labels
    row = dict(label)
    for i, name in enumerate(model.exits[:-1]):
        row[f"{name}_exit"] = round(100.0 * float((decided.exit_index == i).mean()), 2)
    row["accuracy"] = accuracy_percent(decided.predictions, labels)
    for name in model.exits:
        row[f"{name}_accuracy"] = accuracy_percent(outputs.probs[name].argmax(1), labels)
    energy = energy_uj(cfg.model, outputs.present, decided.exit_index, model.exits)
    row["energy_uj"] = energy["total"]
    row["energy_reduction"] = energy["reduction"]
    row["thresholds"] = picked
    row["train_seconds"] = round(seconds, 1)
    return row


def with_rule(cfg: DDNNConfig, rule: str) -> DDNNConfig:
    """`cfg` calibrated by `rule` (ddnn/nn/calibration.py). The comparisons default to max_loss: the
    hybrid-precision paper asks how many samples leave early at equal accuracy (the least
    communication within `calibration.max_loss` of the last exit), which `ddnn train`'s fixed share
    would answer with the same share on every row."""
    if rule not in RULES:
        raise DDNNError(f"the calibration rule must be one of {', '.join(RULES)}, got {rule!r}")
    return cfg.model_copy(update={"calibration": cfg.calibration.model_copy(update={"rule": rule})})


def replaced(cfg: DDNNConfig, **sections: Any) -> DDNNConfig:
    """`cfg` with whole sections replaced (dumped values), validated again."""
    return validate_config(cfg.model_dump() | sections, source="compared config")
