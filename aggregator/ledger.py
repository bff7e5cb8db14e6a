"""The aggregator's ledger: which sample ids it has decided, kept in a file so that a
restarted aggregator decides none of them a second time.

Ids are kept as ranges of consecutive ids (a trigger counts up, so a whole run is one
range; a gap, a replay or a forged id adds one). What a forged id far ahead of the others
can do is therefore small: it adds a range of one, and moves no window that real samples
must stay within. The number of ranges is bounded (`max_ranges`): beyond it the two lowest
ranges become one, so the old ids between them count as decided too (never decided twice;
at worst an old sample never decided at all). Only a flood of scattered ids, tens of
thousands of decided samples from a compromised trigger, could so cover real ones.

The file is a header and then one little-endian int64 pair (first, last id) per range,
rewritten whole when the decision outbox (aggregator/outbox.py), whose journal holds the
ids decided since, is compacted.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import struct
from pathlib import Path
from typing import IO

import numpy as np

from ddnn.core.errors import DDNNError

MAGIC = b"DDNNIDS2"  # format name and version
RECORD = struct.Struct("<qq")


class Ledger:
    """Decided ids as ranges, at most `max_ranges` of them, saved in `path` (None: memory
    only, as the in-process tests run)."""

    def __init__(self, path: Path | None, max_ranges: int) -> None:
        self.path = path
        self.max_ranges = max_ranges
        self._starts: list[int] = []  # sorted
        self._ends: list[int] = []  # _ends[i] closes the range opened by _starts[i]
        if path is not None:
            for first, last in self._load(path):
                self._insert(int(first), int(last))

    # -- the ranges ------------------------------------------------------------------------
    def __contains__(self, sample: object) -> bool:
        if not isinstance(sample, int):
            return False
        i = bisect.bisect_right(self._starts, sample) - 1
        return i >= 0 and sample <= self._ends[i]

    def __len__(self) -> int:
        """How many ranges."""
        return len(self._starts)

    def add(self, sample: int) -> None:
        """Record `sample` as decided (in memory: `save` writes the file)."""
        if sample not in self:
            self._insert(sample, sample)

    def _insert(self, first: int, last: int) -> None:
        """Add the range first..last, merged with the ranges it touches."""
        i = bisect.bisect_left(self._starts, first)
        if i > 0 and self._ends[i - 1] >= first - 1:  # touches the range before
            i -= 1
            first = self._starts[i]
        j = i
        while j < len(self._starts) and self._starts[j] <= last + 1:  # and those after
            last = max(last, self._ends[j])
            j += 1
        self._starts[i:j] = [first]
        self._ends[i:j] = [last]
        while len(self._starts) > self.max_ranges:  # the two lowest become one
            self._starts.pop(1)
            self._ends[0] = self._ends.pop(1)

    # -- the file --------------------------------------------------------------------------
    def _load(self, path: Path) -> np.ndarray:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return np.empty((0, 2), np.int64)
        except OSError as e:
            raise DDNNError(f"cannot read the aggregator's ledger {path}: {e.strerror}") from None
        if not data.startswith(MAGIC):
            raise DDNNError(
                f"{path} is not an aggregator ledger (no {MAGIC.decode()} header): move it "
                "away, or give --state another folder"
            )
        body = data[len(MAGIC) :]
        whole = len(body) - len(body) % RECORD.size
        return np.frombuffer(body[:whole], "<i8").reshape(-1, 2)

    def save(self, sync: bool = False) -> None:
        """Write the ranges to the file, atomically (a kill mid-way leaves the old file);
        `sync`: so that they survive a lost machine too (fsync)."""
        if self.path is None:
            return
        ranges = np.array([self._starts, self._ends], "<i8").T
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(MAGIC + ranges.tobytes())
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise DDNNError(
                f"cannot write the aggregator's ledger {self.path}: {e.strerror} (give --state "
                "a folder it may write)"
            ) from None


def lock_state(path: Path) -> IO[bytes]:
    """Hold `path` locked while the process lives: two aggregators on one state folder
    would each decide every sample, and interleave their journals."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "ab")  # noqa: SIM115 - held for the process's life
    except OSError as e:
        raise DDNNError(f"cannot write the aggregator's state {path}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise DDNNError(
            f"another aggregator holds the state in {path.parent} ({path.name} is locked): "
            "stop it first, or give --state another folder"
        ) from None
    return lock
