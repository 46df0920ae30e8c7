"""The rewrite of a process's presence after Redis lost it, and the heartbeat beside it
(server/realtime/presence_redis.py), against real redis-servers."""

from __future__ import annotations

import asyncio
import signal

import redis as redis_client

from server.realtime.brokers.redis import shard_of
from server.realtime.presence_redis import RedisPresence
from tests.helpers.redis_process import RedisProcess, require_redis

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
        a._stale = {0}  # a call of A failed meanwhile: its next heartbeat writes its entries again
        await a._beat()
        assert a._rewriting is not None
        await a._rewriting
        closing = await b.connected("u1", "newest", 2)
        await a.close()
        await b.close()
        return closing

    assert asyncio.run(scenario()) == [("a", "oldest")]


def test_redis_servers_that_hang_do_not_delay_the_heartbeat_of_the_others(redis: RedisProcess) -> None:
    """Three of four Redis servers stop answering (SIGSTOP): each heartbeat waits REDIS_TIMEOUT for them once, not
    once each, so the process's key on the server still up never lapses (a lapse lets others reap it alive)."""
    hung = [RedisProcess(require_redis()).start() for _ in range(3)]
    try:
        async def scenario() -> list[int]:
            a = RedisPresence([redis.url] + [r.url for r in hung], "a", timeout=0.6, ttl=2)
            await a.start()
            direct = redis_client.Redis.from_url(redis.url)
            for r in hung:
                r.proc.send_signal(signal.SIGSTOP)
            seen = []
            try:
                for _ in range(50):  # 5 s: heartbeats every 0.67 s, plus 3 x 0.6 s if waited one after the other
                    await asyncio.sleep(0.1)
                    seen.append(await asyncio.to_thread(direct.exists, "mp:node:a"))
            finally:
                for r in hung:
                    r.proc.send_signal(signal.SIGCONT)
            await a.close()
            return seen

        assert 0 not in asyncio.run(scenario())
    finally:
        for r in hung:
            r.stop()


def test_a_removal_that_failed_on_one_server_is_sent_when_it_is_back_though_another_stays_down(
        redis: RedisProcess) -> None:
    """Two Redis servers: one stops for good; the other stalls while a user leaves a room hashed to it. Once that
    one answers again, the failed removal is sent there (no ghost), without waiting for the one still down."""
    second = RedisProcess(require_redis()).start()
    try:
        async def scenario() -> list[bytes]:
            urls = [redis.url, second.url]
            room = next(f"room:{n}" for n in range(100) if shard_of(f"room:{n}", 2) == 1)
            a = RedisPresence(urls, "a", timeout=0.5, ttl=2)
            await a.start()
            await a.add(room, "u1")
            redis.stop()  # the first server is gone for good
            second.proc.send_signal(signal.SIGSTOP)
            try:
                assert await a.remove(room, "u1")  # times out: pushed from this process's own view, resent later
            finally:
                second.proc.send_signal(signal.SIGCONT)
            direct = redis_client.Redis.from_url(second.url)
            members: list[bytes] = []
            for _ in range(40):  # bounded guard: heartbeats every 0.67 s
                await asyncio.sleep(0.1)
                members = list(await asyncio.to_thread(direct.smembers, f"mp:p:{room}"))
                if not members:
                    break
            await a.close()
            return members

        assert asyncio.run(scenario()) == []
    finally:
        second.stop()
