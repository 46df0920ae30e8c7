"""Two processes' stores (two ``Messages`` with their own seq hints, on one real
embedded store) publishing into one channel at once: the seqs they take are
1..N without a gap or a double, each hands its messages on in seq order, and a
seq taken by the other is met by inserting the rest of the batch again after
the channel's new last seq, not by storing message by message."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.errors import AutoReconnect

from server.messages import Messages, _document
from server.storage import Storage, utcnow
from tests.mongo_process import StoreProcess


def test_two_stores_publishing_into_one_channel_take_turns_by_batch(store: StoreProcess, database: str) -> None:
    async def scenario() -> tuple[list[list[int]], list[int], list[int], int]:
        storages = [Storage(store.uri, database) for _ in range(2)]
        for storage in storages:
            await storage.wait_until_ready()
            await storage.ensure_indexes()
        stores = [Messages(storage) for storage in storages]
        handed: list[list[int]] = [[], []]  # each process's deliveries, in the order it made them
        one_at_a_time = [0]
        for messages in stores:
            real = messages._store_one

            async def counted(*args, _real=real):  # type: ignore[no-untyped-def]
                one_at_a_time[0] += 1
                return await _real(*args)

            messages._store_one = counted  # type: ignore[method-assign]

        async def burst(index: int, count: int) -> list[int]:
            results = await asyncio.gather(*(
                stores[index].publish("feed:f", "server", {"n": n}, None,
                                      deliver=lambda m, i=index: handed[i].append(m["seq"])) for n in range(count)))
            return [r.message["seq"] for r in results]

        answered: list[int] = []
        for _ in range(5):  # each round, both stores start a batch at once: their hints collide
            first, second = await asyncio.gather(burst(0, 40), burst(1, 40))
            answered += first + second
        stored = sorted(await _stored(stores[0]))
        for storage in storages:
            storage.close()
        return handed, answered, stored, one_at_a_time[0]

    async def _stored(messages: Messages) -> list[int]:
        found, _ = await messages.history("feed:f", None, 0, 1000)
        return [m["seq"] for m in found]

    handed, answered, stored, one_at_a_time = asyncio.run(scenario())
    assert stored == list(range(1, 401))
    assert sorted(answered) == stored  # every publish answered with its own seq
    assert sorted(handed[0] + handed[1]) == stored  # each message handed on once, by the process that stored it
    for seqs in handed:
        assert seqs == sorted(seqs)
    assert one_at_a_time == 0  # a seq taken elsewhere is retried as a batch


class _FailingSecondInsert:
    """The messages collection, with its second insert_many raising as a lost connection would, and the
    find that follows it (what was stored?) too."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.calls = 0
        self.find_fails = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def find(self, *args: Any, **options: Any) -> Any:
        if self.find_fails:
            self.find_fails = False
            raise AutoReconnect("connection lost")
        return self._collection.find(*args, **options)

    async def insert_many(self, docs: list[dict[str, Any]], **options: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            self.find_fails = True
            raise AutoReconnect("connection lost")
        return await self._collection.insert_many(docs, **options)


def test_a_later_round_that_fails_keeps_what_earlier_rounds_stored(store: StoreProcess, database: str) -> None:
    """A batch's first round stores three messages and meets a seq taken elsewhere; its second round fails
    (the database's answer lost, and the look at what was stored too). The three stand, answered and handed
    on once; the rest are stored one at a time: every publish succeeds, seqs 1..N with nothing twice."""
    async def scenario() -> tuple[list[int], list[int], list[int], int]:
        storage = Storage(store.uri, database)
        await storage.wait_until_ready()
        await storage.ensure_indexes()
        messages = Messages(storage)
        await messages.publish("feed:f", "server", {"n": 0}, None)  # seq 1; the hint says 1
        await storage["messages"].insert_one(_document("feed:f", 5, "other", {}, None, utcnow()))  # another process
        failing = _FailingSecondInsert(messages._messages)
        messages._messages = failing  # type: ignore[assignment]
        handed: list[int] = []
        results = await asyncio.gather(*(
            messages.publish("feed:f", "server", {"n": n}, None, deliver=lambda m: handed.append(m["seq"]))
            for n in range(1, 9)))
        found, _ = await messages.history("feed:f", None, 0, 100)
        storage.close()
        return [r.message["seq"] for r in results], handed, [m["seq"] for m in found], failing.calls

    answered, handed, stored, rounds = asyncio.run(scenario())
    assert rounds >= 2  # the second round ran, and failed
    assert stored == list(range(1, 11))  # 1, then 2-4 (the first round), the other's 5, then 6-10 one at a time
    assert sorted(answered) == [2, 3, 4, 6, 7, 8, 9, 10]  # every publish answered with its own seq
    assert handed == sorted(answered)  # each handed on once, in seq order
