"""Nodes of one deployment (server/fanout/node.py) on a real Redis and the real
embedded store: every node delivers every message of a channel once, in seq
order, however the processes' publishes interleave and through Redis restarts."""

from __future__ import annotations

import asyncio
from typing import Any

from server.messages import Messages
from server.protocol import encode_message_push
from server.realtime.brokers.redis import RedisBroker
from server.realtime.node import Node
from server.realtime.presence_redis import RedisPresence
from server.storage import Storage
from tests.helpers.redis_process import RedisProcess
from tests.mongo_process import StoreProcess


class Local:
    """A hub standing in: records what the node delivers."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = {}  # channel -> seqs delivered, in order
        self.pushes: list[bytes] = []  # seq 0 pushes

    def deliver(self, channel: str, seq: int, payload: bytes) -> None:
        if seq:
            self.seqs.setdefault(channel, []).append(seq)
        else:
            self.pushes.append(payload)

    def forget(self, channel: str) -> None:
        return None


async def _node(uri: str, database: str, redis_url: str, delay: float = 0.0) -> tuple[Node, Messages, Local, Storage]:
    storage = Storage(uri, database)
    await storage.wait_until_ready()
    await storage.ensure_indexes()
    messages = Messages(storage)

    async def fetch(channel: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        found, _ = await messages.history(channel, None, after, limit)
        return [(m["seq"], encode_message_push(m)) for m in found]

    broker = RedisBroker([redis_url], timeout=0.5, publish_delay=delay)
    node = Node(broker, RedisPresence([redis_url], broker.node, timeout=0.5), fetch, messages.last_seq)
    local = Local()
    node.bind(local)
    await node.start()
    return node, messages, local, storage


async def _publish(node: Node, messages: Messages, channel: str, count: int) -> None:
    async def one(n: int) -> Any:
        return await messages.publish(channel, "p", {"n": n}, None,
                                      deliver=lambda m: node.published(channel, m["seq"], encode_message_push(m)))

    await asyncio.gather(*(one(n) for n in range(count)))


async def _settle(locals_: list[Local], channel: str, total: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(len(local.seqs.get(channel, [])) < total for local in locals_):
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # anything doubled would arrive now


def test_three_publishing_processes_one_delayed_every_node_gets_each_seq_once_in_order(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """Three nodes publish into one channel at once, one's Redis publishes held back: each delivers 1..N in order."""
    async def scenario() -> tuple[list[list[int]], int]:
        nodes = [await _node(store.uri, database, redis.url, delay) for delay in (0.0, 0.0, 0.08)]
        for node, *_ in nodes:
            await node.acquire("room:r")
        for _ in range(3):
            await asyncio.gather(*(_publish(node, messages, "room:r", 20) for node, messages, _, _ in nodes))
        await _settle([local for _, _, local, _ in nodes], "room:r", 180)
        held = sum(node.orderer.held for node, *_ in nodes)
        for node, _, _, storage in nodes:
            await node.close()
            storage.close()
        return [local.seqs["room:r"] for _, _, local, _ in nodes], held

    seqs, held = asyncio.run(scenario())
    assert held > 0  # the reordering path ran: messages arrived ahead of missing ones
    for delivered in seqs:
        assert delivered == list(range(1, 181))


def test_redis_killed_mid_stream_every_node_ends_with_every_message_once_in_order(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """kill -9 of Redis while two nodes publish, then a restart: nothing lost or doubled, in order."""
    async def scenario() -> tuple[list[list[int]], bool, int]:
        nodes = [await _node(store.uri, database, redis.url) for _ in range(2)]
        for node, *_ in nodes:
            await node.acquire("feed:f")

        async def stream(node: Node, messages: Messages) -> None:
            for _ in range(30):
                await _publish(node, messages, "feed:f", 2)
                await asyncio.sleep(0.01)

        publishing = asyncio.gather(*(stream(node, messages) for node, messages, _, _ in nodes))
        await asyncio.sleep(0.1)
        redis.kill()
        await asyncio.sleep(0.3)
        down = not any(node.broker.up for node, *_ in nodes)
        redis.start()
        await publishing
        await _settle([local for _, _, local, _ in nodes], "feed:f", 120)
        filled = sum(node.orderer.fills for node, *_ in nodes)
        for node, _, _, storage in nodes:
            await node.close()
            storage.close()
        return [local.seqs["feed:f"] for _, _, local, _ in nodes], down, filled

    seqs, down, filled = asyncio.run(scenario())
    assert down and filled > 0  # Redis was seen down, and what it lost came from MongoDB
    for delivered in seqs:
        assert delivered == list(range(1, 121))


def test_control_messages_reach_every_other_node_and_ask_gathers_their_answers(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """tell reaches the other nodes (not the sender); ask returns one answer per other live node."""
    async def scenario() -> tuple[list[str], list[tuple[str, Any]], list[str]]:
        nodes = [await _node(store.uri, database, redis.url) for _ in range(3)]
        told: list[str] = []
        for index, (node, *_) in enumerate(nodes):
            node.on("hello", lambda message, i=index: told.append(f"{i}:{message['who']}"))
            node.on("count", lambda message, i=index: {"n": i})
        nodes[0][0].tell("hello", who="zero")
        answers = await nodes[0][0].ask("count")
        await asyncio.sleep(0.1)
        ids = [node.node for node, *_ in nodes]
        for node, _, _, storage in nodes:
            await node.close()
            storage.close()
        return sorted(told), sorted(answers, key=lambda a: a[1]["n"]), ids

    told, answers, ids = asyncio.run(scenario())
    assert told == ["1:zero", "2:zero"]
    assert answers == [(ids[1], {"n": 1}), (ids[2], {"n": 2})]


def test_any_control_message_bytes_are_refused_quietly() -> None:
    """A control message that is not a known op (any bytes) is logged and ignored, never raises."""
    from hypothesis import given
    from hypothesis import strategies as st

    from server.realtime.brokers.memory import MemoryBroker
    from server.realtime.presence import MemoryPresence

    async def fetch(channel: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        return []

    async def last(channel: str) -> int:
        return 0

    @given(data=st.one_of(st.binary(max_size=40), st.sampled_from([b"[1]", b"1", b'{"op":1}', b'{"op":"nope"}',
                                                                   b'{"op":"answer"}'])))
    def check(data: bytes) -> None:
        async def scenario() -> None:
            broker = MemoryBroker()
            node = Node(broker, MemoryPresence(broker.node), fetch, last)
            node.on_control(data)
            await asyncio.sleep(0)

        asyncio.run(scenario())

    check()
