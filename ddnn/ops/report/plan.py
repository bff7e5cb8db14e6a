"""What `ddnn report` runs (`Plan`: the seeds, the epochs, the rows of each table) and what
its sections share while they run (`Context`: the cached runs, the paper's configuration
fitted to the data)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ddnn.core.config import DDNNConfig, validate_config
from ddnn.data import MultiViewData
from ddnn.nn.model import DDNN
from ddnn.nn.studies.router import COVERAGES
from ddnn.ops.report.paper import TABLE1
from ddnn.ops.report.runs import Runs

# 20 epochs, not `ddnn train`'s 100: the full report trains about 25 models per seed, and
# three seeds of them must fit in 45 minutes on 2 cores (README, Commands: `ddnn report`).
FULL_EPOCHS = 20
QUICK_EPOCHS = 3
# The device filters of the paper's Table I models (kunglab/ddnn exp/exp_combining.py: 16),
# which an MP cloud needs: its input is one device's width, an OR of six.
PAPER_TABLE1_FILTERS = 16


@dataclass(frozen=True)
class Plan:
    """The seeds, the epochs of every training run, and the rows of each table."""

    seeds: tuple[int, ...]
    epochs: int = FULL_EPOCHS
    quick: bool = False
    combos: tuple[tuple[str, str], ...] = tuple(TABLE1)  # Table I: (local, cloud)
    table1_filters: int = PAPER_TABLE1_FILTERS  # Table I: filters of each device's ConvP block
    filters: tuple[int, ...] = (1, 2, 4, 8)  # Fig. 9: filters of the device's ConvP block
    local_share: float = 0.75  # Fig. 9: the share of samples exiting locally
    drops: tuple[float | None, ...] = (None, 0.95, 0.9, 0.8)  # the exit-placement paper's drop
    strategies: tuple[str, ...] = ("separate", "joint")  # the hybrid-precision paper's Table II
    early_weight: float = 0.6  # the hybrid-precision paper's weight of the early exit
    placement_path: tuple[int, ...] = (16, 32, 64, 64)  # exit placement: filters above devices
    placement_positions: tuple[int, ...] = (1, 2, 3)
    placement_threshold: float = 0.3
    coverages: tuple[float, ...] = COVERAGES  # the learned-router paper

    @classmethod
    def quick_plan(cls, seeds: tuple[int, ...], epochs: int | None = None, **rest: Any) -> Plan:
        """The CI version: the first seed, 3 epochs, fewer rows where a table has many
        (Table I keeps all 9 pairs); `rest`: other fields, as given."""
        return cls(
            **rest,
            seeds=seeds[:1],
            epochs=epochs or QUICK_EPOCHS,
            quick=True,
            filters=(2, 4),
            drops=(None, 0.9),
            placement_path=(16, 32, 64),
            placement_positions=(1, 2),
            coverages=(0.7, 0.9),
        )

    def describe(self) -> dict[str, Any]:
        """The plan as JSON values, for results.json."""
        return {
            "seeds": list(self.seeds),
            "epochs": self.epochs,
            "quick": self.quick,
            "table1_filters": self.table1_filters,
            "filters": list(self.filters),
            "coverages": list(self.coverages),
            "drops": list(self.drops),
            "placement_path": list(self.placement_path),
            "placement_positions": list(self.placement_positions),
        }


@dataclass
class Context:
    """What every section gets: the runs (cached), the plan, and `base`, the paper's
    configuration (MP-CC, 4 filters per device; `ddnn train`'s defaults) fitted to the data,
    with the plan's epochs."""

    runs: Runs
    plan: Plan
    base: DDNNConfig
    dataset: MultiViewData
    our_data: str
    log: Callable[[str], None] = field(default=lambda line: None)

    def config(self, seed: int, changes: Mapping[str, Any] | None = None) -> DDNNConfig:
        """`base` with this training seed and `changes` (dotted keys, values as a config
        file would hold them)."""
        tree = self.base.model_dump(mode="json")
        tree["train"]["seed"] = seed
        for dotted, value in (changes or {}).items():
            *parents, last = dotted.split(".")
            node = tree
            for name in parents:
                node = node[name]
            node[last] = value
        return validate_config(tree, source="report config")

    def base_model(self, seed: int) -> tuple[DDNN, DDNNConfig, dict[str, Any]]:
        """The paper's configuration trained on this seed: the model of Table II, Figs. 8
        and 10, the trade-off curve, the drop threshold and the router study."""
        return self.runs.model(self.config(seed), "MP-CC, the paper's configuration")

    @property
    def test(self) -> MultiViewData:
        return self.runs.parts.test
