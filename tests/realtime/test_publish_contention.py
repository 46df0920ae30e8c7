"""Two processes' stores (two ``Messages`` with their own seq hints, on one real
embedded store) publishing into one channel at once: the seqs they take are
1..N without a gap or a double, each hands its messages on in seq order, and a
seq taken by the other is met by inserting the rest of the batch again after
the channel's new last seq, not by storing message by message."""

from __future__ import annotations

import asyncio

from server.messages import Messages
from server.storage import Storage
from tests.mongo_process import StoreProcess


def test_two_stores_publishing_into_one_channel_take_turns_by_batch(store: StoreProcess, database: str) -> None:
    async def scenario() -> tuple[list[list[int]], list[int], list[int], int]:
        stores = []
        for _ in range(2):
            storage = Storage(store.uri, database)
            await storage.wait_until_ready()
            await storage.ensure_indexes()
            stores.append(Messages(storage))
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
        return handed, answered, sorted(await _stored(stores[0])), one_at_a_time[0]

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
