"""`ddnn device`: one end device. Captures a frame per sample, runs its slice, publishes the
class scores, keeps the feature map for a while, and publishes it bit-packed when asked.

Clocks (which frame belongs to which sample, across devices):
- `tick` (the default): capture when the `tick` message for sample k arrives. Replay sources
  read frame k, so every device replays the same sample in lockstep; a camera grabs its
  current frame, as a hardware trigger would.
- `wall`: free-running at `fps`; sample k is the frame captured in the k-th 1/fps slot of
  Unix time, so devices with synchronized clocks (NTP/PTP) agree on sample ids without
  talking to each other.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from ddnn.manifest import Manifest
from ddnn.mqtt import BrokerSettings
from ddnn.packing import pack_scores
from ddnn.service import Rejected, Service
from ddnn.wire import Features, Message, Offload, Scores, Tick
from devices.runtime import SliceRuntime
from devices.sources import FrameSource, VideoSource


class DeviceService(Service):
    def __init__(
        self,
        manifest: Manifest,
        device: int,
        runtime: SliceRuntime,
        source: FrameSource,
        broker: BrokerSettings,
        deployment: str,
        *,
        clock: str = "tick",
        fps: float = 10.0,
        keep_seconds: float = 10.0,
        keep_max: int = 1024,
    ) -> None:
        self.role = f"device-{device}"
        super().__init__(manifest, broker, deployment)
        self.runtime = runtime
        self.source = source
        self.clock = clock
        self.fps = fps
        self.keep_seconds = keep_seconds
        self.keep_max = keep_max
        self.kind = manifest.ddnn_config().model.device_feature_kind
        self.kept: OrderedDict[int, tuple[float, np.ndarray]] = OrderedDict()
        self.next_capture = 0.0

    def subscriptions(self) -> list[str]:
        return [self.topics.tick, self.topics.offload]

    def handle(self, topic: str, message: Message) -> None:
        if isinstance(message, Tick) and self.clock == "tick":
            frame = self.source.frame(self._index(message.sample))
            if frame is None:
                raise Rejected(f"no frame {message.sample} in {self.source.name}")
            self.capture(message.sample, frame.image, message.t)
        elif isinstance(message, Offload):
            if self.role in message.sources:
                self.send_features(message.sample)
        elif not isinstance(message, Tick):
            raise Rejected(f"a {message.kind} message on {topic}")

    def _index(self, sample: int) -> int:
        """Finite sources (replay, image folders) cycle through their frames."""
        length = getattr(self.source, "length", None)
        return sample % length if length else sample

    def capture(self, sample: int, image: np.ndarray, t0: float) -> None:
        scores, features = self.runtime(image)
        self.publish(
            self.topics.scores(self.role),
            Scores(sample=sample, source=self.role, scores=pack_scores(scores), t0=t0),
        )
        self.counters["frames"] += 1
        self.kept[sample] = (time.monotonic(), features)
        while len(self.kept) > self.keep_max:
            self.kept.popitem(last=False)
            self.counters["features_dropped"] += 1

    def send_features(self, sample: int) -> None:
        kept = self.kept.pop(sample, None)
        if kept is None:
            self.counters["features_expired"] += 1
            self.log.warning("asked for the features of sample %d, no longer kept", sample)
            return
        message = Features.of(sample, self.role, kept[1], self.kind)
        self.publish(self.topics.features(self.role), message)
        self.counters["features_sent"] += 1

    def poll(self, now: float) -> float | None:
        while self.kept and now - next(iter(self.kept.values()))[0] > self.keep_seconds:
            self.kept.popitem(last=False)
            self.counters["features_dropped"] += 1
        if self.clock != "wall":
            return None
        t = time.time()
        if t >= self.next_capture:
            sample = int(t * self.fps)
            if isinstance(self.source, VideoSource):
                image = self.source.read()
            else:
                frame = self.source.frame(self._index(sample))
                image = None if frame is None else frame.image
            if image is not None:
                self.capture(sample, image, t)
            else:
                self.counters["no_frame"] += 1
            self.next_capture = (sample + 1) / self.fps
        return now + max(0.0, self.next_capture - time.time())
