"""What every table of `ddnn report` is made of: per-seed rows folded into mean and spread,
and the table document the renderers (render.py, figures.py) and results.json
share.

A table is a dict: `id`, `title`, `source` (the paper and where in it), `paper_data` and
`our_data` (what each side ran on), `key` (the columns naming a row), `measures` (our
columns), and `rows`. A row holds its key values, each measure as
{mean, std, min, max, seeds: [value per seed]} (from `over_seeds`, as `ddnn results` folds
its seeds) or a plain value where there is one run, and `paper`: the paper's figures for the
row, by column name (a "-" where the paper has none for that row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ddnn.ops.report.results import over_seeds


def spread(values: Sequence[Any]) -> dict[str, Any] | None:
    """Mean, standard deviation, min and max of the numbers among `values` (one per seed),
    and the values themselves; None where no seed has a number."""
    numbers = [{"v": v} for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not numbers:
        return None
    return {**over_seeds(numbers)["v"], "seeds": list(values)}


def fold(
    per_seed: Sequence[Sequence[dict[str, Any]]], key: Sequence[str], measures: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of several seeds (the same rows in the same order for each) as one row each:
    the key columns of the first seed's, each measure's spread over the seeds."""
    rows = []
    for aligned in zip(*per_seed, strict=True):
        row = {k: aligned[0].get(k) for k in key}
        row |= {m: spread([r.get(m) for r in aligned]) for m in measures}
        rows.append(row)
    return rows


def table(
    id: str,
    title: str,
    source: str,
    paper_data: str,
    our_data: str,
    key: Sequence[str],
    measures: Sequence[str],
    rows: list[dict[str, Any]],
    note: str = "",
) -> dict[str, Any]:
    """A table document (module doc); every row gets a `paper` entry, empty if not given."""
    for row in rows:
        row.setdefault("paper", {})
    return {
        "id": id,
        "title": title,
        "source": source,
        "paper_data": paper_data,
        "our_data": our_data,
        "key": list(key),
        "measures": list(measures),
        "rows": rows,
        "note": note,
    }


def mean_of(cell: Any) -> float | None:
    """A cell's number: the mean over seeds, or the value itself."""
    if isinstance(cell, dict):
        return cell.get("mean")
    return cell if isinstance(cell, int | float) else None


def std_of(cell: Any) -> float:
    """A cell's spread over seeds (0 for one value)."""
    return float(cell.get("std") or 0.0) if isinstance(cell, dict) else 0.0
