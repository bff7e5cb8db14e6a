"""Hard examples: the samples a deployment learns most from, by one rule that offline mining
(`ddnn data hard`) applies now and a live capture can apply to the same decisions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ENTROPY = 0.9  # normalized entropy of the deciding exit: the truly unsure answers


@dataclass(frozen=True)
class HardRule:
    """A sample is hard when it escalated past the local exit, ended degraded (devices
    missing) or abstained, or its deciding exit's normalized entropy is above `entropy`
    (the last exit always decides, however unsure)."""

    entropy: float = DEFAULT_ENTROPY

    def __post_init__(self) -> None:
        if not 0.0 <= self.entropy <= 1.0:
            raise ValueError(f"a hard-example entropy level lies in 0..1, got {self.entropy}")

    def reasons(
        self,
        escalated: np.ndarray,
        degraded: np.ndarray,
        abstained: np.ndarray,
        entropy: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Per reason, which samples it makes hard (a sample may have several)."""
        return {
            "escalated": escalated,
            "degraded": degraded,
            "abstained": abstained,
            "unsure": entropy > self.entropy,
        }
