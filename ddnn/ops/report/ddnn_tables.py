"""The DDNN paper's tables and figures in `ddnn report`: Table I (aggregation schemes),
Table II (the local threshold sweep), Figs. 8 (devices added), 9 (device filters) and 10
(one device missing), and communication against accuracy beside raw offload.

Each is measured with the functions the commands use (`ddnn eval`, `ddnn sweep`, `ddnn
baseline`: ddnn/nn/evaluate.py, ddnn/nn/train.py) on models from the report's runs, per
seed, then folded into mean and spread (tables.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ddnn.nn.calibration import thresholds_for_fractions
from ddnn.nn.evaluate import (
    accuracy_by_device_count,
    accuracy_each_missing,
    cloud_or_share,
    evaluate,
    model_exit_points,
    run_model,
    sweep,
    with_thresholds,
)
from ddnn.nn.train import individual_accuracy, individual_config
from ddnn.ops.report import paper
from ddnn.ops.report.plan import Context
from ddnn.ops.report.tables import fold, table


def table1(ctx: Context) -> dict[str, Any]:
    """Table I: a model per local-cloud aggregation pair, trained as the paper's were (no
    device dropout, `plan.table1_filters` filters per device); the accuracy of the local
    and the cloud exit when every test sample exits there. Beside it, for the caption: the
    +1 share of an MP cloud's input (an OR of the devices' bits) on the test set, and what
    MP-MP gives without the loss that balances it (`train.or_balance`)."""
    paper_way = {"train.device_dropout": 0, "model.device.conv_filters": [ctx.plan.table1_filters]}
    per_seed, shares, unbalanced = [], [], []
    for seed in ctx.plan.seeds:
        rows = []
        for local, cloud in ctx.plan.combos:
            changes = {
                **paper_way,
                "model.local.aggregation": local,
                "model.cloud.aggregation": cloud,
            }
            model, cfg, _ = ctx.runs.model(ctx.config(seed, changes), f"{local}-{cloud}")
            accuracy = evaluate(run_model(model, ctx.test), model_exit_points(model, cfg))
            rows.append({"scheme": f"{local}-{cloud}", **accuracy["accuracy"]})
            shares.append(cloud_or_share(model, ctx.test))
        per_seed.append(rows)
        changes = {**paper_way, "model.cloud.aggregation": "MP", "train.or_balance": 0}
        model, cfg, _ = ctx.runs.model(ctx.config(seed, changes), "MP-MP, no OR balance")
        accuracy = evaluate(run_model(model, ctx.test), model_exit_points(model, cfg))
        unbalanced.append((cloud_or_share(model, ctx.test), accuracy["accuracy"]["cloud"]))
    rows = fold(per_seed, ["scheme"], ["local", "cloud"])
    for row, combo in zip(rows, ctx.plan.combos, strict=True):
        local, cloud = paper.TABLE1[combo]
        row["paper"] = {"local %": local, "cloud %": cloud}
    balanced = [s for s in shares if s is not None]
    before, before_cloud = (float(np.mean(v)) for v in zip(*unbalanced, strict=True))
    return table(
        "table1",
        "Table I: aggregation schemes (local-cloud), accuracy % of each exit alone",
        f"{paper.DDNN}, Table I",
        paper.MVMC,
        ctx.our_data,
        ["scheme"],
        ["local", "cloud"],
        rows,
        "Each pair is its own model, trained jointly as the paper's Table I was: every device "
        f"present in training (no device dropout) and {ctx.plan.table1_filters} filters per "
        "device (the authors' code, kunglab/ddnn exp/exp_combining.py: 16; the other sections "
        "keep `ddnn train`'s defaults). Each exit's accuracy has every test sample exit there. "
        "MP at the cloud is an OR of the devices' bits: trained with the loss that keeps each "
        f"channel of it near half +1 (train.or_balance), its input is {np.mean(balanced):.1f} % "
        f"+1 on the test set; without it, {before:.1f} % +1, and MP-MP's cloud exit "
        f"{before_cloud:.2f} % (mean over the seeds).",
    )


SWEEP_MEASURES = ["exit_fraction", "overall_accuracy", "bytes_measured", "bytes_formula"]


def table2(ctx: Context) -> dict[str, Any]:
    """Table II: the local threshold from 0 to 1 on the paper's configuration, with
    `ddnn sweep`'s own function; each seed's rows are kept as the sweep gives them."""
    per_seed, models = [], {}
    for seed in ctx.plan.seeds:
        model, cfg, _ = ctx.base_model(seed)
        per_seed.append(sweep(run_model(model, ctx.test), model_exit_points(model, cfg)))
        models[str(seed)] = {
            "model": str(ctx.runs.model_path(ctx.config(seed), "")),
            "rows": per_seed[-1],
            "calibrated_threshold": cfg.exits["local"].threshold,
        }
    rows = fold(per_seed, ["threshold"], SWEEP_MEASURES)
    for row in rows:
        figures = paper.TABLE2.get(row["threshold"])
        if figures is None:
            row["paper"] = {"local exit %": "-", "overall %": "-", "bytes": "-"}
        else:
            row["paper"] = dict(zip(("local exit %", "overall %", "bytes"), figures, strict=True))
    doc = table(
        "table2",
        "Table II: the local exit threshold T, local exit %, overall accuracy %, bytes "
        "per device per sample (measured, and by formula (1))",
        f"{paper.DDNN}, Table II",
        paper.MVMC,
        ctx.our_data,
        ["threshold"],
        SWEEP_MEASURES,
        rows,
        "Rows as `ddnn sweep --model M --json` gives them for each seed's model "
        "(per_seed holds them as they are).",
    )
    doc["per_seed"] = models
    return doc


def _individuals(ctx: Context, seed: int) -> list[float]:
    """Each device's slice trained alone (`ddnn baseline`), its test accuracy %."""
    cfg = ctx.config(seed)
    epochs = individual_config(cfg).train.epochs
    return [
        ctx.runs.measured(
            "individual",
            cfg,
            f"device {d} alone",
            epochs,
            lambda on_epoch, d=d: individual_accuracy(ctx.runs.parts, d, cfg, on_epoch),
            extra=d,
        )
        for d in range(ctx.dataset.n_views)
    ]


FIG8_MEASURES = ["individual", "local", "cloud", "overall"]


def fig8(ctx: Context) -> dict[str, Any]:
    """Fig. 8: devices added one at a time, worst to best by their accuracy alone (as the
    paper orders them), with `ddnn eval --scaling`'s function; "individual" is the added
    device's accuracy trained alone."""
    per_seed = []
    for seed in ctx.plan.seeds:
        alone = _individuals(ctx, seed)
        order = [int(d) for d in np.argsort(alone, kind="stable")]
        model, cfg, _ = ctx.base_model(seed)
        points = model_exit_points(model, cfg)
        rows = accuracy_by_device_count(model, ctx.test, points, order)
        per_seed.append(
            [
                {**r, "devices": k + 1, "added": order[k], "individual": alone[order[k]]}
                for k, r in enumerate(rows)
            ]
        )
    rows = fold(per_seed, ["devices"], FIG8_MEASURES)
    n = len(rows)
    for row in rows:
        k = row["devices"]
        row["paper"] = {
            "individual %": "under 40" if k == 1 else "over 70" if k == n else "-",
            "overall": "> individual + 20, about cloud"
            if k == n
            else "about 4 below 6 devices"
            if k == n - 2
            else "-",
        }
    return table(
        "fig8",
        "Fig. 8: accuracy % as devices are added (worst to best alone)",
        f"{paper.DDNN}, Fig. 8 (numbers from its text): {paper.FIG8}",
        paper.MVMC,
        ctx.our_data,
        ["devices"],
        FIG8_MEASURES,
        rows,
        "Overall is at each seed's calibrated threshold; local and cloud have every sample "
        "exit there. The order of devices is each seed's own.",
    )


FIG9_MEASURES = ["local", "cloud", "overall", "offload_gain", "local_exit", "bytes"]


def fig9(ctx: Context) -> dict[str, Any]:
    """Fig. 9: a model per number of device filters, its local threshold set on validation
    data so that `plan.local_share` of the samples exit locally (as the paper does: about
    75 %); accuracy of each exit and overall, and bytes per device per sample."""
    share = ctx.plan.local_share
    per_seed = []
    for seed in ctx.plan.seeds:
        rows = []
        for f in ctx.plan.filters:
            cfg = ctx.config(seed, {"model.device.conv_filters": [f]})
            model, cfg, _ = ctx.runs.model(cfg, f"{f} device filters")
            points = model_exit_points(model, cfg)
            validation = run_model(model, ctx.runs.parts.validation)
            picked = thresholds_for_fractions(validation, points, {"local": share})
            report = evaluate(run_model(model, ctx.test), with_thresholds(points, picked))
            acc = report["accuracy"]
            rows.append(
                {
                    "filters": f,
                    "local": acc["local"],
                    "cloud": acc["cloud"],
                    "overall": acc["overall"],
                    "offload_gain": round(acc["overall"] - acc["local"], 2),
                    "local_exit": report["exit_fraction"]["local"],
                    "bytes": report["bytes_per_device"]["measured"],
                }
            )
        per_seed.append(rows)
    rows = fold(per_seed, ["filters"], FIG9_MEASURES)
    for row in rows:
        row["paper"] = {"local exit %": "about 75", "offload gain": "about +5"}
    return table(
        "fig9",
        f"Fig. 9: device filters, accuracy % and bytes per device, T set for "
        f"{share:.0%} local exits",
        f"{paper.DDNN}, Fig. 9 (numbers from its text): {paper.FIG9}",
        paper.MVMC,
        ctx.our_data,
        ["filters"],
        FIG9_MEASURES,
        rows,
        "offload_gain: overall minus the local exit alone.",
    )


FIG10_MEASURES = ["overall", "drop", "local", "cloud"]


def fig10(ctx: Context) -> dict[str, Any]:
    """Fig. 10: each single device missing in turn (`ddnn eval --each-missing`'s
    function), overall accuracy at the calibrated threshold and its drop."""
    per_seed = []
    for seed in ctx.plan.seeds:
        model, cfg, _ = ctx.base_model(seed)
        points = model_exit_points(model, cfg)
        full = evaluate(run_model(model, ctx.test), points)["accuracy"]
        rows = [{"missing": "none", **full, "drop": 0.0}]
        for r in accuracy_each_missing(model, ctx.test, points):
            rows.append({**r, "drop": round(full["overall"] - r["overall"], 2)})
        per_seed.append(rows)
    rows = fold(per_seed, ["missing"], FIG10_MEASURES)
    for row in rows:
        row["paper"] = {"overall %": f"over {paper.FIG10_FLOOR:g}", "drop": "at most about 3"}
    return table(
        "fig10",
        "Fig. 10: one end device missing, accuracy % (drop: points lost)",
        f"{paper.DDNN}, Fig. 10 (numbers from its text): {paper.FIG10}",
        paper.MVMC,
        ctx.our_data,
        ["missing"],
        FIG10_MEASURES,
        rows,
        "Devices are numbered from 0 here, from 1 in the paper; our cameras are not its cameras.",
    )


TRADEOFF_MEASURES = ["bytes", "accuracy", "raw_over_bytes"]
# the rows, with the paper's bytes and accuracy % (Table II at T = 0.1, 0.8, 1.0; Section IV-H)
RAW = "raw offload (cloud only)"
SYSTEMS = {
    "DDNN, T = 0 (all to the cloud)": paper.TABLE2[0.1][2:0:-1],
    "DDNN, calibrated T": paper.TABLE2[0.8][2:0:-1],
    "DDNN, T = 1 (all local)": paper.TABLE2[1.0][2:0:-1],
    RAW: (paper.RAW_BYTES, "-"),
}


def tradeoff(ctx: Context) -> dict[str, Any]:
    """Bytes per device per sample against accuracy: the DDNN at its calibrated threshold
    and at the ends of the sweep, against raw offload (Fig. 2 (a): the devices send their
    pixels, the cloud does everything, one model trained the same way)."""
    per_seed = []
    for seed in ctx.plan.seeds:
        model, cfg, _ = ctx.base_model(seed)
        outputs = run_model(model, ctx.test)
        points = model_exit_points(model, cfg)
        at = {"local": 0.0}, {}, {"local": 1.0}  # all to the cloud, calibrated, all local
        rows = [
            _bytes_row(name, evaluate(outputs, with_thresholds(points, t)))
            for name, t in zip(SYSTEMS, at, strict=False)
        ]
        raw_cfg = ctx.config(seed, {"model.device.conv_filters": [], "model.local": None})
        raw, raw_cfg, _ = ctx.runs.model(raw_cfg, RAW)
        report = evaluate(run_model(raw, ctx.test), model_exit_points(raw, raw_cfg))
        rows.append(_bytes_row(RAW, report))
        per_seed.append(rows)
    rows = fold(per_seed, ["system"], TRADEOFF_MEASURES)
    for row in rows:
        b, a = SYSTEMS[row["system"]]
        row["paper"] = {"bytes": b, "accuracy %": a}
    doc = table(
        "tradeoff",
        "Communication against accuracy: bytes per device per sample, overall "
        "accuracy %, and raw offload",
        f"{paper.DDNN}, Table II and Section IV-H (raw offload of a 32x32 RGB image: "
        f"{paper.RAW_BYTES} B; the paper's calibrated T is 0.8)",
        paper.MVMC,
        ctx.our_data,
        ["system"],
        TRADEOFF_MEASURES,
        rows,
        "The curve in tradeoff_bytes.png is Table II's sweep; raw offload's accuracy is a "
        "cloud-only model on pixels (the paper gives no accuracy for it).",
    )
    return doc


def _bytes_row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    b = report["bytes_per_device"]
    return {
        "system": name,
        "bytes": b["measured"],
        "accuracy": report["accuracy"]["overall"],
        "raw_over_bytes": b["raw_over_measured"],
    }
