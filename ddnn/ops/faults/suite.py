"""`ddnn faults`: fault injection against a live deployment, checked against offline truth.

The scenarios run one after another on one deployment (broker, one process per role). Each
streams test samples through it with `tick` messages while it kills, pauses or restarts
processes, the broker, or lets a rogue client publish garbage; then the services it killed
are restarted, and what the design promises is checked: exactly one decision per sample, no
service dying of bad input, live decisions equal to the offline evaluation, recovery after a
restart, bounded memory. This module runs them (`run_faults`, `run_scenarios`); the
scenarios are in outage_scenarios.py, hostile_scenarios.py, byzantine_scenario.py and
flood_scenario.py beside it, on the `Harness` of harness.py.

Design: docs/design/faults.md (each promise checked, the columns that report it).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddnn.core.errors import DDNNError
from ddnn.core.roles import AGGREGATOR
from ddnn.nn.checkpoint import load_model
from ddnn.ops.deploy import deployment, prepare
from ddnn.ops.faults.byzantine_scenario import byzantine_device
from ddnn.ops.faults.flood_scenario import device_flood
from ddnn.ops.faults.harness import CLOUD_DEADLINE, SCORE_DEADLINE, Harness, OwnBroker, Sizes
from ddnn.ops.faults.hostile_scenarios import bad_input, flood, forgery, fuzz, replay
from ddnn.ops.faults.outage_scenarios import (
    aggregator_kill_storm,
    attrition,
    broker_outage,
    broker_restart,
    device_down,
    flapping,
    service_restart,
    straggler,
)

if TYPE_CHECKING:  # matplotlib only when a plot is asked for
    from ddnn.ops.live_plots import Event, Point

SCENARIOS: dict[str, Callable[[Harness], list[dict[str, Any]]]] = {
    "device-down": device_down,
    "attrition": attrition,
    "straggler": straggler,
    "flapping": flapping,
    "broker-restart": broker_restart,
    "service-restart": service_restart,
    "aggregator-kill-storm": aggregator_kill_storm,
    "broker-outage": broker_outage,
    "bad-input": bad_input,
    "replay": replay,
    "forgery": forgery,
    "fuzz": fuzz,
    "flood": flood,
    "byzantine-device": byzantine_device,
    "device-flood": device_flood,  # ddnn/ops/faults/flood_scenario.py
}


def run_scenarios(
    names: list[str],
    model: Path,
    log: Callable[[str], None],
    workdir: Path | None = None,
    data: str | None = None,
    sizes: Sizes | None = None,
    plot: Path | None = None,
    plot_prefix: str = "faults",
    kind: str = "auto",
) -> dict[str, Any]:
    """Run scenarios `names`, in order, on one deployment of `model`, its devices replaying
    the test part of `data` (a SPEC; default: the data the model was trained on), the very
    samples the offline reference decides.

    Returns per scenario its rows, whether every process that should live was alive at its
    end, and the anomalies and restarts it caused; and for the deployment, the services'
    final counters and rejections (from their last status), whether each exited cleanly,
    what the decisions observer saw over the whole run (`observed`) and the processes that
    died by themselves (`service_deaths`).
    `plot`: a folder where each scenario's time line goes (`<plot_prefix>-<scenario>.png`,
    drawn once the deployment has stopped, not while it runs); its path is the result's
    `plot`."""
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        known = ", ".join([*SCENARIOS, "dropout"])
        raise DDNNError(f"unknown scenario {unknown[0]!r}; known: {known}")
    net, cfg, meta = load_model(model)
    aggregator = ["--score-deadline", str(SCORE_DEADLINE)]
    aggregator += ["--edge-deadline", str(CLOUD_DEADLINE)]
    aggregator += ["--cloud-deadline", str(CLOUD_DEADLINE)]
    results: list[dict[str, Any]] = []
    timelines: list[tuple[list[Point], list[Event]]] = []
    with tempfile.TemporaryDirectory(prefix="ddnn-faults-") as tmp:
        work = workdir or Path(tmp)
        prepared = prepare(net, cfg, meta, work, "faults", data)
        # (its state: a restarted broker knows who is online)
        broker = OwnBroker(prepared.access, work / "broker-state", kind)
        try:
            with deployment(
                prepared,
                broker.running.settings(),
                work,
                extra={AGGREGATOR: aggregator},
                log_level="info",
                retry_after=3.0,
                drain=2.0,  # the services' last statuses, with their counters
            ) as running:
                fleet, driver, roles = running.fleet, running.driver, running.roles
                reference = running.reference
                log(f"{len(roles)} services online; devices replay {reference.spec} (test)")
                h = Harness(
                    fleet,
                    driver,
                    reference,
                    roles,
                    prepared.access,
                    broker,
                    sizes or Sizes(),
                )
                try:
                    for name in names:
                        log(f"scenario {name}")
                        anomalies, restarts = Counter(driver.anomalies), Counter(fleet.restarts)
                        began = time.monotonic()
                        rows = SCENARIOS[name](h)
                        live = [role for role in roles if role not in driver.dead]
                        alive = {role: fleet.alive(role) for role in live}
                        for role in sorted(driver.dead):
                            h.restart(role)  # the next scenario starts from a whole deployment
                        driver.wait_online(roles)
                        if plot is not None:
                            timelines.append(h.timeline(began))
                        results.append(
                            {
                                "scenario": name,
                                "data": reference.spec,
                                "rows": rows,
                                "alive": alive,
                                "anomalies": dict(driver.anomalies - anomalies),
                                "restarts": dict(fleet.restarts - restarts),
                                "seconds": round(time.monotonic() - began, 1),
                            }
                        )
                finally:
                    observed = h.observer.totals()
                    h.close()
        finally:
            broker.running.stop()
    if plot is not None:
        from ddnn.ops.live_plots import fault_timeline

        for result, (points, events) in zip(results, timelines, strict=True):
            path = plot / f"{plot_prefix}-{result['scenario']}.png"
            title = f"{result['scenario']}: {model.name}\non {reference.spec}"
            result["plot"] = str(fault_timeline(points, events, path, title))
    return {
        "model": str(model),
        "data": reference.spec,
        "broker": broker.running.kind,
        "scenarios": results,
        "clean_exits": {role: code == 0 for role, code in running.codes.items()},
        # what the independent observer saw of the whole run, and the processes that
        # exited without being killed on purpose (their names, one entry per process)
        "observed": observed,
        "service_deaths": fleet.deaths,
        "counters": {r: s.counters for r, s in driver.status.items()},
        "rejected": {r: s.rejected for r, s in driver.status.items() if s.rejected},
    }


def run_faults(
    names: list[str],
    model: Path,
    baseline: Callable[[], Path],
    log: Callable[[str], None],
    data: str | None = None,
    sizes: Sizes | None = None,
    plot: Path | None = None,
    kind: str = "auto",
) -> dict[str, Any]:
    """What `ddnn faults` reports: scenarios `names` on one deployment of `model`; "dropout"
    among them sets device-down of `model` beside device-down of `baseline()` (a model trained
    without device dropout, on a second deployment), reusing the first's device-down run.
    `plot`: a folder for each scenario's time line (PNG), listed in `plots`. `kind`: the
    broker's (`start_broker`: one that enforces the grants)."""
    wanted = [n for n in names if n != "dropout"]
    if "dropout" in names and "device-down" not in wanted:
        wanted.append("device-down")
    runs = [run_scenarios(wanted, model, log, data=data, sizes=sizes, plot=plot, kind=kind)]
    results = [r for r in runs[0]["scenarios"] if r["scenario"] in names]
    if "dropout" in names:
        runs.append(
            run_scenarios(
                ["device-down"],
                baseline(),
                log,
                data=data,
                plot=plot,
                plot_prefix="baseline",
                kind=kind,
            )
        )
        pair = [
            (
                "with dropout",
                next(r for r in runs[0]["scenarios"] if r["scenario"] == "device-down"),
            ),
            ("without dropout", runs[1]["scenarios"][0]),
        ]
        results += [{**r, "scenario": f"dropout: {label}"} for label, r in pair]
    deployments = [{k: v for k, v in run.items() if k != "scenarios"} for run in runs]
    report: dict[str, Any] = {"results": results, "deployments": deployments}
    if plot is not None:
        drawn = [r["plot"] for run in runs for r in run["scenarios"] if r["scenario"] in wanted]
        report["plots"] = drawn
    return report
