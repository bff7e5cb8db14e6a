"""How every command shows its result, in one place: `show(document, as_json, blocks)` prints
the document as one JSON document on stdout with `--json`, and then nothing else on stdout
(see `json_mode`), else the blocks (tables and lines) on the terminal. Progress goes to
stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ddnn.core.config import EXIT_ORDER

out = Console()
err = Console(stderr=True)
_json_stdout: TextIO | None = None  # the real stdout, while a --json command runs


def json_mode(on: bool) -> bool:
    """`--json` promises stdout holds one JSON document and nothing else. So, as soon as the
    flag is parsed, the process's file descriptor 1 is pointed at stderr: whatever else this
    process or a child it starts writes to stdout (a table, a library's print, a subprocess
    with inherited stdout) lands on stderr, and only `show` writes to the real stdout.
    Done on the descriptor, not on `sys.stdout`, because child processes inherit only that."""
    global _json_stdout
    if on and _json_stdout is None:
        sys.stdout.flush()
        _json_stdout = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
    return on


@dataclass
class Rows:
    """A table: a title and rows of the same keys (the columns); None shows as "-"."""

    title: str
    rows: list[dict[str, Any]]


Block = Rows | str  # a table, or a line of text


def show(document: Any, as_json: bool, blocks: Iterable[Block] = ()) -> None:
    """A command's result: `document` as one JSON document on stdout with --json, else the
    `blocks` for a person (tables and lines)."""
    if as_json:
        stream = _json_stdout or sys.stdout
        stream.write(json.dumps(document, indent=2) + "\n")
        stream.flush()
        return
    for block in blocks:
        if isinstance(block, Rows):
            _print_table(block)
        else:
            out.print(block, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int, quiet: bool) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields `advance(n=1, **fields)`."""
    if quiet:
        yield lambda *a, **k: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, completed: int | None = None, info: str = "") -> None:
            if completed is not None:
                bar.update(task, completed=completed, info=info)
            else:
                bar.update(task, advance=n, info=info)

        yield advance


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _print_table(table: Rows) -> None:
    if not table.rows:
        return
    shown = Table(title=table.title)
    for key in table.rows[0]:
        shown.add_column(key, justify="right")
    for row in table.rows:
        shown.add_row(*(_fmt(v) for v in row.values()))
    out.print(shown)


def report_blocks(report: dict[str, Any]) -> list[Block]:
    """An evaluation report (`ddnn.nn.evaluate.evaluate`): accuracy and exits per tier, bytes
    per device, thresholds."""
    tiers = [*EXIT_ORDER, "overall"]
    rows = [
        {"": "accuracy %", **{t: report["accuracy"][t] for t in tiers}},
        {"": "exit %", **{t: report["exit_fraction"].get(t) for t in tiers}},
    ]
    b = report["bytes_per_device"]
    return [
        Rows(f"{report['samples']} samples, devices {report['present_devices']}", rows),
        f"bytes per device per sample: formula (1) {b['formula']}, measured {b['measured']}, "
        f"raw offload {b['raw']} ({b['raw_over_measured']}x less than raw)",
        f"thresholds: {report['threshold']} ({report['policy']})",
        *_coverage_line(report),
        *_energy_line(report.get("energy_uj")),
    ]


def _coverage_line(report: dict[str, Any]) -> list[Block]:
    if not report.get("drop"):
        return []
    c = report["coverage"]
    return [
        f"drop thresholds {report['drop']}: abstained {report['abstained']} %; answered "
        f"{c['answered']} %, {c['accuracy']} % of them right"
    ]


def _energy_line(e: dict[str, Any] | None) -> list[Block]:
    if e is None:
        return []
    return [
        f"energy per sample (the hybrid-precision paper's Table I): {e['total']} uJ "
        f"(local {e['local']}, edge "
        f"{e['edge']}, cloud {e['cloud']}); float32 all-cloud reference {e['float_reference']} "
        f"uJ, {e['reduction']}x more"
    ]
