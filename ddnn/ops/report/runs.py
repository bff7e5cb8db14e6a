"""The training runs behind `ddnn report`, each done once: a model file (or, where the run's
code hands back only its measures, a JSON document) in the report's cache, keyed by the
config, the seed and the data it was trained on.

A rerun of the report, or another section that asks for the same config (Table I's MP-CC row is the
model Table II sweeps; the hybrid-precision paper's one-early-exit candidate is the same model
again), finds it there instead of training again. The key hashes the whole config as JSON (every
field, so a changed default trains anew), the seed, and a digest of the data's arrays (a regenerated
data set is other data). Model files are the project's own (ddnn/nn/checkpoint.py), with the
metadata `ddnn train` writes, so `ddnn eval`, `ddnn sweep` and `ddnn demo --model` take them as they
are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ddnn.core.config import DDNNConfig
from ddnn.core.files import replaced
from ddnn.data import MultiViewData, Splits, absolute_spec, split
from ddnn.nn.checkpoint import load_model, save_model
from ddnn.nn.model import DDNN
from ddnn.nn.train import EpochCallback, fit_and_calibrate, training_stages

# progress(description, total) -> a context yielding advance(): one bar per training run
Progress = Callable[[str, int], AbstractContextManager[Callable[..., None]]]


def data_digest(data: MultiViewData) -> str:
    """A digest of the arrays of a data set: what a cached run was trained and tested on."""
    h = hashlib.sha256()
    for array in (data.x, data.labels, data.view_labels):
        h.update(str(array.shape).encode())
        h.update(array.tobytes())
    h.update(json.dumps(list(data.classes)).encode())
    return h.hexdigest()


def run_key(kind: str, cfg: DDNNConfig, data: str, extra: Any = None) -> str:
    """The cache key of one run: sha256 of the config as JSON, the seed, the data's digest,
    the kind of run and anything else its result depends on (`extra`). A setting that
    cannot change the run is left out: `train.or_balance` of a model with no OR."""
    config = cfg.model_dump(mode="json")
    if not cfg.model.has_or:
        del config["train"]["or_balance"]
    text = json.dumps(
        {
            "kind": kind,
            "config": config,
            "seed": cfg.train.seed,
            "data": data,
            "extra": extra,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Runs:
    """Training runs on one data set, cached under `cache`; a progress bar per run that
    trains."""

    def __init__(
        self,
        dataset: MultiViewData,
        spec: str,
        grid: str,
        base: DDNNConfig,
        cache: Path,
        progress: Progress,
    ) -> None:
        self.spec, self.grid, self.cache, self.progress = spec, grid, cache, progress
        self.parts: Splits = split(dataset, base.train)
        self.digest = data_digest(dataset)
        # the cache files of the runs trained here, and of those found there from before
        self.trained: set[str] = set()
        self.found: set[str] = set()
        cache.mkdir(parents=True, exist_ok=True)

    def model_path(self, cfg: DDNNConfig, label: str) -> Path:
        """The model file of `cfg`, trained and calibrated as `ddnn train` does (thresholds
        picked on the validation part) unless the cache has it."""
        path = self.cache / f"{run_key('model', cfg, self.digest)}.pt"
        if path.exists():
            self._found(path)
            return path
        epochs = len(training_stages(cfg)) * cfg.train.epochs
        with self.progress(f"{label} (seed {cfg.train.seed})", epochs) as advance:
            result, picked = fit_and_calibrate(self.parts, cfg, lambda e, s: advance())
        meta = {
            "data": absolute_spec(self.spec),
            "grid": self.grid,
            "train_seconds": round(result.seconds, 2),
            "final_epoch": result.history[-1],
            "calibrated_on": "validation" if picked else None,
            "thresholds": picked,
            "report_label": label,
        }
        save_model(path, result.model, result.config, meta)
        self.trained.add(path.name)
        return path

    def _found(self, path: Path) -> None:
        if path.name not in self.trained:
            self.found.add(path.name)

    def model(self, cfg: DDNNConfig, label: str) -> tuple[DDNN, DDNNConfig, dict[str, Any]]:
        """The trained model of `cfg` (see `model_path`), its calibrated config and metadata."""
        return load_model(self.model_path(cfg, label))

    def measured(
        self,
        kind: str,
        cfg: DDNNConfig,
        label: str,
        epochs: int,
        compute: Callable[[EpochCallback], Any],
        extra: Any = None,
    ) -> Any:
        """The JSON result of a run whose code trains and measures in one go and hands back
        no model (`compute(on_epoch)`), cached by the same key; `epochs`: its length, for
        the progress bar (0: no bar, nothing trains)."""
        path = self.cache / f"{run_key(kind, cfg, self.digest, extra)}.json"
        if path.exists():
            self._found(path)
            return json.loads(path.read_text())
        if epochs:
            with self.progress(f"{label} (seed {cfg.train.seed})", epochs) as advance:
                result = compute(lambda e, s: advance())
            self.trained.add(path.name)
        else:
            result = compute(lambda e, s: None)
        with replaced(path) as tmp:
            tmp.write_text(json.dumps(result))
        return result
