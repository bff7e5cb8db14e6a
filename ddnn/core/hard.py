"""Hard examples: the samples a deployment learns most from, by one rule that offline mining
(`ddnn hard`) applies to a data set and a live capture (`ddnn capture`, the devices'
`--capture`) applies to each decision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddnn.core.config import ModelConfig

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
        """Per reason, which samples it makes hard (a sample may have several). Arrays of
        samples, or one sample's values (NumPy compares a scalar as it does an array)."""
        return {
            "escalated": escalated,
            "degraded": degraded,
            "abstained": abstained,
            "unsure": entropy > self.entropy,
        }

    def holds(
        self,
        escalated: np.ndarray,
        degraded: np.ndarray,
        abstained: np.ndarray,
        entropy: np.ndarray,
    ) -> np.ndarray:
        """Which samples are hard: those for which any of `reasons` holds."""
        return np.logical_or.reduce(
            list(self.reasons(escalated, degraded, abstained, entropy).values())
        )

    def decision(
        self,
        model: ModelConfig,
        *,
        exit: str | None,
        entropy: float | None,
        degraded: bool,
        abstained: bool,
        devices: int,
    ) -> bool:
        """Whether a live decision (the fields of `ddnn.live.wire.Decision`, `devices` the
        number that took part) makes its sample hard, as mining calls a sample of a data set:
        escalated when it was decided past the model's local exit; degraded when devices
        were missing, or when an upper tier missed its deadline and a lower tier's answer
        stands. An undecided sample (no exit) is not: no device took part, so there is no
        frame to keep."""
        if exit is None:
            return False
        return bool(
            self.holds(
                model.local is not None and exit != "local",
                degraded or devices < model.n_devices,
                abstained,
                0.0 if entropy is None else entropy,
            )
        )
