"""The per-channel ordering (server/fanout/ordering.py): any arrival order, loss or
duplication of seqs 1..N ends with exactly 1..N delivered, in order."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from server.realtime.ordering import ChannelOrder, Orderer

_events = st.lists(st.one_of(st.tuples(st.just("offer"), st.integers(1, 40)),
                             st.tuples(st.just("fill"), st.integers(0, 8))), max_size=120)


def _stored(after: int, count: int, newest: int) -> list[tuple[int, bytes]]:
    return [(seq, b"m%d" % seq) for seq in range(after + 1, min(newest, after + count) + 1)]


@given(newest=st.integers(0, 40), events=_events)
def test_any_interleaving_of_arrivals_and_reads_delivers_each_seq_once_in_order(
        newest: int, events: list[tuple[str, int]]) -> None:
    """Arrivals in any order, lost or repeated, and partial MongoDB reads: 1..N once, in order."""
    order = ChannelOrder(0)
    delivered: list[int] = []
    for kind, value in events:
        if kind == "offer" and value <= newest:
            released = order.offer(value, b"m%d" % value)
        elif kind == "fill":
            released = order.fill(_stored(order.last, value, newest))
        else:
            continue
        assert all(payload == b"m%d" % seq for seq, payload in released)
        delivered += [seq for seq, _ in released]
        assert delivered == list(range(1, len(delivered) + 1))  # never out of order, never twice
    while order.last < newest:  # the catch-up after an outage: everything after last
        delivered += [seq for seq, _ in order.fill(_stored(order.last, 7, newest))]
    assert delivered == list(range(1, newest + 1)) and not order.gap


def test_a_read_behind_the_writes_releases_nothing_out_of_order() -> None:
    """A MongoDB read that skips a seq (behind a write) releases only the contiguous part."""
    order = ChannelOrder(3)
    assert order.offer(6, b"6") == [] and order.gap
    assert [s for s, _ in order.fill([(4, b"4"), (6, b"6")])] == [4]
    assert [s for s, _ in order.offer(5, b"5")] == [5, 6] and not order.gap
    assert order.offer(5, b"5") == [] and order.offer(2, b"2") == []


@settings(max_examples=30, deadline=None)
@given(newest=st.integers(1, 30), arrivals=st.lists(st.integers(1, 30), max_size=60))
def test_the_orderer_fills_every_gap_from_the_store(newest: int, arrivals: list[int]) -> None:
    """Live arrivals with losses and repeats, gaps filled by the timer's reads: 1..N, once, in order."""
    stored = {seq: b"m%d" % seq for seq in range(1, newest + 1)}

    async def scenario() -> list[int]:
        delivered: list[int] = []

        async def fetch(channel: str, after: int, limit: int) -> list[tuple[int, bytes]]:
            await asyncio.sleep(0)
            return [(s, stored[s]) for s in range(after + 1, min(newest, after + limit) + 1)]

        orderer = Orderer(lambda channel, seq, payload: delivered.append(seq), fetch, wait=0.001)
        orderer.serve("room:a", 0)
        for seq in [s for s in arrivals if s <= newest] + [newest]:
            orderer.offer("room:a", seq, stored[seq])
            await asyncio.sleep(0)
        for _ in range(500):
            if orderer.last("room:a") == newest and not orderer._filling:
                break
            await asyncio.sleep(0.002)
        orderer.stop("room:a")
        return delivered

    assert asyncio.run(scenario()) == list(range(1, newest + 1))


def test_a_channel_of_unknown_start_begins_at_its_first_message_and_others_are_dropped() -> None:
    """serve(channel, None): the first message sets the start; unserved channels deliver nothing."""
    async def scenario() -> list[tuple[str, int]]:
        delivered: list[tuple[str, int]] = []

        async def fetch(channel: str, after: int, limit: int) -> list[tuple[int, bytes]]:
            return []

        orderer = Orderer(lambda channel, seq, payload: delivered.append((channel, seq)), fetch)
        orderer.serve("feed:a", None)
        for seq in (7, 8, 8, 6):
            orderer.offer("feed:a", seq, b"")
        orderer.offer("feed:b", 1, b"")
        orderer.stop("feed:a")
        orderer.offer("feed:a", 9, b"")
        return delivered

    assert asyncio.run(scenario()) == [("feed:a", 7), ("feed:a", 8)]


def test_a_catch_up_during_a_gap_read_reads_the_tail_after_it() -> None:
    """The broker recovers while a gap is being filled: what was stored after that read began is read too."""
    stored = {seq: b"m%d" % seq for seq in range(1, 4)}

    async def scenario() -> list[int]:
        delivered: list[int] = []
        reading = asyncio.Event()

        async def fetch(channel: str, after: int, limit: int) -> list[tuple[int, bytes]]:
            found = [(s, stored[s]) for s in sorted(stored) if after < s <= after + limit]
            reading.set()
            await asyncio.sleep(0.01)
            return found

        orderer = Orderer(lambda channel, seq, payload: delivered.append(seq), fetch, wait=0.001)
        orderer.serve("feed:a", 0)
        orderer.offer("feed:a", 3, stored[3])  # 1 and 2 missing: a gap read starts
        await reading.wait()
        stored.update({seq: b"m%d" % seq for seq in range(4, 11)})  # published while Redis was away
        orderer.catch_up("feed:a")  # Redis is back
        for _ in range(300):
            if orderer.last("feed:a") == 10 and not orderer._filling:
                break
            await asyncio.sleep(0.005)
        return delivered

    assert asyncio.run(scenario()) == list(range(1, 11))


def test_a_busy_loop_takes_the_missing_message_from_the_socket_before_reading_mongodb() -> None:
    """The missing seq is in the broker's socket when the gap wait expires, both seen in one loop turn of a busy
    process: the read from MongoDB starts as a task, a turn later, after the reader's task has offered the
    message, so it is delivered from the socket and MongoDB is not read (a guard: a fill started synchronously
    would read it again)."""
    import socket
    import time

    async def scenario() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        delivered: list[int] = []
        reads = 0

        async def fetch(channel: str, after: int, count: int) -> list[tuple[int, bytes]]:
            nonlocal reads
            reads += 1
            return [(seq, b"m%d" % seq) for seq in range(after + 1, 3)]

        orderer = Orderer(lambda channel, seq, payload: delivered.append(seq), fetch, wait=0.05)
        orderer.serve("room:x", 0)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(ours, lambda: readable.done() or readable.set_result(None))

        async def reader() -> None:  # as the broker's: the socket's data wakes a task, which offers the message
            await readable
            orderer.offer("room:x", 1, b"m1")

        task = asyncio.ensure_future(reader())
        orderer.offer("room:x", 2, b"m2")  # seq 1 is missing: the gap wait starts
        theirs.send(b"1")  # seq 1 arrives...
        time.sleep(0.08)  # ...while the loop is busy past the wait
        await asyncio.wait_for(task, 1)
        await asyncio.sleep(0.1)
        loop.remove_reader(ours)
        ours.close()
        theirs.close()
        return delivered, reads

    delivered, reads = asyncio.run(scenario())
    assert delivered == [1, 2]
    assert reads == 0
