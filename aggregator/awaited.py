"""Which devices a sample waits for: those online (by their statuses, and their scores),
less those silent for `SILENT_AFTER` seconds and those whose scores are being dropped over
their account's rate (ddnn/live/rates.py). Waiting for either would make every sample wait
out its score deadline for a dead device or a flooder."""

from __future__ import annotations

from ddnn.live.rates import TopicRates
from ddnn.live.service import STATUS_EVERY

SILENT_AFTER = 3 * STATUS_EVERY  # seconds without a word after which a device is offline


class Awaited:
    def __init__(self, score_topics: dict[str, int]) -> None:
        self.score_topics = score_topics  # a device's scores topic -> the device
        self.online: set[int] = set()
        self.heard: dict[int, float] = {}  # device -> monotonic time of its latest word
        self.over_rate: set[int] = set()  # when last checked

    def said(self, device: int, online: bool, now: float) -> None:
        """Device `device` said it is online (or offline), or sent scores, at `now`."""
        (self.online.add if online else self.online.discard)(device)
        self.heard[device] = now

    def devices(self, rates: TopicRates | None, now: float) -> set[int]:
        """The devices a sample waits for now."""
        return self.online - self._over_rate(rates, now)

    def forget_silent(self, now: float) -> list[int]:
        """The devices online that have been silent too long, now counted offline."""
        silent = sorted(d for d in self.online if now - self.heard.get(d, now) > SILENT_AFTER)
        self.online.difference_update(silent)
        return silent

    def newly_over_rate(self, rates: TopicRates | None, now: float) -> bool:
        """Whether a device online has gone over its rate since the last check."""
        over = self._over_rate(rates, now)
        newly, self.over_rate = over - self.over_rate, over
        return bool(newly & self.online)

    def _over_rate(self, rates: TopicRates | None, now: float) -> set[int]:
        if rates is None or not rates.last_drop:
            return set()
        return {self.score_topics[t] for t in rates.throttled(now) if t in self.score_topics}
