"""A process that stalls past PRESENCE_TTL, is reaped (its users' leaves pushed), then comes back: real run.py
processes (or RedisPresence itself) on a real Redis."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import redis as redis_client

from server.realtime.presence_redis import RedisPresence
from tests.helpers.redis_process import RedisProcess, require_redis
from tests.mongo_process import StoreProcess
from tests.realtime.test_processes import alice_and_bob_in_a_room, deployment, stop

TTL = 2  # PRESENCE_TTL of these processes


def test_a_process_back_after_being_reaped_pushes_the_join_of_the_users_it_put_back(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """SIGSTOP of A past the TTL: Bob on B is told Alice left; SIGCONT: A writes Alice back into presence and Bob
    is told she joined, so his view matches the presence list again."""
    a, b = servers = deployment(store, database, redis, 2, PRESENCE_TTL=str(TTL))
    try:
        async def scenario() -> list[Any]:
            alice, bob, channel, alice_a, bob_b = await alice_and_bob_in_a_room(a, b)
            a.proc.send_signal(signal.SIGSTOP)
            try:
                left = await bob_b.push(4 * TTL, kind="leave")  # B's reaper: A's key expired
            finally:
                a.proc.send_signal(signal.SIGCONT)
            joined = await bob_b.push(4 * TTL, kind="join")  # A's heartbeat writes Alice back
            present = (await bob_b.call("presence", channel=channel))["result"]["users"]
            alice_a.close()
            bob_b.close()
            return [left["user"], joined["user"], present, alice["user"]["id"], bob["user"]["id"]]

        left, joined, present, alice_id, bob_id = asyncio.run(scenario())
        assert left == joined == alice_id
        assert present == sorted([alice_id, bob_id])
    finally:
        stop(servers)


def test_joins_are_pushed_for_the_rooms_of_every_shard_a_process_was_reaped_on(redis: RedisProcess) -> None:
    """Over two Redis shards (room:a on one, room:d on the other): a process reaped on both and back announces its
    user's join in both rooms, once each."""
    second = RedisProcess(require_redis()).start()
    try:
        async def scenario() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
            urls = [redis.url, second.url]
            stalled, survivor, left, joined = await _stalled_and_survivor(urls)
            for room in ("room:a", "room:d"):
                await stalled.add(room, "u1")
            assert stalled._heartbeat is not None
            stalled._heartbeat.cancel()  # stalled: its key expires (done by hand below), the survivor reaps it
            _expire(urls, "stalled")
            for shard in range(2):
                await survivor._reap(shard, "stalled")
            await stalled._beat()  # back
            for _ in range(50):  # bounded guard: the rewrite runs beside the heartbeat
                if stalled._rewriting is None or stalled._rewriting.done():
                    break
                await asyncio.sleep(0.1)
            await stalled.close()
            await survivor.close()
            return sorted(left), sorted(joined)

        left, joined = asyncio.run(scenario())
        assert left == joined == [("room:a", "u1"), ("room:d", "u1")]
    finally:
        second.stop()


def test_a_join_owed_after_being_reaped_is_pushed_when_the_failed_rewrite_is_retried(redis: RedisProcess) -> None:
    """A process back after being reaped whose first rewrite fails (its shard drops again right after the
    heartbeat consumed the reaped marker): the next rewrite, which no marker announces, still pushes the
    join it owes, once."""
    async def scenario() -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
        stalled, survivor, left, joined = await _stalled_and_survivor([redis.url])
        await stalled.add("room:a", "u1")
        assert stalled._heartbeat is not None
        stalled._heartbeat.cancel()
        _expire([redis.url], "stalled")
        await survivor._reap(0, "stalled")
        await stalled._beat()  # back: the marker is consumed and a rewrite is on its way...
        stalled.down.add(0)  # ...but the shard drops again before it runs: its add fails
        await _rewritten(stalled)
        after_failure = list(joined)
        await stalled._beat()  # the shard answers again: the failed calls are written again
        await _rewritten(stalled)
        await stalled._beat()  # and a later rewrite owes nothing more
        await _rewritten(stalled)
        await stalled.close()
        await survivor.close()
        return left, after_failure, joined

    left, after_failure, joined = asyncio.run(scenario())
    assert left == [("room:a", "u1")]
    assert after_failure == []
    assert joined == [("room:a", "u1")]


async def _rewritten(presence: RedisPresence) -> None:
    """Until the rewrite the last heartbeat started has run (a bounded guard)."""
    for _ in range(50):
        if presence._rewriting is None or presence._rewriting.done():
            return
        await asyncio.sleep(0.1)


async def _stalled_and_survivor(urls: list[str]) -> tuple[RedisPresence, RedisPresence, list[tuple[str, str]],
                                                           list[tuple[str, str]]]:
    """Two started presences on ``urls``: "stalled" (its joins recorded) and "survivor" (its leaves recorded)."""
    stalled, survivor = RedisPresence(urls, "stalled", ttl=30), RedisPresence(urls, "survivor", ttl=30)
    left: list[tuple[str, str]] = []
    joined: list[tuple[str, str]] = []
    survivor.bind(lambda channel, user: left.append((channel, user)))
    stalled.bind(lambda channel, user: None, lambda channel, user: joined.append((channel, user)))
    await stalled.start()
    await survivor.start()
    return stalled, survivor, left, joined


def _expire(urls: list[str], node: str) -> None:
    """``node``'s key gone and its score aged, on every server: as if its TTL passed (its heartbeat stopped)."""
    for url in urls:
        direct = redis_client.Redis.from_url(url)
        direct.delete(f"mp:node:{node}")
        direct.zadd("mp:nodes", {node: 0})
