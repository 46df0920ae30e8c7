"""Presence over processes (server/realtime/presence_redis.py) against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from server.realtime import presence_redis
from server.realtime.presence import MemoryPresence
from server.realtime.presence_redis import RedisPresence
from tests.helpers.redis_process import RedisProcess


def test_join_and_leave_are_once_per_user_over_processes(redis: RedisProcess) -> None:
    """A user's first socket anywhere joins, their last anywhere leaves; users() is the union."""
    async def scenario() -> list[object]:
        one, two = RedisPresence([redis.url], "n1"), RedisPresence([redis.url], "n2")
        await one.start()
        await two.start()
        seen = [await one.add("room:a", "u1"), await two.add("room:a", "u1"), await two.add("room:a", "u2"),
                await one.users("room:a"), await one.remove("room:a", "u1"), await two.users("room:a"),
                await two.remove("room:a", "u1"), await one.users("room:a")]
        await one.close()
        await two.close()
        return seen

    assert asyncio.run(scenario()) == [True, False, True, ["u1", "u2"], False, ["u1", "u2"], True, ["u2"]]


def test_a_dead_process_entries_stop_counting_within_the_ttl(redis: RedisProcess) -> None:
    """A process that stops heartbeating (killed) vanishes from presence and socket counts after PRESENCE_TTL."""
    async def scenario() -> tuple[list[str], list[str], bool, list[tuple[str, str]]]:
        dead, alive = RedisPresence([redis.url], "dead", ttl=1), RedisPresence([redis.url], "alive", ttl=1)
        await dead.start()
        await alive.start()
        await dead.add("room:a", "ghost")
        await dead.connected("u", "c1", 2)
        assert dead._heartbeat is not None
        dead._heartbeat.cancel()  # as if killed: nothing renews its key, nothing deletes its entries
        before = await alive.users("room:a")
        await asyncio.sleep(1.3)
        after = await alive.users("room:a")
        joins = await alive.add("room:a", "ghost")  # the ghost's next socket is a join again
        closing = await alive.connected("u", "c2", 1)  # the dead process's socket no longer counts
        await alive.close()
        return before, after, joins, closing

    before, after, joins, closing = asyncio.run(scenario())
    assert before == ["ghost"] and after == [] and joins and closing == []


def test_the_per_user_cap_closes_the_oldest_socket_anywhere(redis: RedisProcess) -> None:
    """WS_MAX_PER_USER over processes: the third socket of a user with a cap of 2 closes their oldest."""
    async def scenario() -> list[list[tuple[str, str]]]:
        one, two = RedisPresence([redis.url], "n1"), RedisPresence([redis.url], "n2")
        await one.start()
        await two.start()
        answers = [await one.connected("u", "a", 2), await two.connected("u", "b", 2),
                   await one.connected("u", "c", 2), await two.connected("v", "d", 2)]
        await two.disconnected("u", "b")
        answers.append(await two.connected("u", "e", 2))
        await one.close()
        await two.close()
        return answers

    assert asyncio.run(scenario()) == [[], [], [("n1", "a")], [], []]


def test_presence_is_written_again_after_redis_restarts_empty(redis: RedisProcess,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of Redis (no persistence): the heartbeat puts this process's entries back."""
    monkeypatch.setattr(presence_redis, "HEARTBEAT_SECONDS", 0.1)

    async def scenario() -> tuple[list[str], list[str]]:
        one = RedisPresence([redis.url], "n1", timeout=0.3)
        await one.start()
        await one.add("room:a", "u1")
        redis.kill()
        during = await one.users("room:a")  # this process's own answer meanwhile
        redis.start()
        probe = RedisPresence([redis.url], "probe")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if one.reachable and await probe.users("room:a"):
                break
        after = await probe.users("room:a")
        await one.close()
        await probe.close()
        return during, after

    assert asyncio.run(scenario()) == (["u1"], ["u1"])


def test_memory_presence_answers_for_one_process() -> None:
    """The in-process presence: first/last per user, and the cap closes the oldest local socket."""
    async def scenario() -> list[object]:
        presence = MemoryPresence("n")
        return [await presence.add("room:a", "u"), await presence.add("room:a", "u"), await presence.users("room:a"),
                await presence.remove("room:a", "u"), await presence.connected("u", "1", 1),
                await presence.connected("u", "2", 1)]

    assert asyncio.run(scenario()) == [True, False, ["u"], True, [], [("n", "1")]]


def test_a_vouch_is_shared_by_every_process_until_the_session_is_revoked(redis: RedisProcess) -> None:
    """A socket closing on one process vouches for its session on all; a revocation ends that for good."""
    async def scenario() -> list[object]:
        one, two = RedisPresence([redis.url], "n1"), RedisPresence([redis.url], "n2")
        await one.start()
        await two.start()
        seen: list[object] = [await two.vouched("sid-1")]
        one.vouch("u1", "sid-1", 30)
        await asyncio.sleep(0.05)
        seen.append(await two.vouched("sid-1"))
        two.revoke("sid-1", 60)
        await asyncio.sleep(0.05)
        one.vouch("u1", "sid-1", 30)  # a socket of the revoked session closing late
        await asyncio.sleep(0.05)
        seen.append(await one.vouched("sid-1"))
        await one.close()
        await two.close()
        return seen

    assert asyncio.run(scenario()) == [None, "u1", None]
