"""`ddnn capture`: keeps the hard examples of a live deployment for labelling. It reads every
decision and the frames the capturing devices send (docs/design/capture.md); for each decision
that meets the hard-example rule (ddnn/core/hard.py, the rule mining uses, at the devices'
level) it gathers the frames of the devices that took part, waits a little for missing ones,
and writes the sample into its folder (capture/folder.py).

Bounded by the samples waiting for frames, a rate and a disk quota, each counted in its
status; a reached quota or a failing disk stops capture for good, never the deployment. Bad
frames are refused under their reason (the design note lists the bounds and reasons).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from capture.folder import BUILT, CaptureFolder, QuotaReached, build
from ddnn.core.errors import DDNNError
from ddnn.core.hard import HardRule
from ddnn.core.manifest import Manifest
from ddnn.core.roles import CAPTURE
from ddnn.live.rates import TopicRates
from ddnn.live.service import Broker, Recent, Rejected, Service, handles
from ddnn.live.wire import Capture, Decision

DEFAULT_RATE = 200.0  # captured samples per second, with bursts of one second's worth
DEFAULT_WAIT = 2.0  # seconds a hard sample waits for its devices' frames
MAX_PENDING = 1024  # hard samples waiting for frames at most ...
PENDING_BYTES = 64 << 20  # ... and the frames they hold, at most
BUILD_AT_STOP = 64 << 20  # the largest MVMC file (float32 frames) built on stopping
# what the status always shows, 0 or not (the refusals come under their reasons)
COUNTERS = (
    "hard",
    "waiting",
    "captured_samples",
    "captured_frames",
    "bytes_written",
    "quota_reached",
    "disk_errors",
    "dropped_rate",
    "dropped_pending",
    "dropped_stopped",
    "frames_missing",
    "frames_unused",
)


@dataclass
class Waiting:
    """A hard sample, waiting for the frames of its decision's devices."""

    decision: Decision
    since: float  # monotonic
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # by device

    @property
    def devices(self) -> set[int]:
        """The devices whose frames it waits for: those that took part in the decision."""
        return set(self.decision.devices)


class CaptureService(Service):
    role = CAPTURE
    capturing = True

    def __init__(
        self,
        manifest: Manifest,
        broker: Broker,
        deployment: str,
        folder: CaptureFolder,
        hard: HardRule,
        *,
        rate: float = DEFAULT_RATE,
        wait: float = DEFAULT_WAIT,
    ) -> None:
        super().__init__(manifest, broker, deployment)
        self.folder = folder
        self.hard = hard
        self.wait = wait
        self.frame_bytes = int(np.prod(self.model.input_shape))
        per_sample = self.frame_bytes * self.model.n_devices
        self.pending_max = max(1, min(MAX_PENDING, PENDING_BYTES // per_sample))
        self.waiting: OrderedDict[int, Waiting] = OrderedDict()
        # samples no longer waiting -> the devices whose frames were written (a frame that
        # comes later is late, or sent twice): as many as may still have frames on the way
        self.ended: Recent[frozenset[int]] = Recent(4 * MAX_PENDING)
        self.bucket = TopicRates(rate, max(1.0, rate)) if rate > 0 else None
        self.stopped: str | None = None  # why capture stopped for good, once it did
        self.counters.update(dict.fromkeys(COUNTERS, 0))
        self.counters["bytes_written"] = folder.bytes

    @handles(Decision)
    def on_decision(self, d: Decision) -> None:
        if d.sample in self.waiting or d.sample in self.ended or d.sample in self.folder.samples:
            return  # a repeat (QoS 1), or captured before a restart
        if not d.is_hard(self.hard, self.model):
            return
        self.counters["hard"] += 1
        if self.stopped is not None:
            self._drop(d.sample, "dropped_stopped")
        elif self.bucket is not None and not self.bucket.admit(CAPTURE):
            self._drop(d.sample, "dropped_rate")
        else:
            self.waiting[d.sample] = Waiting(d, time.monotonic())
            if len(self.waiting) > self.pending_max:
                self._drop(next(iter(self.waiting)), "dropped_pending")

    @handles(Capture)
    def on_capture(self, m: Capture) -> None:
        device = m.source.index  # (the topic's device: the wire checked)
        if m.source.tier != "device" or device is None or device >= self.model.n_devices:
            raise Rejected("a frame from a role that sends none", m.source)
        if tuple(m.shape) != tuple(self.model.input_shape):
            raise Rejected(
                "a frame of another shape than the model's input",
                f"{m.source} sent {m.shape}, the model takes {list(self.model.input_shape)}",
            )
        w = self.waiting.get(m.sample)
        if w is None:
            if m.sample not in self.ended:
                raise Rejected("a frame of a sample no hard decision asked for", str(m.sample))
            if device in (self.ended.get(m.sample) or ()):
                raise Rejected("a frame sent twice", f"{m.source}, sample {m.sample}")
            self.counters["frames_unused"] += 1  # its sample was written or dropped already
            return
        if device not in w.devices:
            raise Rejected("a frame of a device that took no part in the decision", m.source)
        if device in w.frames:
            raise Rejected("a frame sent twice", f"{m.source}, sample {m.sample}")
        w.frames[device] = m.frame()
        if len(w.frames) == len(w.devices):
            self._write(m.sample)

    def poll(self, now: float) -> float | None:
        """Write the samples that waited `wait` seconds with the frames they have."""
        while self.waiting:
            sample, w = next(iter(self.waiting.items()))
            if now - w.since < self.wait:
                break
            self._write(sample)
        self.counters["waiting"] = len(self.waiting)  # (the status shows it)
        return None if not self.waiting else next(iter(self.waiting.values())).since + self.wait

    def close(self) -> None:
        """Write the samples still waiting with the frames they have, stop as every service
        does (its last status holds every count), then build the MVMC file of the folder:
        after the disconnect, since the network waits while this thread builds, and a build
        longer than the keepalive would have the broker fire the last will."""
        with self.guard():
            while self.waiting:  # (the quota may stop capture, and drop the rest, meanwhile)
                self._write(next(iter(self.waiting)))
        super().close()
        self._build()

    def _drop(self, sample: int, why: str) -> None:
        """End `sample` without writing it, counted under `why`."""
        self.waiting.pop(sample, None)
        self.ended.add(sample, frozenset())
        self.counters[why] += 1

    def _write(self, sample: int) -> None:
        """End a waiting sample: into the folder with the frames that came (none came:
        nothing to write); the quota reached or a disk error stops capture."""
        w = self.waiting.pop(sample)
        self.ended.add(sample, frozenset(w.frames))
        self.counters["frames_missing"] += len(w.devices) - len(w.frames)
        if not w.frames:
            return
        try:
            self.folder.write(w.decision, w.frames)
        except QuotaReached as e:
            self.counters["quota_reached"] = 1
            self._stop(f"its quota is reached ({e})")
        except OSError as e:
            self.counters["disk_errors"] += 1
            self._stop(f"the disk failed: {e}")
        else:
            self.counters["captured_samples"] += 1
            self.counters["captured_frames"] += len(w.frames)
            self.counters["bytes_written"] = self.folder.bytes

    def _stop(self, why: str) -> None:
        """Stop capturing for good, the sample being written and those waiting dropped: said
        once, in the log and in the status; the service itself goes on."""
        self.stopped = why
        self.counters["dropped_stopped"] += 1
        for sample in list(self.waiting):
            self._drop(sample, "dropped_stopped")
        self.log.error("capture stopped: %s; the deployment goes on without it", why)

    def _build(self) -> None:
        """Write the folder's MVMC file (`build`), where it is small enough to make while
        the service stops (every frame in memory as float32); else say how to make it."""
        size = 4 * self.frame_bytes * self.model.n_devices * len(self.folder.samples)
        if size > BUILD_AT_STOP:
            self.log.warning(
                "%d samples are too many to build %s while stopping: run `ddnn capture "
                "--build --out %s`",
                len(self.folder.samples),
                BUILT,
                self.folder.root,
            )
            return
        try:
            built = build(self.folder.root)
        except OSError as e:
            self.log.error("could not write %s: %s", BUILT, e)
        except DDNNError as e:  # a folder someone edited into what the import refuses
            self.log.error("could not build %s: %s", BUILT, e)
        else:
            self.log.info("wrote %s: %d samples", self.folder.root / BUILT, built)
