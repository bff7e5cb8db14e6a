"""The `ddnn faults` scenario `byzantine-device`: device 0's account answers every tick with
a wrong class at its bound, under the deployment's fusion and then `--robust-fusion`; rows
give the live accuracy beside the offline one of the same attack (ddnn/nn/studies/byzantine.py).
Its `mismatches` count the lies that got through (docs/design/score-bounds.md).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.core.fusion import score_fusions
from ddnn.core.manifest import read_manifest
from ddnn.core.payloads import pack_scores
from ddnn.core.roles import AGGREGATOR, Role
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.wire import MAX_SCORE, Scores, Status, Tick, decode, encode
from ddnn.nn.evaluate import numpy_state
from ddnn.nn.studies.byzantine import byzantine_accuracy, cc_block, lying_scores
from ddnn.ops.faults.harness import Harness

SAMPLES = 60  # per stretch: honest, lying under the plain fusion, lying under the trimmed one
ROBUST = "--robust-fusion"


class Liar:
    """A rogue client on device `device`'s account answering every tick with `lies[k mod
    len(lies)]` for sample k (the row of the test part the devices replay for it)."""

    def __init__(self, h: Harness, device: int, lies: np.ndarray) -> None:
        self.role = Role.device(device)
        self.topics = h.driver.topics
        self.lies = [pack_scores(row) for row in lies]
        self.client = MqttClient(h.login(self.role), f"ddnn-liar-{self.role}")
        self.client.subscribe(self.topics.tick)
        self.stopping = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="liar", daemon=True)

    def start(self) -> Liar:
        self.client.connect()
        self._status("online")
        self.thread.start()
        return self

    def _status(self, state: str) -> None:
        status = Status(role=self.role, state=state, t=time.time())  # type: ignore[arg-type]
        self.client.publish(self.topics.status(self.role), encode(status), qos=1, retain=True)

    def _run(self) -> None:
        beat = time.monotonic()
        while not self.stopping.is_set():
            if time.monotonic() - beat > 1.0:  # stays "online" as a device's status would
                beat = time.monotonic()
                self._status("online")
            item = self.client.get(timeout=0.05)
            if item is None:
                continue
            try:
                tick = decode(item[1])
            except Exception:  # noqa: BLE001 - a rogue ignores what it cannot read
                continue
            if not isinstance(tick, Tick):
                continue
            lie = self.lies[tick.sample % len(self.lies)]
            message = Scores(sample=tick.sample, source=self.role, scores=lie, t0=tick.t)
            self.client.publish(self.topics.scores(self.role), encode(message), qos=0)
            self.sent += 1

    def stop(self) -> None:
        """Stop lying; say offline, as the real device's last will would."""
        self.stopping.set()
        self.thread.join(timeout=5.0)
        self._status("offline")
        self.client.close()


def _artifacts(h: Harness) -> Path:
    common = h.fleet.common
    return Path(common[common.index("--artifacts") + 1])


def byzantine_device(h: Harness) -> list[dict[str, Any]]:
    """12. Device 0's account lies at its bound (docs/design/score-bounds.md), under the
    plain fusion and the trimmed one; rows: honest, lying (plain), lying (trimmed)."""
    ref = h.reference
    local = ref.cfg.model.local
    if local is None:
        return [h.row("no local exit: a device's scores reach nothing", h.segment(SAMPLES))]
    bound = read_manifest(_artifacts(h)).score_bounds.get("device-0", MAX_SCORE)
    offline = byzantine_accuracy(ref.model, ref.cfg, ref.test, ref.points, bound)
    block = cc_block(score_fusions(ref.cfg.model, numpy_state(ref.model))["local"], 0)
    lies = lying_scores(ref.labels, len(ref.cfg.model.classes), bound, block)
    fusion = local.aggregation + (" trimmed" if local.robust else "")
    plain = offline["trimmed" if local.robust else "plain"]
    rows = [
        h.row(
            f"every device honest ({fusion})",
            h.segment(SAMPLES),
            fusion=fusion,
            bound=bound,
            offline_accuracy_clean=plain["clean"]["accuracy"],
        )
    ]
    role = h.devices()[0]
    h.kill(role)
    h.driver.wait_online([r for r in h.roles if r != role])
    liar = Liar(h, 0, lies).start()
    h.mark(f"{role} lies at +-{bound:g}")
    switched = False  # the aggregator runs with --robust-fusion
    try:
        for robust in [True] if local.robust else [False, True]:
            if robust and not local.robust:
                h.restart_with(AGGREGATOR, ROBUST, True)
                switched = True
            name = local.aggregation + (" trimmed" if robust else "")
            measured = offline["trimmed" if robust else "plain"]
            rows.append(
                h.row(
                    f"{role} lies ({name})",
                    h.segment(SAMPLES),
                    fusion=name,
                    bound=bound,
                    offline_accuracy_clean=measured["clean"]["accuracy"],
                    offline_accuracy_attacked=measured["attacked"]["accuracy"],
                    offline_local_exit_wrong=measured["attacked"]["local_exit_wrong"],
                )
            )
    finally:
        liar.stop()
        if switched:
            h.restart_with(AGGREGATOR, ROBUST, False)
    rows[-1]["lies_sent"] = liar.sent
    return rows
