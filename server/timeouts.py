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
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable``, raising TimeoutError after ``seconds`` (None: no bound)."""
    async with asyncio.timeout(seconds):
        return await awaitable
