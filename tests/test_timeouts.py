"""server.timeouts.within: a bounded await that never swallows its task's cancellation."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from server.timeouts import LAG_CAP, FreeTimer, answer_within, within


async def _cancelled_as_it_completes(bounded: Callable[[Awaitable[Any], float], Awaitable[Any]]) -> bool:
    """Whether a task awaiting ``bounded(future, 10)`` ends cancelled when it is cancelled in the very loop turn
    its future gets a result (a loop stopped at shutdown, as its Redis call answers)."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def loop_body() -> None:
        await bounded(future, 10)
        await asyncio.sleep(3600)  # the loop's next turn: reached only if the cancellation was lost

    task = asyncio.ensure_future(loop_body())
    await asyncio.sleep(0)  # the task now waits on the future
    future.set_result(1)
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
    if not task.done():
        task.cancel()  # a second cancel ends it for good
        await asyncio.wait([task], timeout=1.0)
        return False
    return task.cancelled()


def test_within_lets_a_cancellation_through() -> None:
    """Cancelled as its call completes, a task awaiting within() or answer_within() ends cancelled."""
    assert asyncio.run(_cancelled_as_it_completes(within))
    assert asyncio.run(_cancelled_as_it_completes(answer_within))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the flaw is Python 3.11's (fixed in 3.12)")
def test_asyncio_wait_for_swallows_it_on_python_3_11() -> None:
    """Why ruff bans asyncio.wait_for here: on 3.11 the same task goes on as if never cancelled."""
    assert not asyncio.run(_cancelled_as_it_completes(asyncio.wait_for))


def test_within_times_out_and_answers() -> None:
    """A call that answers in time gives its answer; one that does not raises TimeoutError and is cancelled."""
    async def scenario() -> tuple[int, bool]:
        answer = await within(asyncio.sleep(0, 7), 1)
        slow = asyncio.ensure_future(asyncio.sleep(10))
        with pytest.raises(TimeoutError):
            await within(slow, 0.01)
        await asyncio.sleep(0)
        return answer, slow.cancelled()

    assert asyncio.run(scenario()) == (7, True)


def test_an_answer_read_late_because_the_loop_was_busy_is_not_a_timeout() -> None:
    """The answer comes after 50 ms; the loop is then busy for 600 ms (a worker behind its own work), past
    the 200 ms bound: ``within`` counts that against the peer and fails, ``answer_within`` does not."""
    async def scenario(bound: Any) -> str:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.05, answer.set_result, "pong")
        loop.call_later(0.02, time.sleep, 0.6)  # the loop held: nothing else runs meanwhile
        return await bound(answer, 0.2)

    assert asyncio.run(scenario(answer_within)) == "pong"
    with pytest.raises(TimeoutError):
        asyncio.run(scenario(within))


def test_no_answer_still_times_out_on_a_busy_loop_within_the_cap() -> None:
    """A peer that never answers: on an idle loop after the bound; on a loop busy again and again, the busy
    time is added, but never past LAG_CAP times the bound."""
    async def never(busy: bool) -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        held: list[int] = []  # the holds that ran before the timeout
        spells = int(0.2 * LAG_CAP / 0.1) * 4  # holds going on four times longer than the cap
        if busy:
            for n in range(spells):
                loop.call_later(0.03 + n * 0.1, lambda: (held.append(1), time.sleep(0.09)))  # busy 9/10 of the time
        began = loop.time()
        with pytest.raises(TimeoutError):
            await answer_within(loop.create_future(), 0.2)
        return loop.time() - began, len(held) - (spells if busy else 0)

    idle, _ = asyncio.run(never(False))
    assert idle >= 0.2  # a timer never fires early
    busy, holds_left = asyncio.run(never(True))
    assert busy > 0.3  # the busy time was added
    assert holds_left < 0  # and yet it timed out while the loop was still being held: the cap, not the end of it


def test_answer_within_is_cancelled_like_any_await() -> None:
    """A cancellation of the waiting task goes through (no TimeoutError, no waiting out the bound)."""
    async def scenario() -> None:
        task = asyncio.ensure_future(answer_within(asyncio.get_running_loop().create_future(), 5))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_a_free_timer_waits_its_delay_of_free_loop_time() -> None:
    """Idle, it fires after its delay; with the loop held 0.3 s inside the wait, that time is added, so what a
    busy loop had not yet run (here a callback due before the hold ended) still runs first; cancelled, it
    never fires."""
    async def scenario() -> tuple[float, list[str], float, bool]:
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()
        began = loop.time()
        FreeTimer(0.1, fired.set)
        await fired.wait()
        idle = loop.time() - began
        order: list[str] = []
        done = asyncio.Event()
        began = loop.time()
        FreeTimer(0.1, lambda: (order.append("timer"), done.set()))
        loop.call_soon(time.sleep, 0.3)  # held past the delay
        loop.call_later(0.2, order.append, "arrival")  # what the hold kept from running in time
        await done.wait()
        busy = loop.time() - began
        cancelled = FreeTimer(0.05, order.append, "cancelled")
        cancelled.cancel()
        await asyncio.sleep(0.1)
        return idle, order, busy, "cancelled" in order

    idle, order, busy, ran = asyncio.run(scenario())
    assert idle >= 0.1  # a timer never fires early
    assert order == ["arrival", "timer"] and busy >= 0.3
    assert not ran
