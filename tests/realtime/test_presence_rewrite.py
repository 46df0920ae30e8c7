"""The rewrite of a process's presence after Redis lost it (server/realtime/presence_redis.py), against a real
redis-server."""

from __future__ import annotations

import asyncio

import redis as redis_client

from server.realtime.presence_redis import RedisPresence
from tests.helpers.redis_process import RedisProcess

USERS = 4000  # A's users, each in a room and with a socket: a rewrite far longer than the TTL below


def test_a_long_rewrite_after_redis_restarted_empty_does_not_get_its_process_reaped(redis: RedisProcess) -> None:
    """Redis restarted empty (FLUSHALL) under a process holding thousands of users: while it writes them back, its
    heartbeat goes on, so no other process takes it for dead and pushes their leaves."""
    async def scenario() -> tuple[list[tuple[str, str]], int]:
        a, b = RedisPresence([redis.url], "a", ttl=1), RedisPresence([redis.url], "b", ttl=1)
        left: list[tuple[str, str]] = []
        b.bind(lambda channel, user: left.append((channel, user)))
        await a.start()
        await b.start()
        for n in range(USERS):  # what A's hub holds (written to Redis, then lost with it)
            await a.local.add(f"room:{n % 50}", f"u{n}")
            await a.local.connected(f"u{n}", str(n), 10**9)
        redis_client.Redis.from_url(redis.url).flushall()
        listed = 0
        for _ in range(300):  # bounded guard: until A's users are all back
            await asyncio.sleep(0.1)
            listed = sum([len(await b.users(f"room:{n}")) for n in range(50)])
            if listed == USERS:
                break
        await asyncio.sleep(1.5)  # a reap of A would come by now
        await a.close()
        await b.close()
        return left, listed

    left, listed = asyncio.run(scenario())
    assert listed == USERS
    assert left == []


def test_a_rewrite_keeps_the_age_of_the_sockets_redis_still_holds(redis: RedisProcess) -> None:
    """After a stall (Redis kept its data; the process rewrites its entries), the per-user cap still closes the
    user's oldest socket anywhere: the rewrite does not make this process's sockets look new."""
    async def scenario() -> list[tuple[str, str]]:
        a, b = RedisPresence([redis.url], "a"), RedisPresence([redis.url], "b")
        await a.start()
        await b.start()
        assert await a.connected("u1", "oldest", 2) == []
        assert await b.connected("u1", "middle", 2) == []
        a._stale = True  # a call of A failed meanwhile: its next heartbeat writes its entries again
        await a._beat()
        assert a._rewriting is not None
        await a._rewriting
        closing = await b.connected("u1", "newest", 2)
        await a.close()
        await b.close()
        return closing

    assert asyncio.run(scenario()) == [("a", "oldest")]
