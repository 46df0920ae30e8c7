"""The store's reader pool (embedded_mongo.readers), on its own: it grows only
while long reads hold every thread, and the threads it added leave when idle."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from embedded_mongo.readers import ReaderPool

GUARD = 20.0  # seconds: a guard against hanging, never the thing measured


def _hold(release: threading.Event, started: threading.Event) -> str:
    started.set()
    release.wait(GUARD)
    return "long"


def test_a_read_waiting_behind_long_reads_gets_a_new_thread() -> None:
    """With every thread held by a long read, another read runs at once on a thread started for it."""
    exited: list[str] = []
    pool = ReaderPool(2, 4, long_after=0.001, idle_exit=0.05,
                      on_exit=lambda: exited.append(threading.current_thread().name))
    release = threading.Event()
    try:
        holding = []
        for _ in range(2):
            started = threading.Event()
            holding.append(pool.submit(_hold, release, started))
            assert started.wait(GUARD)
        assert pool.submit(lambda: "short").result(GUARD) == "short"  # the long reads still hold their threads
        assert not any(f.done() for f in holding)
        assert pool.started_extra == 1
    finally:
        release.set()
    assert [f.result(GUARD) for f in holding] == ["long", "long"]
    end = time.monotonic() + GUARD
    while pool.size > 2 and time.monotonic() < end:
        time.sleep(0.01)
    assert pool.size == 2 and len(exited) == 1  # the extra thread left, its connection closed; the first two stay
    pool.shutdown()


def test_short_reads_queue_rather_than_multiply_threads() -> None:
    """Reads that all finish quickly never start a thread beyond those kept."""
    pool = ReaderPool(2, 8, long_after=5.0)
    futures: list[Future[int]] = [pool.submit(lambda n=n: n * n) for n in range(500)]
    assert [f.result(GUARD) for f in futures] == [n * n for n in range(500)]
    assert pool.started_extra == 0 and pool.size <= 2
    pool.shutdown()


def test_no_more_threads_than_most() -> None:
    """However many long reads, the pool stops at ``most`` threads; the rest wait their turn."""
    pool = ReaderPool(1, 3, long_after=0.001)
    release = threading.Event()
    starts = [threading.Event() for _ in range(5)]
    futures = [pool.submit(_hold, release, s) for s in starts]
    try:
        assert all(s.wait(GUARD) for s in starts[:3])
        assert not starts[3].wait(0.1) and pool.size == 3
    finally:
        release.set()
    assert [f.result(GUARD) for f in futures] == ["long"] * 5
    pool.shutdown()


def test_shutdown_cancels_what_waits_and_an_error_reaches_the_caller() -> None:
    """An exception in a read is the future's; shutdown with cancel_futures cancels queued reads."""
    pool = ReaderPool(1, 1)

    def fail() -> None:
        raise ValueError("bad read")

    failed = pool.submit(fail)
    assert isinstance(failed.exception(GUARD), ValueError)
    release, started = threading.Event(), threading.Event()
    running = pool.submit(_hold, release, started)
    assert started.wait(GUARD)
    queued = pool.submit(lambda: "never")
    release.set()
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result(GUARD) == "long"
    assert queued.cancelled() or queued.result(GUARD) == "never"


def test_a_read_submitted_while_the_watcher_waits_is_not_left_queued() -> None:
    """The watcher (started when reads waited behind short ones) never takes the wake-up meant for an idle
    thread. It used to: it waited on the same condition, took submit's one notify, saw nothing to do and left,
    while the idle thread slept on with the read queued until another read came (CI: a WebSocket handshake's
    session lookup answered after 120 s)."""
    pool = ReaderPool(1, 4, long_after=0.5)  # the watcher looks again every 0.5 s
    release, started = threading.Event(), threading.Event()
    try:
        holding = pool.submit(_hold, release, started)
        assert started.wait(GUARD)
        queued = pool.submit(lambda: "queued")  # waits behind a read not yet long: the watcher starts
        release.set()
        assert holding.result(GUARD) == "long" and queued.result(GUARD) == "queued"
        # The one thread is idle now, and waits after the watcher (still in its 0.5 s wait).
        assert pool.submit(lambda: "next").result(GUARD) == "next"  # before the fix: never, with no other read
    finally:
        release.set()
        pool.shutdown()
