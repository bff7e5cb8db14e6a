"""report.md and report.html of `ddnn report`, both from results.json's content.

Both are made from one list of blocks (headings, lines, tables, images), so they say the
same thing: the markdown refers to the PNGs beside it, the HTML carries them inlined
(base64 data URIs) and stands alone. Every table's last columns are the paper's, headed
"paper: ...", and every table and figure names the paper and the data on both sides.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Grid:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    file: str
    alt: str


Block = Heading | str | Grid | Image


def cell(value: Any) -> str:
    """A cell: mean ± spread over seeds (the mean alone for one seed), a number, text."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        mean, seeds = value.get("mean"), value.get("seeds") or []
        if mean is None:
            return "-"
        if len(seeds) > 1:
            return f"{mean:.2f} ± {value.get('std', 0.0):.2f}"
        return f"{mean:.2f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def grid(t: dict[str, Any]) -> Grid:
    """A table's key columns, our measures, then the paper's columns."""
    paper_columns: list[str] = []
    for row in t["rows"]:
        paper_columns += [c for c in row["paper"] if c not in paper_columns]
    paper_columns = paper_columns or ["paper"]
    header = [*t["key"], *t["measures"], *(f"paper: {c}" for c in paper_columns)]
    rows = [
        [
            *(cell(row.get(k)) for k in t["key"]),
            *(cell(row.get(m)) for m in t["measures"]),
            *(cell(row["paper"].get(c, "-")) for c in paper_columns),
        ]
        for row in t["rows"]
    ]
    return Grid(header, rows)


def blocks(results: dict[str, Any]) -> list[Block]:
    """The whole report, in order."""
    data, plan = results["data"], results["plan"]
    seeds = ", ".join(map(str, plan["seeds"]))
    spread = (
        "the mean ± standard deviation over the seeds"
        if len(plan["seeds"]) > 1
        else "from one seed (no spread)"
    )
    runs = results["runs"]
    out: list[Block] = [
        Heading(1, results["title"]),
        f"Our data: {data['ours']}. The DDNN paper's data: {data['paper']}; the other papers "
        "ran on CIFAR-10 and ImageNet. The same questions, not the same experiments: the "
        "numbers compare in shape, not to the point.",
        f"Seeds {seeds}; {plan['epochs']} epochs per training run"
        f"{' (quick: fewer rows)' if plan['quick'] else ''}; ours are {spread}. "
        f"{runs['trained']} runs trained in this invocation, {runs['found']} found in the "
        f"cache {runs['cache']}; {results['seconds']:.0f} s in all.",
    ]
    figures = results.get("figures", {})
    for section in results["sections"]:
        out.append(Heading(2, section["title"]))
        if not section["tables"]:
            out.append('Nothing here this time (see "Not in this report").')
        for id in section["tables"]:
            t = results["tables"][id]
            out += [
                Heading(3, t["title"]),
                f"Paper: {t['source']}; its data: {t['paper_data']}. Ours: {t['our_data']}.",
                grid(t),
            ]
            if t.get("note"):
                out.append(t["note"])
            if id in figures:
                out.append(Image(figures[id], f"{t['title']} (ours against the paper)"))
    out += [Heading(2, "Not in this report"), *(f"- {m}" for m in results["missing"])]
    return out


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for b in blocks(results):
        if isinstance(b, Heading):
            lines += [f"{'#' * b.level} {b.text}", ""]
        elif isinstance(b, Grid):
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in b.rows]
            lines.append("")
        elif isinstance(b, Image):
            lines += [f"![{b.alt}]({b.file})", ""]
        else:
            lines += [b, ""] if not b.startswith("- ") else [b]
    return "\n".join(lines).rstrip() + "\n"


STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 6px;"
    "text-align:right}th{background:#eee}th.paper,td.paper{background:#f6f3e8}"
    "img{max-width:100%}"
)


def html_page(results: dict[str, Any], folder: Path) -> str:
    """One HTML file with the PNGs in `folder` inlined as data URIs."""
    e = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(results['title'])}"
        f"</title><style>{STYLE}</style></head><body>"
    ]
    items: list[str] = []
    for b in blocks(results):
        if isinstance(b, str) and b.startswith("- "):
            items.append(f"<li>{e(b[2:])}</li>")
            continue
        if items:
            parts.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Grid):
            paper = [h.startswith("paper") for h in b.header]
            head = "".join(
                f"<th{' class=paper' if p else ''}>{e(h)}</th>"
                for h, p in zip(b.header, paper, strict=True)
            )
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td{' class=paper' if p else ''}>{e(c)}</td>"
                    for c, p in zip(r, paper, strict=True)
                )
                + "</tr>"
                for r in b.rows
            )
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif isinstance(b, Image):
            data = base64.b64encode((folder / b.file).read_bytes()).decode()
            parts.append(f"<p><img alt='{e(b.alt)}' src='data:image/png;base64,{data}'></p>")
        else:
            parts.append(f"<p>{e(b)}</p>")
    if items:
        parts.append("<ul>" + "".join(items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
