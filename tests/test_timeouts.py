"""server.timeouts.within: a bounded await that never swallows its task's cancellation."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from server.timeouts import within


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
    """Cancelled as its call completes, a task awaiting within() ends cancelled."""
    assert asyncio.run(_cancelled_as_it_completes(within))


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
