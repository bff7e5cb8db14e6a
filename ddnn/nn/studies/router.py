"""The learned-router paper's comparison: a learned router against entropy thresholding at equal
coverage.

Coverage is the share of samples an exit keeps (answers itself). For each target coverage, a router
is fitted on the training split with the coverage penalty at that target (ddnn/nn/router.py), and
both policies get the threshold at which that share of the validation samples exits there (the
learned-router paper's Algorithm 2: a quantile of the statistic). Both are then measured on the test
split: overall accuracy of the cascade, and the share that actually exited. The rest of the cascade
is the model's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ddnn.core.config import DDNNConfig
from ddnn.core.errors import DDNNError
from ddnn.core.exits import ExitPoint, Policy, cascade, get_policy
from ddnn.core.routing import Router
from ddnn.data import Splits
from ddnn.nn.calibration import thresholds_for_fractions
from ddnn.nn.evaluate import (
    ExitOutputs,
    accuracy_percent,
    model_exit_points,
    numpy_state,
    run_model,
    with_thresholds,
)
from ddnn.nn.model import DDNN
from ddnn.nn.router import RouterNet, fit_router, training_rows
from ddnn.nn.train import router_passes

COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _measure(
    points: list[ExitPoint], index: int, validation: ExitOutputs, test: ExitOutputs, cov: float
) -> tuple[float, float]:
    """Overall test accuracy and the test share exiting at `points[index]`, with its
    threshold set so that `cov` of the validation samples exit there."""
    name = points[index].name
    picked = with_thresholds(points, thresholds_for_fractions(validation, points, {name: cov}))
    d = cascade(picked, test.inputs)
    share = round(100.0 * float((d.exit_index == index).mean()), 2)
    return accuracy_percent(d.predictions, test.labels), share


def compare_router(
    model: DDNN,
    cfg: DDNNConfig,
    parts: Splits,
    exit_name: str | None = None,
    coverages: Sequence[float] = COVERAGES,
    on_row: Callable[[], None] | None = None,
) -> dict:
    """Rows of coverage, entropy and router accuracy (and the test exit share of each), for
    the exit `exit_name` (default: the first); `on_row` is called after each row."""
    exits = model.exits
    name = exit_name or exits[0]
    if name not in exits[:-1]:
        raise DDNNError(f"exit {name!r} is not one that may escalate; those are {exits[:-1]}")
    if parts.validation is None:
        raise DDNNError("the comparison picks thresholds on validation data: the model has none")
    index = exits.index(name)
    points = model_exit_points(model, cfg)
    passes = router_passes(model, cfg, parts.train)
    features, oracle = training_rows(
        [(out.inputs[name], out.probs[exits[index + 1]]) for out in passes], parts.train.labels
    )
    validation, test = run_model(model, parts.validation), run_model(model, parts.test)
    entropy = list(points)
    entropy[index] = ExitPoint(name, get_policy("entropy"), 0.0)
    rows = []
    for cov in coverages:
        net = RouterNet(len(cfg.model.classes), cfg.router.hidden)
        fit_router(net, features, oracle, cfg.router, coverage=cov, seed=cfg.train.seed)
        router = Router(numpy_state(net), len(cfg.model.classes), "the fitted router")
        routed = list(points)
        routed[index] = ExitPoint(name, Policy("router", router.escalation, True), 0.0)
        e_acc, e_exit = _measure(entropy, index, validation, test, cov)
        r_acc, r_exit = _measure(routed, index, validation, test, cov)
        rows.append(
            {
                "coverage": cov,
                "entropy_accuracy": e_acc,
                "router_accuracy": r_acc,
                "entropy_exit": e_exit,
                "router_exit": r_exit,
            }
        )
        if on_row is not None:
            on_row()
    return {
        "exit": name,
        "next": exits[index + 1],
        "samples": {
            "train": len(parts.train),
            "validation": len(parts.validation),
            "test": len(parts.test),
        },
        "oracle_rate": round(float(oracle.mean()), 4),
        "rows": rows,
    }
