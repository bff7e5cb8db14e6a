"""`ddnn bench sites`: many sites on one broker, each a deployment with its own aggregator.

One export of the model; per site (`site-0`, `site-1`, ...) its own accounts, whose user
names carry the site (ddnn/live/access.py), merged into the one broker's files; one process
per role per site, as `ddnn demo` starts them; each site ticked by a driver of its own at
`fps` samples per second for `seconds`, all sites at once, their ticks spread over the frame
interval like cameras that do not wait for each other.

What it reports per site: samples ticked and decided, decided per second, latency p50/p99
per exit tier (capture to decision), undecided and degraded samples, and parity with
offline evaluation; for the run, the CPU seconds per decided sample of all services and the
broker together, and the sites that starved: decided less than `FAIR_SHARE` of what they
ticked, or a p99 latency over `SLOW_P99_MS`.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ddnn.live.access import merge_access
from ddnn.live.broker.start import start_broker
from ddnn.nn.checkpoint import load_model
from ddnn.ops.demo import demo_model
from ddnn.ops.deploy import Deployment, deployment, prepare_sites
from ddnn.ops.fleet import cpu_seconds, summarize

WARMUP = 10  # samples each site decides before the run (first frames, first connections)
FAIR_SHARE = 0.95  # a site that decided less than this share of what it ticked starved
SLOW_P99_MS = 1000.0  # ... or whose decisions took longer than this at the 99th percentile


def bench_sites(
    model: Path | None,
    sites: int,
    fps: float,
    seconds: float,
    devices: int | None,
    kind: str,
    cache: Path,
    log: Callable[[str], None],
    data: str | None = None,
) -> dict[str, Any]:
    """Run `sites` sites of `model` (default: the demo model) on one broker (module doc);
    the figures as a document."""
    path = model if model is not None else demo_model(False, cache, log)
    net, cfg, meta = load_model(path)
    names = [f"site-{i}" for i in range(sites)]
    paced = range(WARMUP, WARMUP + max(1, round(fps * seconds)))
    with tempfile.TemporaryDirectory(prefix="ddnn-bench-sites-") as tmp:
        work = Path(tmp)
        prepared = prepare_sites(net, cfg, meta, work, names, data)
        access = merge_access([p.access for p in prepared], work / "broker-access")
        with start_broker(kind=kind, access=access) as broker, ExitStack() as stack:
            running: list[Deployment] = []
            for p in prepared:
                (work / p.name).mkdir()
                site = deployment(p, broker.settings(), work / p.name, devices=devices)
                running.append(stack.enter_context(site))
                log(f"{p.name}: {len(running[-1].processes)} services online")
            pids = [proc.pid for r in running for proc in r.fleet.procs.values()]
            pids.append(broker.pid)
            for r in running:  # one at a time: warming up is not what is measured
                r.driver.run(range(WARMUP), window=4)
            log(f"{sites} sites x {len(paced)} samples at {fps:g} per second, all at once")
            before = sum(cpu_seconds(pid) or 0.0 for pid in pids)
            start = time.monotonic()
            phases = _phases(start, sites, fps)
            threads = [
                threading.Thread(target=_drive, args=(r, paced, fps, at))
                for r, at in zip(running, phases, strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            cpu = sum(cpu_seconds(pid) or 0.0 for pid in pids) - before
            ended = time.monotonic()
            kind_used = broker.kind
    rows = [_site(r, p.name, paced, at) for r, p, at in zip(running, prepared, phases, strict=True)]
    decided = sum(row["decided"] for row in rows)
    return {
        "model": str(path),
        "data": running[0].reference.spec,
        "broker": {"kind": kind_used, "protocol": broker.protocol},
        "sites": sites,
        "devices_per_site": devices or cfg.model.n_devices,
        "fps": fps,
        "seconds": round(ended - start, 2),
        "processes": sum(len(r.processes) for r in running),
        "decided_per_second": round(decided / max(1e-9, ended - start), 1),
        "cpu_seconds_per_sample": round(cpu / max(1, decided), 5),
        "per_site": rows,
        "starved": [row["site"] for row in rows if row["starved"]],
    }


def _phases(start: float, sites: int, fps: float) -> list[float]:
    """When each site starts ticking: spread over one frame interval, as independent
    cameras are (all sites ticking in the same millisecond would wake every process of the
    machine at once, 80 of them on 2 cores, a load no real fleet of sites makes)."""
    return [start + i / (sites * fps) for i in range(sites)]


def _drive(r: Deployment, samples: range, fps: float, at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))
    r.driver.run(samples, rate=fps, window=max(16, int(fps * 10)))


def _site(r: Deployment, name: str, ticked: range, start: float) -> dict[str, Any]:
    """One site's row: what it decided of `ticked`, how fast, and whether it starved."""
    decisions = {k: r.driver.decisions[k] for k in ticked if k in r.driver.decisions}
    last = max((r.driver.decided_at[k] for k in decisions), default=start)
    summary = summarize(decisions, r.reference.labels, len(ticked), last - start)
    parity = r.reference.compare(decisions.values())
    p99s = [v["p99"] for v in summary["latency_ms"].values() if v["p99"] is not None]
    p99 = max(p99s, default=None)
    share = summary["decided"] / len(ticked)
    return {
        "site": name,
        "ticked": len(ticked),
        "decided": summary["decided"],
        "decided_per_second": round(summary["decided"] / max(1e-9, last - start), 2),
        "undecided": summary["undecided"],
        "degraded": summary["degraded"],
        "latency_ms": summary["latency_ms"],
        "exit_fraction": summary["exit_fraction"],
        "compared": parity["compared"],
        "mismatches": parity["mismatches"],
        "decided_twice": r.driver.anomalies.get("decisions_twice", 0),
        "starved": share < FAIR_SHARE or (p99 is not None and p99 > SLOW_P99_MS),
    }
