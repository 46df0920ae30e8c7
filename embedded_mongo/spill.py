"""Blocking stages within a memory limit: what does not fit goes to disk.

A blocking stage (a sort without an index, ``$group``) keeps its state in memory
up to the operation's limit (100 MiB by default, ``--blocking-memory-limit``), as
mongod does. Past it, with ``allowDiskUse`` (the default, as mongod 7.0's
``allowDiskUseByDefault``), the state moves to a private temporary SQLite
database (in the system's temporary directory, deleted when the stage is done)
and SQLite's own external merge sort orders it; with ``allowDiskUse: false`` the
stage fails with ``QueryExceededMemoryLimitNoDiskUseAllowed`` (292).
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from . import keys
from .errors import MongoError
from .operations import checkpoint, current

T = TypeVar("T")
DEFAULT_LIMIT = 100 * 1024 * 1024  # mongod's internalQueryMaxBlockingSortMemoryUsageBytes
PYTHON_OVERHEAD = 3  # bytes of Python objects per byte of BSON, roughly
_ROW_OVERHEAD = 120  # bytes a buffered entry costs besides its payload
_FETCH = 256  # rows read from the spill at a time
_INVERT = bytes(255 - b for b in range(256))  # complements a key: a descending field
SPILLS = {"$sort": 0, "$group": 0}  # stages that went to disk since the start, for serverStatus


def limits() -> tuple[int, bool]:
    """The operation's memory limit for one blocking stage, and whether it may
    use the disk past it."""
    op = current()
    if op is None:
        return DEFAULT_LIMIT, True
    return op.memory_limit, op.allow_disk


def over_limit(stage: str, limit: int, can_spill: bool = True) -> MongoError:
    if not can_spill:
        return MongoError(292, f"Exceeded memory limit for {stage} ({limit} bytes); the embedded store cannot "
                               f"spill {stage} to disk: narrow the input first ($match, $project)")
    return MongoError(292, f"Exceeded memory limit for {stage} ({limit} bytes), but didn't allow external sort. "
                           "Pass allowDiskUse:true to opt in.")


def sort_bytes(doc: dict[str, Any], sort: list[tuple[str, Any]]) -> bytes:
    """One key whose byte order is the document's order under ``sort``: each
    field's key (prefix-free) in turn, complemented when descending."""
    parts = []
    for name, direction in sort:
        if isinstance(direction, dict):  # {$meta: ...}: no text score here
            continue
        ascending = direction in (1, 1.0)
        key = keys.sort_key(doc, name.split("."), ascending)
        parts.append(key if ascending else key.translate(_INVERT))
    return b"".join(parts)


class Spill:
    """A private temporary SQLite database of ``(key, seq, payload)`` rows."""

    def __init__(self, stage: str) -> None:
        SPILLS[stage] = SPILLS.get(stage, 0) + 1
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)  # deleted on close
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE rows (key BLOB NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL)")
        self.rows = 0  # rows written

    def write(self, rows: Iterable[tuple[bytes, int, bytes]]) -> None:
        self._db.execute("BEGIN")
        cursor = self._db.executemany("INSERT INTO rows VALUES (?, ?, ?)", rows)
        self.rows += max(cursor.rowcount, 0)
        self._db.execute("COMMIT")

    def read(self) -> Iterator[tuple[bytes, bytes]]:
        """Every row's key and payload, by key then by the order written."""
        cursor = self._db.execute("SELECT key, payload FROM rows ORDER BY key, seq")
        while True:
            checkpoint()
            rows = cursor.fetchmany(_FETCH)
            if not rows:
                return
            yield from rows

    def close(self) -> None:
        self._db.close()


class Sorter(Generic[T]):
    """Sorts items by a bytes key, stable, within the memory limit."""

    def __init__(self, stage: str, key: Callable[[T], bytes], size: Callable[[T], int],
                 encode: Callable[[T], bytes], decode: Callable[[bytes], T]) -> None:
        self.stage = stage  # named in the 292 error
        self.key = key  # the item's sort key
        self.size = size  # the item's bytes in memory, roughly
        self.encode = encode  # the item as bytes, for the spill
        self.decode = decode  # and back

    def sort(self, items: Iterable[T]) -> Iterator[T]:
        limit, allow_disk = limits()
        buffered: list[tuple[bytes, int, T]] = []
        used = 0
        spill: Spill | None = None
        try:
            for seq, item in enumerate(items):
                key = self.key(item)
                buffered.append((key, seq, item))
                used += self.size(item) + len(key) + _ROW_OVERHEAD
                if used > limit:
                    if not allow_disk:
                        raise over_limit(self.stage, limit)
                    spill = spill or Spill(self.stage)
                    spill.write((k, s, self.encode(i)) for k, s, i in buffered)
                    buffered, used = [], 0
            if spill is None:
                buffered.sort(key=lambda entry: (entry[0], entry[1]))
                ordered = deque(item for _, _, item in buffered)
                buffered = []
                while ordered:  # each item let go as it leaves: what the consumer adds to it goes too
                    yield ordered.popleft()
                return
            spill.write((k, s, self.encode(i)) for k, s, i in buffered)
            buffered = []
            for _, payload in spill.read():
                yield self.decode(payload)
        finally:
            if spill is not None:
                spill.close()
