"""The other papers' comparisons in `ddnn report`: the hybrid-precision paper's training strategies
(its Table II), one vs two early exits (Table IV) and energy against full precision; the
exit-placement paper's single-exit against multi-exit models and its drop threshold; the
learned-router paper's learned router against entropy at equal coverage.

Each uses the code of the command that runs it alone (`ddnn compare`, `ddnn eval --drop`,
`ddnn router`): ddnn/nn/studies/compare.py, placement.py, router.py; ddnn/nn/evaluate.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ddnn.nn.evaluate import evaluate, model_exit_points, run_model
from ddnn.nn.studies.compare import (
    PAPER,
    exit_count_candidates,
    measure_trained,
    precision_candidates,
    strategy_candidates,
)
from ddnn.nn.studies.placement import PAPER as PLACEMENT
from ddnn.nn.studies.placement import measure_placement, placement_candidates
from ddnn.nn.studies.router import compare_router
from ddnn.ops.report import paper
from ddnn.ops.report.plan import Context
from ddnn.ops.report.tables import fold, table

SEED000 = PAPER["source"]
CIFAR = "CIFAR-10"


def _calibrated_rows(ctx: Context, candidates_of: Any) -> list[list[dict[str, Any]]]:
    """Per seed, each candidate trained and calibrated as `ddnn compare` does (from the
    cache where it is there), measured on the test split as `ddnn compare` measures it."""
    per_seed = []
    for seed in ctx.plan.seeds:
        rows = []
        for c in candidates_of(ctx.config(seed)):
            name = " ".join(f"{k} {v}" for k, v in c.label.items())
            model, cfg, meta = ctx.runs.model(c.config, name)
            thresholds = meta.get("thresholds") or {}
            rows.append(
                measure_trained(c.label, model, cfg, ctx.test, thresholds, meta["train_seconds"])
            )
        per_seed.append(rows)
    return per_seed


STRATEGY_MEASURES = ["local_exit", "accuracy", "local_accuracy", "cloud_accuracy", "energy_uj"]


def strategies(ctx: Context) -> dict[str, Any]:
    """The hybrid-precision paper's Table II: separate against joint training, each calibrated."""
    p = ctx.plan
    per_seed = _calibrated_rows(
        ctx, lambda cfg: strategy_candidates(cfg, p.strategies, p.early_weight)
    )
    rows = fold(per_seed, ["strategy"], STRATEGY_MEASURES)
    for row in rows:
        figures = PAPER["strategies"].get(row["strategy"], {})
        row["paper"] = {
            "early exit %": figures.get("early_exit", "-"),
            "accuracy %": figures.get("accuracy", "-"),
        }
    return table(
        "hybrid_strategies",
        f"The hybrid-precision paper, Table II: training strategies (joint weighs the early exit "
        f"{p.early_weight})",
        f"{SEED000}, Table II",
        CIFAR,
        ctx.our_data,
        ["strategy"],
        STRATEGY_MEASURES,
        rows,
        "Thresholds picked on validation data as `ddnn train` picks them; energy in uJ per "
        "sample (the hybrid-precision paper's Table I model).",
    )


EXITS_MEASURES = ["local_exit", "edge_exit", "accuracy", "energy_uj"]


def early_exits(ctx: Context) -> dict[str, Any]:
    """The hybrid-precision paper's Table IV: one early exit (local) against two (local, one
    edge)."""
    per_seed = _calibrated_rows(ctx, lambda cfg: exit_count_candidates(cfg, None))
    rows = fold(per_seed, ["early_exits"], EXITS_MEASURES)
    for row in rows:
        figures = PAPER["early_exits"][row["early_exits"]]
        row["paper"] = {
            "exit %": ", ".join(f"{x:g}" for x in figures["early_exit"]),
            "accuracy %": figures["accuracy"],
            "energy mJ": figures["energy_mj"],
        }
    return table(
        "hybrid_exits",
        "The hybrid-precision paper, Table IV: one early exit (local) against two (local, edge)",
        f"{SEED000}, Table IV",
        CIFAR,
        ctx.our_data,
        ["early_exits"],
        EXITS_MEASURES,
        rows,
        "Energy: ours per sample in uJ for a 6-camera binary DDNN, the paper's in mJ for "
        "ResNet-32.",
    )


ENERGY_MEASURES = ["energy_uj", "energy_reduction", "accuracy", "cloud_accuracy"]


def energy(ctx: Context) -> dict[str, Any]:
    """The hybrid-precision paper's energy ratio: the network as configured (every tier binary) and
    with a float cloud over binary devices, against the float32 network without early exits."""
    per_seed = _calibrated_rows(ctx, lambda cfg: precision_candidates(cfg, [{"cloud": "float"}]))
    rows = fold(per_seed, ["precision"], ENERGY_MEASURES)
    hybrid = PAPER["precision"]["binary edge, float cloud, early exit"]
    for row in rows:
        ratio = hybrid if row["precision"] == "cloud=float" else "- (all binary: not in it)"
        row["paper"] = {"x less energy than full precision": ratio}
    return table(
        "hybrid_energy",
        "The hybrid-precision paper: energy per sample (uJ) and how many times less than the "
        "float32 network without early exits",
        f"{SEED000}, Fig. 4 (a)",
        CIFAR,
        ctx.our_data,
        ["precision"],
        ENERGY_MEASURES,
        rows,
        "energy_reduction: the float32 reference's energy over the model's.",
    )


PLACEMENT_MEASURES = ["edge_exit", "edge_accuracy", "cloud_accuracy", "accuracy", "energy_uj"]


def placement(ctx: Context) -> dict[str, Any]:
    """The exit-placement paper: single-exit models (one per exit position) against one multi-exit
    model, at its fixed entropy threshold. `measure_placement` trains and measures in one call, so
    its rows, not a model, are what the cache keeps."""
    p = ctx.plan
    per_seed = []
    for seed in p.seeds:
        rows = []
        for c in placement_candidates(
            ctx.config(seed), p.placement_path, p.placement_positions, p.placement_threshold
        ):
            rows += ctx.runs.measured(
                "placement",
                c.config,
                c.label["model"],
                c.epochs,
                lambda on_epoch, c=c: measure_placement(c, ctx.runs.parts, on_epoch),
            )
        per_seed.append(rows)
    rows = fold(per_seed, ["model"], PLACEMENT_MEASURES)
    for row in rows:
        row["paper"] = {"figures": _placement_figures(row["model"])}
    return table(
        "placement",
        f"The exit-placement paper: single-exit (SEM-k) against multi-exit (MEM@k) "
        f"models, path {list(p.placement_path)}, T = {p.placement_threshold}",
        PLACEMENT["source"],
        CIFAR,
        ctx.our_data,
        ["model"],
        PLACEMENT_MEASURES,
        rows,
        f"The exit-placement paper's finding: {PLACEMENT['finding']}.",
    )


def _placement_figures(model: str) -> str:
    """What the exit-placement paper's text gives for one model (e.g. SEM-1), or "-"."""
    found = [
        f"{measure} {values[model]}"
        for group in ("sem", "mem")
        for measure, values in PLACEMENT[group].items()
        if model in values
    ]
    return "; ".join(found) or "-"


DROP_MEASURES = ["answered", "answered_accuracy", "overall", "bytes"]


def drop(ctx: Context) -> dict[str, Any]:
    """The exit-placement paper's drop threshold at the local exit of the paper's configuration, as
    `ddnn eval --drop D` evaluates it."""
    per_seed = []
    for seed in ctx.plan.seeds:
        model, cfg, _ = ctx.base_model(seed)
        outputs = run_model(model, ctx.test)
        points = model_exit_points(model, cfg)
        rows = []
        for d in ctx.plan.drops:
            chosen = [replace(points[0], drop=d), *points[1:]]
            report = evaluate(outputs, chosen)
            rows.append(
                {
                    "drop": "none" if d is None else d,
                    "answered": report["coverage"]["answered"],
                    "answered_accuracy": report["coverage"]["accuracy"],
                    "overall": report["accuracy"]["overall"],
                    "bytes": report["bytes_per_device"]["measured"],
                }
            )
        per_seed.append(rows)
    rows = fold(per_seed, ["drop"], DROP_MEASURES)
    for row in rows:
        row["paper"] = {"figures": "- (no figures)"}
    return table(
        "drop_threshold",
        "The exit-placement paper: a drop threshold at the local exit (answered %, accuracy "
        "% of the answered, overall %, bytes per device)",
        paper.SEED001_DROP,
        CIFAR,
        ctx.our_data,
        ["drop"],
        DROP_MEASURES,
        rows,
        "An abstention counts as not right in overall.",
    )


ROUTER_MEASURES = ["entropy_accuracy", "router_accuracy", "entropy_exit", "router_exit"]


def router(ctx: Context) -> dict[str, Any]:
    """The learned-router paper: a learned router against entropy thresholding at equal coverage of
    the local exit (`ddnn router`'s function), on the paper's configuration."""
    coverages = list(ctx.plan.coverages)
    per_seed = []
    for seed in ctx.plan.seeds:
        cfg = ctx.config(seed)
        model, trained, _ = ctx.base_model(seed)
        study = ctx.runs.measured(
            "router",
            cfg,
            "routers, one per coverage",
            len(coverages),
            lambda on_epoch, model=model, trained=trained: compare_router(
                model, trained, ctx.runs.parts, None, coverages, lambda: on_epoch(0, {})
            ),
            extra=coverages,
        )
        per_seed.append(study["rows"])
    rows = fold(per_seed, ["coverage"], ROUTER_MEASURES)
    for row in rows:
        row["paper"] = {"router %": paper.SEED002_ROUTER.get(row["coverage"], "-")}
    return table(
        "router",
        "The learned-router paper: overall accuracy % at equal coverage of the local exit, "
        "entropy against a learned router (and the test share each exits)",
        paper.SEED002,
        "ImageNet",
        ctx.our_data,
        ["coverage"],
        ROUTER_MEASURES,
        rows,
        "A router fitted per coverage on the training split; both thresholds picked on "
        "validation data.",
    )
