"""Review of issue 12: presence after a Redis call that failed while the process stayed alive."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from server.realtime.presence_redis import RedisPresence
from tests.helpers.redis_process import RedisProcess, require_redis


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    process = RedisProcess(require_redis()).start()
    yield process
    process.stop()


def test_a_leave_made_while_redis_stalled_leaves_no_ghost_once_it_answers_again(redis: RedisProcess) -> None:
    """Redis stalls (a partition) shorter than PRESENCE_TTL while a user leaves and another joins on one process:
    once Redis answers again, the other process's presence shows the join and not the one who left."""
    async def scenario() -> list[str]:
        one, two = RedisPresence([redis.url], "n1", timeout=0.3, ttl=3), RedisPresence([redis.url], "n2", ttl=3)
        await one.start()
        await two.start()
        await one.add("room:a", "gone")
        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            await one.remove("room:a", "gone")  # times out: answered for this process only
            await one.add("room:a", "new")
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        await asyncio.sleep(2.5)  # heartbeats (every ttl/3) run; n1's key never expired
        users = await two.users("room:a")
        await one.close()
        await two.close()
        return users

    assert asyncio.run(scenario()) == ["new"]
