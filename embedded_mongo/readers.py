"""The threads reads run on: a few always, more while long reads hold them all.

A fixed pool of N threads lets N long reads (an admin's scans) take every thread,
and then every other client's reads, however short, queue behind them. This pool
starts another thread (up to ``most``) when reads are waiting and every thread is
held by a read that has run longer than ``long_after`` (a few milliseconds: an
indexed find takes well under one); a thread started so exits once it has been idle
``idle_exit`` seconds. Reads that are all short just queue for a moment, as before,
so a burst of them does not multiply threads fighting for the GIL (keeping N threads
free for short reads was worse, measured: more threads running at once take the
GIL from the event loop).

A thread alone is not enough: four scans holding the GIL in turn make a find that
takes 1 ms alone take 15 ms, and the chat's finds then queue on the one thread
started for them. So reads that have run LONG_READ also step aside (sleep 1 ms at
their checkpoints) while short reads wait or run (``operations.checkpoint``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from .operations import LONG_READ, short_read_over, short_read_queued, short_read_started

LONG_AFTER = LONG_READ  # seconds after which a read holding a thread counts as long
IDLE_EXIT = 10.0  # seconds an extra thread waits for work before it exits
MOST_THREADS = 32  # threads at most, the first ones included


class ReaderPool(Executor):
    """An executor of reads whose threads grow past ``threads`` while long reads hold them all."""

    def __init__(self, threads: int, most: int = MOST_THREADS, *, long_after: float = LONG_AFTER,
                 idle_exit: float = IDLE_EXIT, on_exit: Callable[[], None] | None = None,
                 name: str = "reader") -> None:
        self.threads = threads  # threads kept however idle
        self.most = max(most, threads)  # threads at most
        self.long_after = long_after  # seconds after which a running read counts as long
        self.idle_exit = idle_exit  # seconds an extra thread stays idle before it exits
        self._on_exit = on_exit  # called on an extra thread as it exits (closes its SQLite connection)
        self._name = name  # thread names: reader-1, reader-2...
        lock = threading.Lock()
        self._lock = threading.Condition(lock)  # guards everything below; workers wait on it
        # The watcher waits on a condition of its own (same lock): submit's one notify must reach an idle
        # worker, never the watcher (which would find nothing to do and leave the read queued).
        self._watcher = threading.Condition(lock)
        self._tasks: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()  # reads waiting
        self._busy: dict[int, float | None] = {}  # worker number -> when its read started, None while idle
        self._workers: list[threading.Thread] = []  # every thread started and not yet joined
        self._numbers = 0  # worker numbers handed out
        self._watching = False  # a watcher thread checks, every long_after, whether reads wait behind long ones
        self._stopping = False  # shutdown() was called
        self.started_extra = 0  # threads started beyond ``threads`` (for tests and the log)

    @property
    def size(self) -> int:
        """Threads running now."""
        with self._lock:
            return len(self._busy)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        call = (lambda: fn(*args, **kwargs)) if kwargs else fn
        with self._lock:
            if self._stopping:
                raise RuntimeError("the reader pool is shut down")
            self._tasks.append((future, call, () if kwargs else args))
            short_read_queued()
            if len(self._busy) < self.threads:
                self._start(extra=False)
            elif len(self._tasks) > self._idle():
                self._grow_or_watch()
            self._lock.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._stopping = True
            if cancel_futures:
                while self._tasks:
                    self._tasks.popleft()[0].cancel()
                    short_read_started()  # never to run: no longer waiting
                    short_read_over()
            self._lock.notify_all()
            self._watcher.notify_all()
            workers = list(self._workers)
        if wait:
            for worker in workers:
                if worker is not threading.current_thread():
                    worker.join()

    # -- under the lock ----------------------------------------------------------------

    def _idle(self) -> int:
        return sum(1 for since in self._busy.values() if since is None)

    def _all_long(self) -> bool:
        cutoff = time.monotonic() - self.long_after
        return all(since is not None and since <= cutoff for since in self._busy.values())

    def _grow_or_watch(self) -> None:
        """Reads wait and no thread is free: another thread if every one is held by a
        long read, else a watcher that looks again in ``long_after``."""
        if len(self._busy) >= self.most:
            return
        if self._all_long():
            self._start(extra=True)
        elif not self._watching:
            self._watching = True
            threading.Thread(target=self._watch, name=f"{self._name}-watch", daemon=True).start()

    def _start(self, extra: bool) -> None:
        self._numbers += 1
        number = self._numbers
        self._busy[number] = None
        if extra:
            self.started_extra += 1
        worker = threading.Thread(target=self._work, args=(number, extra), name=f"{self._name}-{number}",
                                  daemon=True)
        self._workers.append(worker)
        worker.start()

    # -- threads -----------------------------------------------------------------------

    def _watch(self) -> None:
        with self._lock:
            while not self._stopping and len(self._tasks) > self._idle() and len(self._busy) < self.most:
                self._watcher.wait(self.long_after)
                if len(self._tasks) > self._idle() and self._all_long():
                    self._start(extra=True)
            self._watching = False

    def _work(self, number: int, extra: bool) -> None:
        try:
            while True:
                with self._lock:
                    self._busy[number] = None
                    while not self._tasks and not self._stopping:
                        if not self._lock.wait(self.idle_exit if extra else None) and extra and not self._tasks:
                            return
                    if not self._tasks:  # stopping, nothing left
                        return
                    future, call, args = self._tasks.popleft()
                    self._busy[number] = time.monotonic()
                short_read_started()
                if future.set_running_or_notify_cancel():
                    try:
                        result = call(*args)
                    except BaseException as exc:  # handed to the caller, as ThreadPoolExecutor does
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
                short_read_over()
                del future, call, args
        finally:
            with self._lock:
                self._busy.pop(number, None)
                if extra and not self._stopping:
                    self._workers.remove(threading.current_thread())
            if extra and self._on_exit is not None:
                self._on_exit()
