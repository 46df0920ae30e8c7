"""The live-node set, the reaper of a dead process's presence and the deployment's distinct users
(server/realtime/presence_redis.py) against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis as redis_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.realtime import presence_redis
from server.realtime.presence_redis import RedisPresence
from tests.helpers.redis_process import RedisProcess, require_redis


def _commands(url: str) -> dict[str, int]:
    """How many times each Redis command ran (INFO commandstats)."""
    stats = redis_client.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def test_a_node_that_stops_heart_beating_drops_out_of_nodes_within_the_ttl(redis: RedisProcess,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """nodes() lists both processes, then only the one still beating once the other's TTL passed; no SCAN runs."""
    monkeypatch.setattr(presence_redis, "HEARTBEAT_SECONDS", 0.2)

    async def scenario() -> tuple[list[str], list[str]]:
        dead, alive = RedisPresence([redis.url], "dead", ttl=1), RedisPresence([redis.url], "alive", ttl=1)
        await dead.start()
        await alive.start()
        before = await alive.nodes()
        assert dead._heartbeat is not None
        dead._heartbeat.cancel()  # as if killed (or stopped): its score ages
        await asyncio.sleep(1.3)
        after = await alive.nodes()
        await alive.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == ["alive", "dead"]
    assert after == ["alive"]
    assert "scan" not in _commands(redis.url)


def test_the_reaper_pushes_one_leave_per_user_left_only_on_a_dead_node_and_empties_its_entries(
        redis: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead node's room users with no socket elsewhere are announced gone once (by one survivor of two); a user
    also on a live node is not; its index, sockets and distinct users are gone from Redis."""
    monkeypatch.setattr(presence_redis, "HEARTBEAT_SECONDS", 0.2)

    async def scenario() -> tuple[list[tuple[str, str]], list[str], int | None, int | None, list[bytes]]:
        dead = RedisPresence([redis.url], "dead", ttl=1)
        survivors = [RedisPresence([redis.url], f"s{i}", ttl=2) for i in range(2)]  # a loaded loop: no false death
        left: list[tuple[str, str]] = []
        for survivor in survivors:
            survivor.bind(lambda channel, user: left.append((channel, user)))
        for presence in (dead, *survivors):
            await presence.start()
        for user in ("ghost", "both"):
            await dead.add("room:a", user)
            await dead.connected(user, "1", 5)
        await dead.add("room:b", "ghost")
        await survivors[0].add("room:a", "both")
        await survivors[0].connected("both", "7", 5)
        counted_before = await survivors[1].user_count()
        assert dead._heartbeat is not None
        dead._heartbeat.cancel()
        for _ in range(60):  # the survivors' TTL, then a heartbeat: bounded guard
            await asyncio.sleep(0.1)
            if len(left) >= 2 and not survivors[0]._reaping and not survivors[1]._reaping:
                break
        await asyncio.sleep(0.3)  # a second leave would come now
        users = await survivors[1].users("room:a")
        counted_after = await survivors[1].user_count()
        left_by_then = sorted(left)  # (closing s0 below makes s1 reap it, rightly: both's leave)
        for survivor in survivors:
            await survivor.close()
        direct = redis_client.Redis.from_url(redis.url)
        keys = sorted(direct.keys("mp:*")) + direct.zrange("mp:nodes", 0, -1)
        return left_by_then, users, counted_before, counted_after, keys

    left, users, counted_before, counted_after, keys = asyncio.run(scenario())
    assert left == [("room:a", "ghost"), ("room:b", "ghost")]
    assert users == ["both"]
    assert (counted_before, counted_after) == (2, 1)
    assert not [k for k in keys if b"dead" in k and not k.startswith(b"mp:node:")]  # index, claim, node score


def test_distinct_users_count_a_user_once_over_processes_and_shards(redis: RedisProcess) -> None:
    """user_count: a user with sockets on two processes counts once, over two Redis shards; gone at their last."""
    second = RedisProcess(require_redis()).start()
    try:
        async def scenario() -> list[int | None]:
            urls = [redis.url, second.url]
            one, two = RedisPresence(urls, "n1"), RedisPresence(urls, "n2")
            await one.start()
            await two.start()
            for n, presence in enumerate((one, two)):
                for user in ("u1", "u2", "u3", "u4"):
                    await presence.connected(user, str(n), 5)
            counts = [await one.user_count()]
            await one.disconnected("u1", "0")
            counts.append(await two.user_count())
            await two.disconnected("u1", "1")
            counts.append(await two.user_count())
            await one.close()
            await two.close()
            return counts

        assert asyncio.run(scenario()) == [4, 4, 3]
    finally:
        second.stop()


def test_calls_answer_after_redis_forgets_its_scripts(redis: RedisProcess) -> None:
    """SCRIPT FLUSH (as a restart does): the next pipeline's NOSCRIPT calls load their scripts and go again."""
    async def scenario() -> tuple[bool, list[str], bool]:
        one = RedisPresence([redis.url], "n1")
        await one.start()
        first = await one.add("room:a", "u1")
        redis_client.Redis.from_url(redis.url).script_flush()
        users, added = await asyncio.gather(one.users("room:a"), one.add("room:a", "u2"))  # one pipeline
        await one.close()
        return first, users, added

    assert asyncio.run(scenario()) == (True, ["u1"], True)


NODES = ("n0", "n1", "n2")
ROOMS = ("room:a", "room:d")  # on two shards: 1 and 0
PEOPLE = ("u1", "u2", "u4")  # 1, 1 and 0


@pytest.fixture
def second_redis() -> Iterator[RedisProcess]:
    """Another redis-server: presence spread over two shards."""
    process = RedisProcess(require_redis()).start()
    yield process
    process.stop()


@pytest.mark.parametrize("shards", [1, 2])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(ROOMS), st.sampled_from(PEOPLE)), max_size=25),
       st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(PEOPLE), st.booleans()), max_size=15),
       st.sampled_from(NODES))
def test_joins_leaves_and_the_reaper_agree_with_a_model(redis: RedisProcess, second_redis: RedisProcess, shards: int,
                                                        toggles: list[tuple[str, str, str]],
                                                        sockets: list[tuple[str, str, bool]], victim: str) -> None:
    """Any sequence of room toggles and sockets on three nodes (one or two Redis shards), then one dies: every
    join, leave, presence and distinct-user count is what a model of the holders says, and the reaper's leaves are
    exactly the victim's users held by no one else."""
    urls = [redis.url, second_redis.url][:shards]
    directs = [redis_client.Redis.from_url(url) for url in urls]
    for direct in directs:
        direct.flushdb()

    async def scenario() -> None:
        nodes = {name: RedisPresence(urls, name, ttl=30) for name in NODES}
        for presence in nodes.values():
            await presence.start()
        holders: dict[tuple[str, str], set[str]] = {}
        for node, room, user in toggles:  # the hub adds a user's first local socket, removes their last
            held = holders.setdefault((room, user), set())
            if node in held:
                held.discard(node)
                assert await nodes[node].remove(room, user) == (not held)
            else:
                assert await nodes[node].add(room, user) == (not held)
                held.add(node)
        open_: dict[str, set[str]] = {}
        for n, (node, user, stays) in enumerate(sockets):
            await nodes[node].connected(user, str(n), 100)
            if stays:
                open_.setdefault(user, set()).add(node)
            else:
                await nodes[node].disconnected(user, str(n))
        assert await nodes["n0"].user_count() == len(open_)
        left: list[tuple[str, str]] = []
        for node in NODES:
            nodes[node].bind(lambda room, user: left.append((room, user)))
        dying = nodes.pop(victim)
        assert dying._heartbeat is not None
        dying._heartbeat.cancel()
        for direct in directs:
            direct.delete(f"mp:node:{victim}")  # as its key expiring
            direct.zadd("mp:nodes", {victim: 0})  # and its score ageing
        survivor = next(iter(nodes.values()))
        for shard in range(shards):
            await survivor._reap(shard, victim)
        assert sorted(left) == sorted(key for key, held in holders.items() if held == {victim})
        for room in ROOMS:
            assert await survivor.users(room) == sorted(u for (r, u), held in holders.items()
                                                        if r == room and held - {victim})
        assert await survivor.user_count() == len([u for u, held in open_.items() if held - {victim}])
        assert all(victim.encode() not in direct.zrange("mp:nodes", 0, -1) for direct in directs)
        for presence in nodes.values():
            await presence.close()

    asyncio.run(scenario())
