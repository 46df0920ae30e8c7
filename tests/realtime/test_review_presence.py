"""Review of issue 12: presence after a Redis call that failed while the process stayed alive."""

from __future__ import annotations

import asyncio
import os
import signal

from server.realtime.presence_redis import RedisPresence
from tests.helpers.redis_process import RedisProcess


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


def test_calls_made_while_redis_is_known_down_fail_at_once_and_are_sent_when_it_is_back(redis: RedisProcess) -> None:
    """Once a call has found Redis unreachable, later calls queue nothing for it (no REDIS_TIMEOUT wait each,
    which held a hub's room joins k x the timeout); the heartbeat that finds Redis back sends what they changed."""
    async def scenario() -> tuple[bool, list[str]]:
        one, two = RedisPresence([redis.url], "n1", timeout=1.0, ttl=3), RedisPresence([redis.url], "n2", ttl=3)
        await one.start()
        await two.start()
        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            await one.add("room:a", "first")  # times out: Redis is now known to be down
            assert not one.reachable
            second = asyncio.create_task(one.add("room:a", "second"))
            for _ in range(5):  # a few loop turns: no round trip to Redis can be answered in them
                await asyncio.sleep(0)
            answered_without_redis = second.done()
            await second
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        await asyncio.sleep(2.5)  # a heartbeat (every ttl/3) finds Redis back and rewrites n1's entries
        users = await two.users("room:a")
        await one.close()
        await two.close()
        return answered_without_redis, users

    answered_without_redis, users = asyncio.run(scenario())
    assert answered_without_redis
    assert users == ["first", "second"]
