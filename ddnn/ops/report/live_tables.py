"""The live system in `ddnn report`: the JSON of a `ddnn bench live --json` run and of a
`ddnn faults --json` run, given as files (the report does not start a deployment: those
take minutes and a broker), each summarized in a table beside what the DDNN paper measured
(offline accuracy and exits only; it ran no live system)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddnn.core.errors import DDNNError
from ddnn.ops.report import paper
from ddnn.ops.report.tables import table

NOT_MEASURED = "- (not measured)"


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A command's `--json` output saved to a file."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as e:
        raise DDNNError(f"cannot read {what} {path}: {e.strerror}") from None
    except ValueError as e:  # not JSON, or not even text (UnicodeDecodeError)
        raise DDNNError(f"{what} {path} is not JSON ({e})") from None
    if not isinstance(document, dict):
        raise DDNNError(f"{what} {path} is not a JSON object")
    return document


def _get(document: dict[str, Any], *path: str) -> Any:
    """document[path[0]][path[1]]..., or None where a level is missing."""
    node: Any = document
    for name in path:
        if not isinstance(node, dict):
            return None
        node = node.get(name)
    return node


def live_table(document: dict[str, Any], source: Path) -> dict[str, Any]:
    """`ddnn bench live --json`: accuracy and parity with offline evaluation, exits and
    latency per tier at camera pace, throughput flat out."""
    measures = [
        ("accuracy % (every live decision)", ("accuracy",), "97 (offline, T = 0.8)"),
        ("offline accuracy % of the same samples", ("parity", "offline_accuracy"), "97"),
        ("decisions differing from offline", ("parity", "mismatches"), NOT_MEASURED),
        ("local exit % (paced)", ("paced", "exit_fraction", "local"), 60.82),
        ("local exit latency p50 ms (paced)", ("paced", "latency_ms", "local", "p50"), None),
        ("local exit latency p99 ms (paced)", ("paced", "latency_ms", "local", "p99"), None),
        ("cloud exit latency p50 ms (paced)", ("paced", "latency_ms", "cloud", "p50"), None),
        ("cloud exit latency p99 ms (paced)", ("paced", "latency_ms", "cloud", "p99"), None),
        ("samples/s flat out", ("flat_out", "samples_per_second"), None),
        ("share of the bare pattern's ceiling", ("flat_out", "of_ceiling"), None),
        ("messages per sample", ("messages_per_sample",), None),
    ]
    rows = [
        {"measure": name, "value": _get(document, *path), "paper": {"figure": p or NOT_MEASURED}}
        for name, path, p in measures
    ]
    broker = _get(document, "broker", "kind") or "?"
    return table(
        "live",
        f"Live system (`ddnn bench live`, {broker} broker, {document.get('window')} in "
        f"flight): {source.name}",
        f"{paper.DDNN}, Section IV (offline only: it ran no live system)",
        paper.MVMC,
        str(document.get("data", "?")),
        ["measure"],
        ["value"],
        rows,
        f"From {source}; one run, not over seeds.",
    )


FAULT_MEASURES = ["samples", "decided", "lost", "accuracy", "offline_accuracy", "mismatches"]


def faults_table(document: dict[str, Any], source: Path) -> dict[str, Any]:
    """`ddnn faults --json`: per scenario and stretch, what was decided, lost, and how
    decisions compare with offline evaluation of the same samples."""
    rows = []
    for result in document.get("results") or []:
        for row in result.get("rows") or []:
            name = str(result.get("scenario", "?"))
            device_loss = any(w in name for w in ("device", "attrition", "dropout", "straggler"))
            figure = f"over {paper.FIG10_FLOOR:g} % with one device missing (Fig. 10)"
            rows.append(
                {
                    "scenario": name,
                    "stretch": row.get("scenario"),
                    **{m: row.get(m) for m in FAULT_MEASURES},
                    "paper": {"figure": figure if device_loss else "- (not in the paper)"},
                }
            )
    return table(
        "faults",
        f"Fault injection on the live system (`ddnn faults`): {source.name}",
        f"{paper.DDNN}, Fig. 10 (fault tolerance, offline)",
        paper.MVMC,
        "the model's own data (see the scenarios)",
        ["scenario", "stretch"],
        FAULT_MEASURES,
        rows,
        f"From {source}; one run, not over seeds.",
    )
