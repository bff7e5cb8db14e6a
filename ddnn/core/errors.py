"""The errors a user can cause, each with a message that names the problem.

The CLI prints these as one line and exits with status 2; anything else is a bug.
"""


class DDNNError(Exception):
    """Base class of every user-facing error."""


class ConfigError(DDNNError):
    """A configuration file or override is missing, unreadable or invalid."""


class DataError(DDNNError):
    """A data file is missing, unreadable, or not in the expected format."""


class ModelFileError(DDNNError):
    """A model file is missing, corrupt, or of an unknown version."""
