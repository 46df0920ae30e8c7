"""The rewrite of a process's presence after Redis lost it, sent in pipelines rather than one
awaited call at a time (server/realtime/presence_redis.py ``_rewrite``), and the order of a pipeline's
calls when Redis lost its scripts, against real redis-servers."""

from __future__ import annotations

import asyncio
import os
import signal

import redis as redis_client

from server.realtime.presence_redis import PIPELINE, RedisPresence
from tests.helpers.redis_process import RedisProcess

USERS = 1500  # each in a room and with a socket: 3,000 calls, several pipelines and windows
ROOMS = 30


def _reads(url: str) -> int:
    """Read events Redis processed on its client sockets: about one per round trip of a client."""
    return int(redis_client.Redis.from_url(url).info("stats")["total_reads_processed"])


async def _holding(node: str, url: str) -> RedisPresence:
    """A started process whose hub holds USERS users, each in a room and with a socket (local state only)."""
    presence = RedisPresence([url], node, ttl=30)
    await presence.start()
    if presence._rewriting is not None:
        await presence._rewriting  # the start's own rewrite (nothing yet), out of the way
    for n in range(USERS):
        await presence.local.add(f"room:{n % ROOMS}", f"u{n}")
        await presence.local.connected(f"u{n}", str(n), 10**9)
    return presence


def test_a_rewrite_after_redis_lost_everything_is_pipelined_and_puts_every_entry_back(redis: RedisProcess) -> None:
    """FLUSHALL under a process holding 1,500 users: its rewrite reaches Redis in pipelines (a few dozen round
    trips for 3,000 calls, not one each), lists every user and socket again, and announces no join or leave; a
    leave and a join made while it runs are applied after it (no ghost, nobody missing)."""
    async def scenario() -> tuple[int, list[str], int, list[tuple[str, str]], list[tuple[str, str]]]:
        a = await _holding("a", redis.url)
        b = RedisPresence([redis.url], "b", ttl=30)
        left: list[tuple[str, str]] = []
        joined: list[tuple[str, str]] = []
        a.bind(lambda channel, user: None, lambda channel, user: joined.append((channel, user)))
        b.bind(lambda channel, user: left.append((channel, user)))
        await b.start()
        direct = redis_client.Redis.from_url(redis.url)
        direct.flushall()
        before = _reads(redis.url)
        await a._beat()  # finds its key gone: renews it and starts the rewrite beside the heartbeat
        await asyncio.sleep(0)  # the rewrite has queued its first calls
        assert await a.remove("room:0", "u0")  # a leave made meanwhile: sent after the rewrite's add of u0
        await a.add("room:0", "newcomer")
        assert a._rewriting is not None
        await a._rewriting
        reads = _reads(redis.url) - before
        listed = sorted([u for n in range(ROOMS) for u in await b.users(f"room:{n}")])
        sockets = int(direct.scard("mp:users"))
        await a.close()
        await b.close()
        return reads, listed, sockets, left, joined

    reads, listed, sockets, left, joined = asyncio.run(scenario())
    print(f"{2 * USERS} calls in {reads} reads by Redis (pipelines of {PIPELINE})")
    assert reads < 2 * USERS / 10  # one awaited call at a time took a round trip each: 3,000 reads
    assert listed == sorted([f"u{n}" for n in range(1, USERS)] + ["newcomer"])
    assert sockets == USERS
    assert left == [] and joined == []


def test_a_process_reaped_then_back_announces_each_user_it_writes_back_once(redis: RedisProcess) -> None:
    """A process stalled past the TTL is reaped (a leave for each of its 1,500 users); back, its pipelined
    rewrite pushes each user's join once, no more, no fewer."""
    async def scenario() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        stalled = RedisPresence([redis.url], "stalled", ttl=30)
        await stalled.start()
        for n in range(USERS):
            await stalled.add(f"room:{n % ROOMS}", f"u{n}")
        survivor = RedisPresence([redis.url], "survivor", ttl=30)
        left: list[tuple[str, str]] = []
        joined: list[tuple[str, str]] = []
        survivor.bind(lambda channel, user: left.append((channel, user)))
        stalled.bind(lambda channel, user: None, lambda channel, user: joined.append((channel, user)))
        await survivor.start()
        assert stalled._heartbeat is not None
        stalled._heartbeat.cancel()  # stalled: its key expires (done by hand), the survivor reaps it
        direct = redis_client.Redis.from_url(redis.url)
        direct.delete("mp:node:stalled")
        direct.zadd("mp:nodes", {"stalled": 0})
        await survivor._reap(0, "stalled")
        await stalled._beat()  # back: its key had gone and a reaper pushed leaves
        assert stalled._rewriting is not None
        await stalled._rewriting
        await stalled.close()
        await survivor.close()
        return sorted(left), sorted(joined)

    left, joined = asyncio.run(scenario())
    assert len(left) == USERS
    assert joined == left


def test_a_failed_removal_the_rewrite_could_not_send_either_is_sent_by_the_next_one(redis: RedisProcess) -> None:
    """A leave whose removal failed (Redis stalled), and whose resend by a rewrite failed too (stalled again), is
    still sent once Redis answers: the other process does not list the user who left."""
    async def scenario() -> list[str]:
        assert redis.proc is not None
        one, two = RedisPresence([redis.url], "n1", timeout=0.3, ttl=30), RedisPresence([redis.url], "n2", ttl=30)
        await one.start()
        await two.start()
        await one.add("room:a", "gone")
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            await one.remove("room:a", "gone")  # times out: kept to be resent
            await one._rewrite({0}, set())  # Redis still stalled: the resend fails too
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        assert ("room:a", "gone") in one._unsent_leaves
        await one._beat()  # finds Redis back: rewrites, resending the removal
        assert one._rewriting is not None
        await one._rewriting
        users = await two.users("room:a")
        await one.close()
        await two.close()
        return users

    assert asyncio.run(scenario()) == []


def test_a_leave_sent_right_after_its_join_while_redis_reloads_its_scripts_leaves_no_ghost(
        redis: RedisProcess) -> None:
    """Redis lost its scripts (restarted); one process's first call reloads them; another's join and leave of one
    user, in one pipeline, then run in order: the leave was not run before the join sent again (a ghost)."""
    async def scenario() -> list[str]:
        a, b = RedisPresence([redis.url], "a", ttl=30), RedisPresence([redis.url], "b", ttl=30)
        await a.start()
        await b.start()
        redis_client.Redis.from_url(redis.url).script_flush()
        await a.remove("room:a", "someone")  # meets NOSCRIPT: reloads what Redis lost
        await asyncio.gather(b.add("room:a", "x"), b.remove("room:a", "x"))  # one pipeline: join, then leave
        users = await a.users("room:a")
        await a.close()
        await b.close()
        return users

    assert asyncio.run(scenario()) == []
