"""Data: multi-view data sets (the MVMC format, tiled images, the synthetic generator) as
`MultiViewData`, and the train / validation / test split every command shares. NumPy and
OpenCV only; the public names are re-exported here."""

from ddnn.data.multiview import (
    MVMC_CLASSES,
    MultiViewData,
    Splits,
    check_fits,
    check_trainable,
    cut_tiles,
    from_mvmc_arrays,
    load_mvmc,
    load_tiles,
    part_rows,
    sample_labels,
    save_mvmc,
    split,
)
from ddnn.data.specs import (
    DEFAULT_SYNTH_SAMPLES,
    DEFAULT_SYNTH_SEED,
    absolute_spec,
    data_dir,
    load_spec,
    parse_grid,
    parse_synth,
    samples_to_generate,
    synthetic,
    synthetic_cache_path,
    trained_on,
)

__all__ = [
    "DEFAULT_SYNTH_SAMPLES",
    "DEFAULT_SYNTH_SEED",
    "MVMC_CLASSES",
    "MultiViewData",
    "Splits",
    "absolute_spec",
    "check_fits",
    "check_trainable",
    "cut_tiles",
    "data_dir",
    "from_mvmc_arrays",
    "load_mvmc",
    "load_spec",
    "load_tiles",
    "part_rows",
    "parse_grid",
    "parse_synth",
    "samples_to_generate",
    "sample_labels",
    "save_mvmc",
    "split",
    "synthetic",
    "synthetic_cache_path",
    "trained_on",
]
