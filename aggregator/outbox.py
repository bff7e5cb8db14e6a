"""The aggregator's decision outbox: every decision is journaled before it is published and
forgotten only once the broker has acknowledged it (PUBACK), so that a killed aggregator
loses none. The design and its measured cost: docs/design/outbox.md.

The journal is a header and then records (kind, sample id, payload length, payload):
OPEN when a sample starts, DECIDED with the decision's payload, ACKED when the broker took
it. A restart reads it back: decisions never acknowledged are published again (a repeat, at
worst, of one the broker had), and samples opened but never decided are handed to the caller
to end explicitly. A record cut short by a kill is dropped on reading.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aggregator.ledger import Ledger
from ddnn.core.errors import DDNNError
from ddnn.live.service_cli import BATCH_SECONDS, Durability
from ddnn.live.transport import Receipt

MAGIC = b"DDNNOBX1"  # format name and version
HEADER = struct.Struct("<BqI")  # kind, sample id, payload length
OPEN, DECIDED, ACKED = 1, 2, 3
MAX_HELD = 100_000  # unacknowledged decisions kept in memory (the journal keeps all of them)
COMPACT_AFTER = 200_000  # records in the journal before it is rewritten with the live ones


@dataclass
class _Entry:
    payload: bytes
    receipt: Receipt | None = None  # None: not (yet) taken by the transport


Send = Callable[[bytes], Receipt | None]  # publishes one decision's payload


class Outbox:
    """Decisions from journal to broker. `path` None keeps nothing on disk (in-process tests).
    After construction, `restarted` holds the ids that were open when the last process
    stopped without deciding them."""

    def __init__(
        self, path: Path | None, durability: Durability, send: Send, ledger: Ledger
    ) -> None:
        self.path = path
        self.durability = durability
        self.send = send
        self.ledger = ledger  # the ids decided for good
        self.entries: OrderedDict[int, _Entry] = OrderedDict()  # unacknowledged, in order
        self.open: set[int] = set()
        self.unsent: deque[int] = deque()  # entries the transport dropped, to send again
        self.held: list[int] = []  # durability batch: journaled, waiting for the fsync
        self.held_since = 0.0
        self.counters = {"decisions_resent": 0, "decisions_lost": 0, "journal_syncs": 0}
        self._records = 0
        self._file: BinaryIO | None = None
        self.restarted: set[int] = set()
        if path is not None:
            self._file = self._recover(path)

    # -- the journal ---------------------------------------------------------------------
    def _recover(self, path: Path) -> BinaryIO:
        """Read what the last process left, and start a journal of the live records alone."""
        try:
            data = path.read_bytes() if path.exists() else MAGIC
        except OSError as e:
            raise DDNNError(f"cannot read the aggregator's outbox {path}: {e.strerror}") from None
        if not data.startswith(MAGIC):
            raise DDNNError(
                f"{path} is not an aggregator outbox (no {MAGIC.decode()} header): move it "
                "away, or give --state another folder"
            )
        at = len(MAGIC)
        while at + HEADER.size <= len(data):
            kind, sample, n = HEADER.unpack_from(data, at)
            if at + HEADER.size + n > len(data):
                break  # cut short by a kill
            payload = data[at + HEADER.size : at + HEADER.size + n]
            at += HEADER.size + n
            if kind == OPEN:
                self.restarted.add(sample)
            elif kind == DECIDED:
                self.restarted.discard(sample)
                self.entries[sample] = _Entry(payload)
                self.ledger.add(sample)
            elif kind == ACKED:
                self.entries.pop(sample, None)
                self.ledger.add(sample)
        self.unsent.extend(self.entries)  # sent again once connected (`pump`)
        self.ledger.save(sync=self.durability is not Durability.none)
        self._rewrite(path)
        return self._append(path)

    def _append(self, path: Path) -> BinaryIO:
        try:
            return open(path, "ab")  # noqa: SIM115 - held open for appends
        except OSError as e:
            raise DDNNError(
                f"cannot write the aggregator's outbox {path}: {e.strerror} (give --state a "
                "folder it may write)"
            ) from None

    def _rewrite(self, path: Path) -> None:
        """The journal anew with the live records only (atomically: a kill mid-way leaves
        the old file)."""
        parts = [MAGIC]
        parts += [HEADER.pack(OPEN, s, 0) for s in self.open | self.restarted]
        for sample, entry in self.entries.items():
            parts += [HEADER.pack(DECIDED, sample, len(entry.payload)), entry.payload]
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(b"".join(parts))
                if self.durability is not Durability.none:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise DDNNError(f"cannot write the aggregator's outbox {path}: {e.strerror}") from None
        self._records = len(self.open) + len(self.restarted) + len(self.entries)

    def _write(self, kind: int, sample: int, payload: bytes = b"") -> None:
        if self._file is not None:
            self._file.write(HEADER.pack(kind, sample, len(payload)) + payload)
            self._records += 1

    def _sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self.durability is not Durability.none:
                os.fsync(self._file.fileno())
                self.counters["journal_syncs"] += 1

    # -- what the aggregator calls -------------------------------------------------------
    def opened(self, sample: int) -> None:
        """A sample started: if this process dies before deciding it, the next one ends it."""
        self.open.add(sample)
        self._write(OPEN, sample)

    def put(self, sample: int, payload: bytes, now: float) -> None:
        """Journal the decision of `sample`, then publish it (durability batch: at the next
        `pump` after its fsync)."""
        self.open.discard(sample)
        self.restarted.discard(sample)
        self._write(DECIDED, sample, payload)
        self.ledger.add(sample)
        self.entries[sample] = _Entry(payload)
        if len(self.entries) > MAX_HELD:  # the journal still has it for the next start
            self.entries.popitem(last=False)
            self.counters["decisions_lost"] += 1
        if self.durability is Durability.batch:
            if not self.held:
                self.held_since = now
            self.held.append(sample)
            return
        if self.durability is Durability.decision:
            self._sync()
        elif self._file is not None:
            self._file.flush()  # into the kernel before the broker may have it
        self._send(sample)

    def _send(self, sample: int) -> bool:
        entry = self.entries.get(sample)
        if entry is None:
            return True  # acknowledged meanwhile, or dropped past MAX_HELD
        entry.receipt = self.send(entry.payload)
        if entry.receipt is None:
            self.unsent.append(sample)
        return entry.receipt is not None

    def pump(self, now: float) -> float | None:
        """Publish what is due, send again what the transport dropped (oldest first, until
        one is dropped again), journal the acknowledgements; returns when to be called next
        (None: nothing is waiting on time)."""
        if self.held and now - self.held_since >= BATCH_SECONDS:
            self._sync()
            held, self.held = self.held, []
            for sample in held:
                self._send(sample)
        while self.unsent:
            sample = self.unsent[0]
            entry = self.entries.get(sample)
            if entry is not None and entry.receipt is None:
                receipt = self.send(entry.payload)
                if receipt is None:
                    break
                entry.receipt = receipt
                self.counters["decisions_resent"] += 1
            self.unsent.popleft()
        self._acknowledged()
        if self._file is not None:
            self._file.flush()
            if self._records > COMPACT_AFTER and self.path is not None:
                self._compact()
        return self.held_since + BATCH_SECONDS if self.held else None

    def _acknowledged(self) -> None:
        """Journal the decisions the broker has, oldest first (one still in flight holds up
        those behind it until the next call)."""
        while self.entries:
            sample, entry = next(iter(self.entries.items()))
            if entry.receipt is None or not entry.receipt.is_published():
                return
            self._write(ACKED, sample)
            del self.entries[sample]

    def _compact(self) -> None:
        assert self.path is not None and self._file is not None
        self.ledger.save(sync=self.durability is not Durability.none)  # before the ids go
        self._file.close()
        self._rewrite(self.path)
        self._file = self._append(self.path)

    def unacknowledged(self) -> int:
        return len(self.entries)

    def close(self) -> None:
        """Flush the journal and save the ledger; the unacknowledged decisions stay in the
        journal, for the next start to publish again."""
        if self._file is not None:
            self._sync()
            self._file.close()
            self._file = None
            self.ledger.save(sync=self.durability is not Durability.none)
