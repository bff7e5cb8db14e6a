"""Fairness between the accounts that write to a service: a token bucket per topic, asked
with the topic string before a message takes a place in the inbox (a QoS 0 one before paho
makes a message of it), sized from the deployment's frame rate. Why per topic, where it sits
and what it costs: docs/design/fairness.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

DEFAULT_FRAME_RATE = 1000.0  # samples per second: above what one machine decides flat out
PER_FRAME = 4.0  # messages a topic may carry per frame, on average
BURST_SECONDS = 1.0  # of them a bucket holds
MIN_RATE = 10.0  # messages per second, at the least: statuses at any frame rate
MAX_BUCKETS = 256  # topics with a bucket of their own; the rest share one (`OTHER`)
OTHER = "(other topics)"
MAX_KEY = 200  # characters of a topic that key its bucket (real ones: ~40)
QUIET = 1.0  # seconds after its last drop that a topic stops counting as throttled


class TopicRates:
    """A token bucket per topic: `rate` messages per second, at most `burst` at once.
    `admit(topic)` takes a token or says no (counted in `dropped`, per topic). At most
    `MAX_BUCKETS` topics get one of their own: any topic matching a wildcard subscription
    (`scores/+`) could be a new key, on a broker that checks no grants."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1: {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # topic -> [tokens, when last filled]
        self.dropped: Counter[str] = Counter()
        self.last_drop: dict[str, float] = {}  # topic -> clock time of its latest drop

    @classmethod
    def for_frame_rate(cls, frame_rate: float) -> TopicRates | None:
        """The buckets of a deployment of `frame_rate` samples per second (see
        docs/design/fairness.md); None (no limit) for 0."""
        if frame_rate < 0:
            raise ValueError(f"a frame rate is positive (or 0: no limit), got {frame_rate}")
        if frame_rate == 0:
            return None
        rate = max(MIN_RATE, PER_FRAME * frame_rate)
        return cls(rate, max(2.0, rate * BURST_SECONDS))

    def admit(self, topic: str) -> bool:
        """Whether a message on `topic` may go on (a token taken), or is to be dropped."""
        now = self.clock()
        if len(topic) > MAX_KEY:  # a long name holds no more memory than a short one
            topic = topic[:MAX_KEY]
        bucket = self._buckets.get(topic)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                topic = OTHER
                bucket = self._buckets.setdefault(OTHER, [self.burst, now])
            else:
                bucket = self._buckets[topic] = [self.burst, now]
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        self.dropped[topic] += 1
        self.last_drop[topic] = now
        return False

    def throttled(self, now: float | None = None) -> set[str]:
        """The topics with a message dropped within the last `QUIET` seconds."""
        if not self.last_drop:
            return set()
        now = self.clock() if now is None else now
        return {t for t, at in self.last_drop.items() if now - at < QUIET}
