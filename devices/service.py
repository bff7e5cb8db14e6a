"""`ddnn device`: one end device. Captures a frame per sample, runs its slice, publishes the
class scores, keeps the feature map for a while, and publishes it bit-packed when asked.
With `--capture` it also sends the frames of hard samples to `ddnn capture`
(docs/design/capture.md).

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

import numpy as np

from ddnn.core.errors import DDNNError
from ddnn.core.hard import HardRule
from ddnn.core.manifest import Manifest
from ddnn.core.payloads import camera_frames, pack_scores
from ddnn.core.roles import Role
from ddnn.live.service import (
    Broker,
    KeptMaps,
    Recent,
    Rejected,
    Service,
    check_fresh,
    handles,
)
from ddnn.live.wire import MAX_FRAME, Capture, Decision, Offload, Scores, Tick
from devices.runtime import SliceRuntime
from devices.sources import FrameSource, VideoSource


class DeviceService(Service):
    def __init__(
        self,
        manifest: Manifest,
        device: int,
        runtime: SliceRuntime,
        source: FrameSource,
        broker: Broker,
        deployment: str,
        *,
        clock: str = "tick",
        fps: float = 10.0,
        keep_seconds: float = 10.0,
        keep_max: int = 1024,
        hard: HardRule | None = None,
    ) -> None:
        self.role = Role.device(device)
        self.capturing = hard is not None
        super().__init__(manifest, broker, deployment)
        if self.capturing and np.prod(self.model.input_shape) > MAX_FRAME:
            raise DDNNError(
                f"--capture: frames of {self.model.input_shape} do not fit one message "
                f"({MAX_FRAME} bytes at most)"
            )
        self.runtime = runtime
        self.source = source
        self.clock = clock
        self.fps = fps
        self.feature_format = self.model.device_feature_format
        self.kept = KeptMaps(keep_seconds, keep_max)
        self.hard = hard  # the hard-example rule, where it captures
        self.frames = KeptMaps(keep_seconds, keep_max)  # uint8, until the decision (capturing)
        self.answered: Recent[Scores] = Recent(keep_max)  # the scores of recent samples
        self.next_capture = 0.0

    @handles(Tick)
    def on_tick(self, message: Tick) -> None:
        if self.clock != "tick":
            return  # free-running on the wall clock: ticks start nothing
        check_fresh(message.t, "a tick")
        answered = self.answered.get(message.sample)
        if answered is not None:
            # A repeat (the driver's retry after a lost decision, or a replay): the same
            # scores again, without a second inference, so a flood of them costs little.
            self.publish(self.topics.scores(self.role), answered)
            self.counters["tick_repeats"] += 1
            return
        image = self._image(message.sample)
        if image is None:
            raise Rejected("a tick for a frame the source does not have", self.source.name)
        self.capture(message.sample, image, message.t)

    @handles(Offload)
    def on_offload(self, message: Offload) -> None:
        if self.role in message.sources:
            self.send_kept(self.kept, message.sample, self.feature_format)

    @handles(Decision)
    def on_decision(self, message: Decision) -> None:
        """Read only while capturing: send the sample's frame where the rule finds it hard,
        and forget the frame either way."""
        frame = self.frames.take(message.sample)
        if frame is None or self.hard is None or self.role.index not in message.devices:
            return  # not a sample it answered (or no longer kept: counted as dropped)
        if message.is_hard(self.hard, self.model):
            self.publish(
                self.topics.capture(self.role), Capture.of(message.sample, self.role, frame)
            )

    def _index(self, sample: int) -> int:
        """Finite sources (replay, image folders) cycle through their frames."""
        length = getattr(self.source, "length", None)
        return sample % length if length else sample

    def _image(self, sample: int) -> np.ndarray | None:
        """The image for `sample`, None when there is none: the newest image of a live camera
        or stream (it has no random access), and of a video file on the wall clock; else the
        source's frame for the sample (a video file on the tick clock reads frame k)."""
        source = self.source
        if isinstance(source, VideoSource) and (source.live or self.clock == "wall"):
            return source.read()
        frame = self.source.frame(self._index(sample))
        return None if frame is None else frame.image

    def capture(self, sample: int, image: np.ndarray, t0: float) -> None:
        scores, features = self.runtime(image)
        message = Scores(sample=sample, source=self.role, scores=pack_scores(scores), t0=t0)
        self.publish(self.topics.scores(self.role), message)
        self.answered.add(sample, message)
        self.counters["frames"] += 1
        self.counters["features_dropped"] += self.kept.put(sample, features)
        if self.capturing:
            self.counters["frames_dropped"] += self.frames.put(sample, camera_frames(image))

    def poll(self, now: float) -> float | None:
        self.counters["features_dropped"] += self.kept.expire(now)
        if self.capturing:
            self.counters["frames_dropped"] += self.frames.expire(now)
        if self.clock != "wall":
            return None
        t = time.time()
        if t >= self.next_capture:
            sample = int(t * self.fps)
            image = self._image(sample)
            if image is not None:
                self.capture(sample, image, t)
            else:
                self.counters["no_frame"] += 1
            self.next_capture = (sample + 1) / self.fps
        return now + max(0.0, self.next_capture - time.time())
