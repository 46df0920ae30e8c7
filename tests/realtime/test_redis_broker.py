"""The Redis broker (server/fanout/brokers/redis.py) against a real redis-server."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from server.realtime.brokers.redis import RedisBroker, jump_hash, shard_of
from tests.helpers.redis_process import RedisProcess, require_redis


class Events:
    """What a broker handed over."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, int, bytes]] = []  # (channel, seq, payload)
        self.controls: list[bytes] = []  # control messages
        self.recovered: list[list[str]] = []  # on_recovered calls

    def on_message(self, channel: str, seq: int, payload: bytes) -> None:
        self.messages.append((channel, seq, payload))

    def on_control(self, data: bytes) -> None:
        self.controls.append(data)

    def on_recovered(self, channels: list[str]) -> None:
        self.recovered.append(sorted(channels))


async def _until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_messages_reach_only_the_processes_subscribed_and_never_come_back(redis: RedisProcess) -> None:
    """A publish reaches each subscribed broker once, skips its sender, and stops at unsubscribe."""
    async def scenario() -> tuple[Events, Events]:
        a, b = RedisBroker([redis.url]), RedisBroker([redis.url])
        ea, eb = Events(), Events()
        await a.start(ea)
        await b.start(eb)
        assert a.up and b.up
        await a.subscribe("room:x")
        await b.subscribe("room:x")
        a.publish("room:x", 1, b'{"n":1}')
        a.publish("feed:other", 1, b"{}")
        a.publish_control(b'{"op":"hello"}')
        await _until(lambda: len(eb.messages) == 1 and eb.controls)
        await b.unsubscribe("room:x")
        a.publish("room:x", 2, b'{"n":2}')
        b.publish("room:x", 3, b'{"n":3}')
        await _until(lambda: len(ea.messages) == 1)
        await asyncio.sleep(0.1)
        await a.close()
        await b.close()
        return ea, eb

    ea, eb = asyncio.run(scenario())
    assert eb.messages == [("room:x", 1, b'{"n":1}')] and eb.controls == [b'{"op":"hello"}']
    assert ea.messages == [("room:x", 3, b'{"n":3}')] and ea.controls == []


def test_a_redis_restart_is_reported_and_held_publishes_go_after_it(redis: RedisProcess) -> None:
    """kill -9 of Redis: the broker says down, keeps publishes, re-subscribes, and reports the recovery."""
    async def scenario() -> tuple[Events, list[bool]]:
        a, b = RedisBroker([redis.url], timeout=0.5), RedisBroker([redis.url], timeout=0.5)
        eb = Events()
        await a.start(Events())
        await b.start(eb)
        await b.subscribe("room:x")
        await b.subscribe("feed:y")
        redis.kill()
        await _until(lambda: not a.up and not b.up)
        states = [a.up, b.up]
        a.publish("room:x", 1, b"held")
        redis.start()
        await _until(lambda: a.up and b.up and eb.messages)
        await a.close()
        await b.close()
        return eb, states

    eb, states = asyncio.run(scenario())
    assert states == [False, False]
    assert eb.recovered == [["feed:y", "room:x"]]
    assert eb.messages == [("room:x", 1, b"held")]


def test_channels_spread_over_several_redis_servers(redis: RedisProcess) -> None:
    """With two Redis URLs each channel goes through its own shard, and every message arrives."""
    second = RedisProcess(require_redis()).start()
    try:
        async def scenario() -> tuple[Events, list[int]]:
            urls = [redis.url, second.url]
            a, b = RedisBroker(urls), RedisBroker(urls)
            eb = Events()
            await a.start(Events())
            await b.start(eb)
            channels = [f"room:r{i}" for i in range(20)]
            for channel in channels:
                await b.subscribe(channel)
            for channel in channels:
                a.publish(channel, 1, channel.encode())
            await _until(lambda: len(eb.messages) == len(channels))
            await a.close()
            await b.close()
            return eb, [shard_of(c, 2) for c in channels]

        eb, shards = asyncio.run(scenario())
        assert sorted(m[0] for m in eb.messages) == sorted(f"room:r{i}" for i in range(20))
        assert set(shards) == {0, 1}
    finally:
        second.stop()


@given(key=st.integers(0, 2**64 - 1), buckets=st.integers(1, 50))
def test_jump_hash_moves_a_key_only_to_a_new_bucket(key: int, buckets: int) -> None:
    """Adding a Redis server moves a channel only onto the new one, never between old ones."""
    before, after = jump_hash(key, buckets), jump_hash(key, buckets + 1)
    assert 0 <= before < buckets and after in (before, buckets)


@given(data=st.binary(max_size=64))
def test_any_bytes_on_a_topic_are_ignored_or_handed_over_never_raise(data: bytes) -> None:
    """Whatever arrives on a topic (another program's publish, say): no exception, and a seq only if it parses."""
    broker = RedisBroker(["redis://127.0.0.1:1/0"])
    events = Events()
    broker.events = events
    broker.arrived("mp:c:room:x", data)
    broker.arrived("mp:control", data)
    for channel, seq, _ in events.messages:
        assert channel == "room:x" and isinstance(seq, int)


def test_a_process_started_while_redis_is_away_catches_up_once_it_comes() -> None:
    """Redis not there at start-up: the broker starts down, and its channels are reported once Redis comes."""
    redis = RedisProcess(require_redis())

    async def scenario() -> tuple[bool, Events]:
        broker = RedisBroker([redis.url], timeout=0.3)
        events = Events()
        await broker.start(events)
        down = not broker.up
        await broker.subscribe("room:x")  # returns at once: subscribed when Redis comes
        redis.start()
        await _until(lambda: broker.up)
        await broker.close()
        return down, events

    try:
        down, events = asyncio.run(scenario())
    finally:
        redis.stop()
    assert down and events.recovered == [["room:x"]]
