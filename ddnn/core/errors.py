"""The errors a user can cause, each with a message that names the problem.

The CLI prints these as one line and exits with status 2; anything else is a bug.
"""

from __future__ import annotations

from pydantic import ValidationError


class DDNNError(Exception):
    """Base class of every user-facing error."""


class ConfigError(DDNNError):
    """A configuration file or override is missing, unreadable or invalid."""


class DataError(DDNNError):
    """A data file is missing, unreadable, or not in the expected format."""


class ModelFileError(DDNNError):
    """A model file is missing, corrupt, or of an unknown version."""


def problems(error: ValidationError, limit: int | None = None) -> str:
    """What pydantic found wrong, as `field.path: message` items joined by "; " (the first
    `limit` of them): the one way every validated input (config, manifest, wire message,
    broker setting) names its problem."""
    items = error.errors()[:limit]
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in items)
