"""Running operations: what ``currentOp`` lists, ``killOp`` stops and
``maxTimeMS`` bounds.

Every command is an ``Operation`` while it runs. Long work calls
``checkpoint()`` (every document a scan reads, every chunk a pipeline stage
handles, and SQLite's progress handler inside one statement): it raises
``MaxTimeMSExpired`` (50) past the operation's deadline and ``Interrupted``
(11601) once ``killOp`` has marked it. The operation in progress is found
through a context variable, so the storage and query code need no extra
argument and a cursor resumed by ``getMore`` answers to the getMore's limits.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from bson import Int64

from .errors import MongoError

_CURRENT: ContextVar[Operation | None] = ContextVar("operation", default=None)
_LOOP_BUSY = 0.002  # seconds after the event loop last had work during which a reader yields to it
_YIELD = 0.001  # seconds a reader sleeps at a checkpoint while the loop has work
_loop_seen = [0.0]  # when the event loop last had work (monotonic)
LONG_READ = 0.005  # seconds after which a read counts as long: it steps aside while short ones wait or run
_MOST_WAIT = 0.02  # seconds a long read waits at one checkpoint for short ones: it still moves on under many
_short = [0]  # reads waiting for a reader thread, or running for less than LONG_READ
_short_lock = threading.Lock()  # guards _short and _no_short
_no_short = threading.Event()  # set while _short is 0
_counted = threading.local()  # .short: this reader thread's read still counts in _short
_SHOWN_FIELDS = 2_000  # characters of a command's repr shown per value in currentOp


class Interrupted(MongoError):
    """The operation was stopped (killOp, maxTimeMS): the whole command fails,
    not one statement of a batch."""


class Operation:
    """One command while it runs."""

    def __init__(self, opid: int, command: dict[str, Any], ns: str, client: str, connection_id: int,
                 max_time_ms: float, memory_limit: int) -> None:
        self.opid = opid  # what currentOp shows and killOp takes
        self.command = command  # the command document (as received)
        self.ns = ns  # db.collection, or db.$cmd
        self.client = client  # host:port of the client
        self.connection_id = connection_id  # the connection's number (desc "connN")
        self.started = time.monotonic()  # for secs_running
        self.deadline = self.started + max_time_ms / 1000.0 if max_time_ms > 0 else None  # from maxTimeMS
        self.killed = False  # killOp marked it
        self.memory_limit = memory_limit  # bytes one blocking stage may hold in memory
        self.allow_disk = command.get("allowDiskUse") is not False  # past that limit, spill (mongod 7.0's default)
        self.yields = False  # runs on a reader thread: steps aside while the event loop has work

    def stopped(self) -> bool:
        """Whether the operation must stop at its next checkpoint."""
        return self.killed or (self.deadline is not None and time.monotonic() > self.deadline)

    def check(self) -> None:
        if self.killed:
            raise Interrupted(11601, "operation was interrupted")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Interrupted(50, "operation exceeded time limit")

    def describe(self) -> dict[str, Any]:
        """The operation as currentOp shows it."""
        running = time.monotonic() - self.started
        name = next(iter(self.command), "")
        return {
            "type": "op", "desc": f"conn{self.connection_id}", "connectionId": self.connection_id,
            "client": self.client, "active": True, "opid": self.opid,
            "secs_running": Int64(int(running)), "microsecs_running": Int64(int(running * 1e6)),
            "op": _KINDS.get(name, "command"), "ns": self.ns, "command": _shown(self.command),
            "killPending": self.killed, "waitingForLock": False,
        }


_KINDS = {"find": "query", "insert": "insert", "update": "update", "delete": "remove", "getMore": "getmore"}


def _shown(command: dict[str, Any]) -> dict[str, Any]:
    """The command without the bulk of a write (its documents), as mongod
    truncates them."""
    shown: dict[str, Any] = {}
    for name, value in command.items():
        if name in ("documents", "updates", "deletes") and isinstance(value, list):
            shown[name] = f"<{len(value)} statements>"
        elif isinstance(value, (str, bytes)) and len(value) > _SHOWN_FIELDS:
            shown[name] = value[:_SHOWN_FIELDS]
        else:
            shown[name] = value
    return shown


class Operations:
    """Every operation running in the store, by opid."""

    def __init__(self, memory_limit: int) -> None:
        self.memory_limit = memory_limit  # bytes one blocking stage may hold in memory
        self._running: dict[int, Operation] = {}  # opid -> operation
        self._ids = itertools.count(1)  # opids, never reused
        self._lock = threading.Lock()  # operations start and end on several threads

    @contextmanager
    def running(self, command: dict[str, Any], ns: str, client: str, connection_id: int,
                yields: bool = False) -> Iterator[Operation]:
        """Registers the command as an operation (and the current one) while
        inside; ``yields``: it runs on a reader thread."""
        op = Operation(next(self._ids), command, ns, client, connection_id, _max_time_ms(command), self.memory_limit)
        op.yields = yields
        with self._lock:
            self._running[op.opid] = op
        token = _CURRENT.set(op)
        try:
            yield op
        finally:
            _CURRENT.reset(token)
            with self._lock:
                self._running.pop(op.opid, None)

    def all(self) -> list[Operation]:
        with self._lock:
            return list(self._running.values())

    def kill(self, opid: int) -> bool:
        with self._lock:
            op = self._running.get(opid)
        if op is None:
            return False
        op.killed = True
        return True


def _max_time_ms(command: dict[str, Any]) -> float:
    value = command.get("maxTimeMS", 0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value > 2**31 - 1:
        raise MongoError(2, f"{value!r} is not a valid maxTimeMS: it takes a non-negative 32-bit integer")
    return float(value)


def current() -> Operation | None:
    return _CURRENT.get()


def checkpoint() -> None:
    """Raises if the operation in progress was killed or ran out of time; on a
    reader thread, first sleeps a moment if the event loop has work (so the loop
    has the GIL to itself for it, instead of fighting for it at every system
    call), or if the read has run LONG_READ and short reads wait or run (they
    have the GIL first: an admin's scans never slow the chat's finds)."""
    op = _CURRENT.get()
    if op is not None:
        if op.yields:
            now = time.monotonic()
            if now - _loop_seen[0] < _LOOP_BUSY:
                time.sleep(_YIELD)
            elif now - op.started > LONG_READ:
                short_read_over()
                if _short[0] > 0:  # woken when none is left (no polling: a waking thread takes the GIL)
                    _no_short.wait(_MOST_WAIT)
        op.check()


def short_read_queued() -> None:
    """A read was handed to the reader threads: it counts as short until it has run LONG_READ."""
    with _short_lock:
        _short[0] += 1
        _no_short.clear()


def short_read_started() -> None:
    """On the reader thread that picked the read up: the count is now this thread's to drop."""
    _counted.short = True


def short_read_over() -> None:
    """This thread's read finished or has run LONG_READ: it no longer counts as short."""
    if getattr(_counted, "short", False):
        _counted.short = False
        with _short_lock:
            _short[0] -= 1
            if _short[0] <= 0:
                _no_short.set()


def loop_busy() -> None:
    """The event loop has work (a message arrived): readers step aside a moment."""
    _loop_seen[0] = time.monotonic()


def interrupt_sqlite() -> int:
    """SQLite's progress handler: non-zero stops the statement in progress."""
    op = _CURRENT.get()
    return 1 if op is not None and op.stopped() else 0
