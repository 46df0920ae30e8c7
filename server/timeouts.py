"""A bounded await without ``asyncio.wait_for``'s flaw on Python 3.11.

On 3.11, ``wait_for`` swallows a cancellation of the awaiting task that arrives
as the awaited call completes (CPython gh-86296, fixed in 3.12 by rebuilding it
on ``asyncio.timeout``): the task goes on as if never cancelled. A loop stopped
by cancelling it then runs on, and whoever awaits it at shutdown waits forever;
this server's Redis broker hung a SIGTERM that way. ``within`` is built on
``asyncio.timeout``, which lets such a cancellation through. ruff bans
``asyncio.wait_for`` in the server (pyproject.toml).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable``, raising TimeoutError after ``seconds`` (None: no bound)."""
    async with asyncio.timeout(seconds):
        return await awaitable


LAG_CAP = 5  # an answer_within wait never exceeds this many times its seconds, however busy the loop
LAG_TICK = 0.05  # seconds between the lag monitor's looks while a wait is under way


class _Lag:
    """How late this loop's timers fire, summed: the time it was too busy to
    run anything else. Ticks only while some ``answer_within`` waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.total = 0.0  # seconds of lateness, summed over the ticks that fired
        self.waiting = 0  # answer_within calls under way
        self._due = 0.0  # loop time the next tick is due
        self._handle: asyncio.TimerHandle | None = None  # the next tick, while any call waits

    def now(self) -> float:
        """The lateness so far, counting the tick that is overdue right now."""
        overdue = self.loop.time() - self._due if self._handle is not None else 0.0
        return self.total + max(0.0, overdue)

    def enter(self) -> None:
        self.waiting += 1
        if self._handle is None:
            self._due = self.loop.time() + LAG_TICK
            self._handle = self.loop.call_at(self._due, self._tick)

    def leave(self) -> None:
        self.waiting -= 1

    def _tick(self) -> None:
        now = self.loop.time()
        self.total += max(0.0, now - self._due)
        if self.waiting:
            self._due = now + LAG_TICK
            self._handle = self.loop.call_at(self._due, self._tick)
        else:
            self._handle = None


_lags: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lag] = weakref.WeakKeyDictionary()


def _lag_of(loop: asyncio.AbstractEventLoop) -> _Lag:
    lag = _lags.get(loop)
    if lag is None:
        lag = _lags[loop] = _Lag(loop)
    return lag


class FreeTimer:
    """``loop.call_later(delay, callback, *args)`` where the delay counts only
    the time the loop was free: whatever time its timers fired late meanwhile
    (the loop busy, the process starved of CPU) is added, up to ``LAG_CAP``
    times ``delay`` in all. For a wait on something that arrives through a
    socket, which a busy loop may already hold unread."""

    def __init__(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._lag = _lag_of(loop)
        self._lag.enter()
        self._began = self._lag.now()  # the lateness already summed when the wait began
        self._credited = 0.0  # lateness already added to the wait
        self._hard = loop.time() + delay * LAG_CAP  # never later than this
        self._callback, self._args = callback, args
        self._done = False
        self._handle = loop.call_at(loop.time() + delay, self._check)

    def _check(self) -> None:
        owed = self._lag.now() - self._began - self._credited
        now = self._loop.time()
        if owed > 0.001 and now < self._hard:  # the loop was busy meanwhile: that time does not count
            self._credited += owed
            self._handle = self._loop.call_at(min(now + owed, self._hard), self._check)
            return
        self._finish()
        self._callback(*self._args)

    def cancel(self) -> None:
        if not self._done:
            self._handle.cancel()
            self._finish()

    def _finish(self) -> None:
        self._done = True
        self._lag.leave()


async def answer_within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable``, raising TimeoutError once the other side (Redis) has
    had ``seconds`` to answer, not counting the time this process's loop was too
    busy to run anything (at most ``LAG_CAP`` times ``seconds`` in all: a
    ``FreeTimer``).

    A plain timeout on a loop that lags counts the lag against the peer: an
    answer that arrived in time but was read after the deadline fails the
    call. A worker seconds behind its own work then took a Redis that answered
    at once for one that was down, and its recovery (writing all its presence
    entries again) made it further behind."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as bound:
        timer = FreeTimer(seconds, lambda: bound.reschedule(loop.time()))  # expiring cancels this task
        try:
            return await awaitable
        finally:
            timer.cancel()
