"""Files written whole or not at all, and arrays read without unpickling.

Every layer writes its files (data sets, model files, export manifests) through `replaced`
and reads `.npz` arrays (data sets, export artifacts) through `read_npz`.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ddnn.core.errors import DDNNError


@contextmanager
def replaced(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to `path` (its name, this process and thread, `suffix`) for the
    block to write; when the block ends it replaces `path` in one step, so a killed run
    leaves the old file (or none), never half a file, and two processes writing the same
    file at once (two first uses of a cache) each replace it whole. A block that raises
    leaves `path` as it was."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}{suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
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
