"""`ddnn asyncapi`: the wire protocol as an AsyncAPI 3 document (ddnn/live/asyncapi.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from ddnn.cli.app import app
from ddnn.cli.options import JsonFlag
from ddnn.cli.render import err, show
from ddnn.core.errors import DDNNError
from ddnn.core.files import reason
from ddnn.live.asyncapi import document


def render(as_json: bool = False) -> str:
    """The document as YAML (or JSON), as `docs/asyncapi.yaml` holds it."""
    if as_json:
        return json.dumps(document(), indent=2) + "\n"
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


@app.command()
def asyncapi(
    out_path: Annotated[
        Path | None, typer.Option("--out", help="write it here instead of to stdout")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print the wire protocol as an AsyncAPI 3 document (MQTT binding): every topic, who
    sends and who receives on it, QoS, retain, the last will, each payload's JSON Schema.
    Generated from the code the services run; docs/asyncapi.yaml is its output."""
    if out_path is not None:
        try:
            out_path.write_text(render(as_json))
        except OSError as e:
            raise DDNNError(f"cannot write {out_path}: {reason(e)}") from None
        err.print(f"wrote {out_path}")
    elif as_json:
        show(document(), as_json=True)  # stdout holds the JSON document alone
    else:
        typer.echo(render(), nl=False)
