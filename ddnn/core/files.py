"""Files written whole or not at all, and arrays read without unpickling.

Every layer writes its files (data sets, model files, export manifests) through `replaced`
and reads `.npz` arrays (data sets, export artifacts) through `read_npz`. A path that cannot
be written (a folder where a file goes, a file where a folder goes, a read-only place) is a
`DDNNError` naming it (`make_folder`, `writable_file`, `replaced`), which the command line
prints as one line: never a traceback, and, checked before the work, no work lost.
"""

from __future__ import annotations

import os
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from ddnn.core.errors import DDNNError


def reason(e: OSError) -> str:
    """Why a file operation failed, in words that point at the path's problem (the system's
    "Not a directory" means a file stands where the path needs a folder)."""
    if isinstance(e, NotADirectoryError):
        return "a file stands where its path needs a folder"
    if isinstance(e, FileExistsError):
        return f"{e.filename} is a file, not a folder" if e.filename else "it exists"
    if isinstance(e, IsADirectoryError):
        return "it is a folder, not a file"
    return e.strerror or str(e)


def _not_a_file(path: Path) -> str:
    """What stands at `path` instead of a regular file."""
    if path.is_dir():
        return "it is a folder, not a file"
    return "it is not a regular file (a device or a pipe): it is never replaced"


def make_folder(path: Path | str, what: str = "folder") -> Path:
    """`path` as a folder, made with its parents if need be; a `DDNNError` naming it (`what`
    it is for) when it cannot be: a file in the way, a read-only place."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DDNNError(f"cannot create the {what} {path}: {reason(e)}") from None
    return path


def writable_file(path: Path | str, what: str = "file", stream: bool = False) -> Path:
    """`path`, once it is known that a file can be written there (its folder made, a test
    file made and removed in it): for a command to check its output before the work that
    fills it, so that a bad path costs no training run. A `DDNNError` names the problem.
    `stream`: the file is written as a stream, not `replaced` whole, so a device or pipe
    (/dev/stdout) will do too."""
    path = Path(path)
    if path.is_dir() or (not stream and path.exists() and not path.is_file()):
        raise DDNNError(f"cannot write the {what} {path}: {_not_a_file(path)}")
    folder = make_folder(path.parent, f"folder of the {what}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DDNNError(f"cannot write the {what} {path}: {reason(e)}") from None
    return path


@contextmanager
def replaced(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to `path` (its name, this process and thread, `suffix`) for the
    block to write; when the block ends it replaces `path` in one step, so a killed run
    leaves the old file (or none), never half a file, and two processes writing the same
    file at once (two first uses of a cache) each replace it whole. A block that raises
    leaves `path` as it was; a path that cannot be written (a folder, a missing or read-only
    folder) is a `DDNNError` naming it, not the temporary file."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise DDNNError(f"cannot write {path}: {_not_a_file(path)}")
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}{suffix}")
    try:
        yield tmp
        tmp.replace(path)
    except OSError as e:
        raise DDNNError(f"cannot write {path}: {reason(e)}") from None
    finally:
        with suppress(OSError):  # no folder to remove it from: then there is no file
            tmp.unlink(missing_ok=True)


def read_npz(
    path: Path,
    keys: Sequence[str] | None = None,
    error: type[DDNNError] = DDNNError,
    what: str = "file",
) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file (those named by `keys`, or all), never unpickling: object
    arrays are refused. Anything unreadable raises `error` naming the file (`what` it is)
    and the problem."""
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise error(f"{path} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys or () if k not in z.files]
            if missing:
                raise error(f"{path}: missing array(s) {missing}; it holds {z.files}")
            return {k: z[k] for k in (z.files if keys is None else keys)}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise error(f"{path} is not a readable .npz file ({e})") from None
    except ValueError:  # object arrays need unpickling, which we refuse
        raise error(f"{path} holds object arrays; only numeric arrays are read") from None
