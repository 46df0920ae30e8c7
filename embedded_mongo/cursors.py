"""Open cursors for getMore: each holds the rest of a result as an iterator.

A cursor keeps what is left of its command's ``maxTimeMS``, as mongod does for a
non-tailable cursor: the limit covers the time spent producing every batch
(not the time between getMores), so a ``find(...).max_time_ms(100)`` over a
huge collection stops after 100 ms of work however many getMores it takes. A
batch that runs out answers 50 (MaxTimeMSExpired) and closes the cursor."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bson import Int64
from bson.raw_bson import RawBSONDocument

from .errors import MongoError
from .operations import Interrupted, current

DEFAULT_FIRST_BATCH = 101
MAX_BATCH_BYTES = 16 * 1024 * 1024
IDLE_TIMEOUT = 600.0  # mongod's cursorTimeoutMillis default


def _size(item: Any) -> int:
    if isinstance(item, RawBSONDocument):
        return len(item.raw)
    return 256  # a projected or computed document: an estimate is enough


@dataclass
class Cursor:
    """What is left of one result."""

    id: int  # the cursor id the client uses in getMore
    namespace: str  # db.collection, echoed in every batch
    items: Iterator[Any]  # the documents not yet sent
    last_used: float = field(default_factory=time.monotonic)  # for the idle timeout
    pending: list[Any] = field(default_factory=list)  # one read-ahead document
    budget: float | None = None  # seconds of its command's maxTimeMS left for the batches to come (None: no limit)

    def batch(self, size: int) -> tuple[list[Any], bool]:
        """Up to ``size`` documents (0: as many as fit in 16 MiB); whether the
        result is exhausted."""
        self.last_used = time.monotonic()
        out: list[Any] = []
        total = 0
        while not size or len(out) < size:
            if self.pending:
                item = self.pending.pop()
            else:
                item = next(self.items, None)
                if item is None:
                    return out, True
            total += _size(item)
            if out and total > MAX_BATCH_BYTES:
                self.pending.append(item)
                return out, False
            out.append(item)
        if not self.pending:
            item = next(self.items, None)
            if item is None:
                return out, True
            self.pending.append(item)
        return out, False


class Cursors:
    """Every open cursor of the store, by id."""

    def __init__(self) -> None:
        self._open: dict[int, Cursor] = {}  # cursor id -> cursor

    def __len__(self) -> int:
        return len(self._open)

    def first_batch(self, namespace: str, items: Iterator[Any], batch_size: int | None,
                    single_batch: bool = False) -> dict[str, Any]:
        """The reply's ``cursor`` document; keeps the cursor open if more is left."""
        cursor = Cursor(0, namespace, items)
        size = DEFAULT_FIRST_BATCH if batch_size is None else batch_size
        docs, done = cursor.batch(size)
        if not done and not single_batch:
            cursor.id = random.getrandbits(62) | 1
            op = current()
            if op is not None and op.deadline is not None:
                cursor.budget = op.deadline - time.monotonic()
            self._open[cursor.id] = cursor
        return {"firstBatch": docs, "id": Int64(cursor.id), "ns": namespace}

    def get_more(self, cursor_id: int, namespace: str, batch_size: int | None) -> dict[str, Any]:
        cursor = self._open.get(cursor_id)
        if cursor is None:
            raise MongoError(43, f"cursor id {cursor_id} not found")
        if cursor.namespace != namespace:
            raise MongoError(13, f"Requested getMore on namespace '{namespace}', but cursor belongs to a "
                                 f"different namespace {cursor.namespace}")
        op = current()
        started = time.monotonic()
        if cursor.budget is not None:
            if cursor.budget <= 0:
                del self._open[cursor_id]
                raise Interrupted(50, "operation exceeded time limit")
            if op is not None:
                ends = started + cursor.budget
                op.deadline = ends if op.deadline is None else min(op.deadline, ends)
        try:
            docs, done = cursor.batch(batch_size or 0)
        except Exception:
            self._open.pop(cursor_id, None)  # a batch that failed (maxTimeMS, killOp) leaves nothing to resume
            raise
        if cursor.budget is not None:
            cursor.budget -= time.monotonic() - started
        if done:
            del self._open[cursor_id]
        return {"nextBatch": docs, "id": Int64(0 if done else cursor_id), "ns": namespace}

    def kill(self, cursor_ids: list[int]) -> tuple[list[int], list[int]]:
        killed: list[int] = []
        missing: list[int] = []
        for cursor_id in cursor_ids:
            (killed if self._open.pop(cursor_id, None) else missing).append(cursor_id)
        return killed, missing

    def reap(self, now: float | None = None) -> int:
        """Closes cursors idle for longer than the timeout."""
        now = time.monotonic() if now is None else now
        # a snapshot: readers add cursors meanwhile
        stale = [cid for cid, c in list(self._open.items()) if now - c.last_used > IDLE_TIMEOUT]
        for cid in stale:
            self._open.pop(cid, None)
        return len(stale)
