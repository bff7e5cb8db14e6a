"""The `ddnn` command line.

Every command prints human-readable progress and tables by default and one JSON document on
stdout with `--json` (ddnn/cli/render.py). User mistakes (a missing file, a bad config, an
unknown device, a path that cannot be read or written) end in one line `error: ...` and
exit status 2, never a traceback; an output path is checked before the work that fills it. The
commands live by group in ddnn/cli/ (data.py, model.py, live.py, monitor.py, ...), each
module imported when one of its commands runs (`COMMANDS`, ddnn/cli/app.py); the live
services add theirs through the `ddnn.services` entry points (pyproject.toml).
"""

from __future__ import annotations

import sys

from ddnn.cli.app import app
from ddnn.core.errors import DDNNError
from ddnn.core.files import reason


def main() -> None:
    try:
        app()
    except (DDNNError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
    except OSError as e:  # a path no command checked: still its name and why, in one line
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"error: {where}{reason(e)}\n")
        raise SystemExit(2) from None
