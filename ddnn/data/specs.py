"""Data SPECs: where a data set comes from, by name, and the cached synthetic set.

- `synth`: the default synthetic multi-camera set (ddnn/data/synth/), generated once and
  cached under `data_dir()`; `synth:n=N,seed=S` another size or seed of it (cached alike);
- `mvmc:PATH`: any file in the MVMC format;
- `tiles:PATH`: an `.npz` of images and labels, each image cut into a `--grid` of views.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ddnn.core.errors import DataError
from ddnn.data import synth
from ddnn.data.multiview import (
    MultiViewData,
    from_mvmc_arrays,
    load_mvmc,
    load_tiles,
    save_mvmc,
)

DEFAULT_SYNTH_SAMPLES = 2000
DEFAULT_SYNTH_SEED = 0


def data_dir() -> Path:
    """Where generated data is cached: $DDNN_DATA_DIR, else the checkout's `datasets/`
    folder, else ~/.cache/ddnn."""
    if env := os.environ.get("DDNN_DATA_DIR"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "datasets"
    if checkout.is_dir():
        return checkout
    return Path.home() / ".cache" / "ddnn"


def synthetic_cache_path(
    n_samples: int = DEFAULT_SYNTH_SAMPLES, seed: int = DEFAULT_SYNTH_SEED
) -> Path:
    return data_dir() / "synth" / f"synth-v{synth.VERSION}-n{n_samples}-s{seed}.npz"


def synthetic(
    n_samples: int = DEFAULT_SYNTH_SAMPLES,
    seed: int = DEFAULT_SYNTH_SEED,
    progress: Callable[[int], None] | None = None,
) -> MultiViewData:
    """The synthetic multi-camera set, generated on first use and cached under data_dir()
    (keyed by the generator's version, so a changed generator never serves stale data)."""
    path = synthetic_cache_path(n_samples, seed)
    if path.exists():
        data = load_mvmc(path)
    else:
        x, y = synth.synthesize(n_samples, seed=seed, progress=progress)
        # Uncompressed: every device process and most commands read it on start, and
        # inflating the default set's 147 MB of float32 cost ~1 s of CPU each time, against
        # ~0.1 s to read it raw (1.8x the disk space).
        save_mvmc(path, x, y, compressed=False)
        data = from_mvmc_arrays(x, y, name=f"mvmc:{path}")
    is_default = (n_samples, seed) == (DEFAULT_SYNTH_SAMPLES, DEFAULT_SYNTH_SEED)
    data.name = "synth" if is_default else f"synth:n={n_samples},seed={seed}"
    return data


def parse_synth(arg: str) -> tuple[int, int]:
    """The size and seed `synth:n=N,seed=S` names (either may be left out; `synth` alone is
    the default set). The world is the same for every seed (ddnn/data/synth/), so another
    seed is fresh data from the same distribution: a held-out set as large as wanted."""
    values = {"n": DEFAULT_SYNTH_SAMPLES, "seed": DEFAULT_SYNTH_SEED}
    for part in filter(None, (p.strip() for p in arg.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in values or not value.isdigit():
            raise DataError(f"synth takes n=N,seed=S (whole numbers), got {arg!r}")
        values[key] = int(value)
    if values["n"] < 1:
        raise DataError(f"synth needs at least one sample, got n={values['n']}")
    return values["n"], values["seed"]


def samples_to_generate(spec: str) -> int | None:
    """How many samples loading `spec` would first render: a synthetic set not yet cached
    (so that a command can show progress); None for anything else."""
    scheme, _, arg = spec.partition(":")
    if scheme != "synth":
        return None
    n, seed = parse_synth(arg)
    return None if synthetic_cache_path(n, seed).exists() else n


def parse_grid(text: str, what: str = "grid", example: str = "2x3") -> tuple[int, int]:
    """`AxB` as two positive integers: a grid's rows and columns, or (`what` = "size") an
    image's height and width."""
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        raise DataError(f"{what} must look like {example}, got {text!r}")
    return int(rows), int(cols)


def load_spec(
    spec: str, grid: str = "2x3", progress: Callable[[int], None] | None = None
) -> MultiViewData:
    """Load the data set a SPEC names (see the module docstring)."""
    scheme, _, arg = spec.partition(":")
    if scheme == "synth":
        return synthetic(*parse_synth(arg), progress=progress)
    if scheme == "mvmc" and arg:
        return load_mvmc(arg)
    if scheme == "tiles" and arg:
        return load_tiles(arg, parse_grid(grid))
    raise DataError(
        f"unknown data spec {spec!r}: use synth, synth:n=N,seed=S, mvmc:PATH or tiles:PATH"
    )


def absolute_spec(spec: str) -> str:
    """`spec` with the path of `mvmc:PATH` / `tiles:PATH` made absolute, for the metadata of
    a model file: the model's own data must be found again (by `ddnn eval`, `ddnn demo`, the
    devices) from whatever directory those run in."""
    scheme, sep, arg = spec.partition(":")
    if scheme in ("mvmc", "tiles") and sep and arg:
        return f"{scheme}:{Path(arg).expanduser().resolve()}"
    return spec


def trained_on(meta: Mapping[str, Any]) -> tuple[str, str]:
    """The data SPEC and grid a model was trained on, from its metadata (a model file's or
    an export manifest's); metadata without them means the default synthetic set."""
    return str(meta.get("data", "synth")), str(meta.get("grid", "2x3"))
