"""Group commit, property-tested against the real store: whatever batch of
publishes arrives at once, some of them unstorable, every storable one is stored
once, seq stays gapless, and only the unstorable ones fail."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.errors import ApiError
from server.messages import Messages, Published
from server.storage import Storage
from tests.mongo_process import StoreProcess

# Data BSON cannot hold, each refused by the driver before anything is sent.
UNSTORABLE: list[dict[str, Any]] = [{"big": 2**64}, {"small": -(2**63) - 1}, {"nul\x00key": 1}, {"s": "\ud800"},
                                    {"deep": {"\udfff": 1}}]

publishes = st.lists(
    st.tuples(st.booleans(),  # storable?
              st.sampled_from(["u1", "u2"]),  # sender
              st.one_of(st.none(), st.sampled_from(["c1", "c2", "c3"])),  # cid
              st.integers(0, len(UNSTORABLE) - 1)),  # which unstorable data
    min_size=1, max_size=25)


class Runner:
    """An event loop of its own, with Messages on the session's store."""

    def __init__(self, uri: str) -> None:
        self.loop = asyncio.new_event_loop()  # every example runs here
        self.db = f"gc_{uuid.uuid4().hex[:10]}"  # this test's database
        self.storage = self.loop.run_until_complete(self._storage(uri))  # motor, bound to the loop
        self.messages = Messages(self.storage)  # the code under test

    async def _storage(self, uri: str) -> Storage:
        storage = Storage(uri, self.db)
        await storage.ensure_indexes()
        return storage

    def close(self) -> None:
        self.storage.close()
        self.loop.close()


@pytest.fixture
def runner(store: StoreProcess, client: pymongo.MongoClient) -> Iterator[Runner]:
    runner = Runner(store.uri)
    yield runner
    runner.close()
    client.drop_database(runner.db)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=publishes, split=st.integers(0, 25), pause=st.integers(0, 3))
def test_storable_publishes_are_stored_once_whatever_their_neighbours(runner: Runner, client: pymongo.MongoClient,
                                                                      batch: list[tuple[bool, str, str | None, int]],
                                                                      split: int, pause: int) -> None:
    """Publishes arriving together or in two waves, some unstorable, some repeating a cid: each storable one
    is stored once (a repeated cid answers the first), only unstorable ones fail (invalid_request), seq is
    1..n without a gap and delivered in order."""
    channel = f"feed:{uuid.uuid4().hex[:12]}"
    delivered: list[int] = []
    datas = [{"n": i} if good else UNSTORABLE[which] for i, (good, _, _, which) in enumerate(batch)]

    async def publish_all() -> list[Published | BaseException]:
        """The first ``split`` publishes, then (``pause`` loop turns later, while they are being stored) the rest."""
        tasks = []
        for index, (data, (_, sender, cid, _)) in enumerate(zip(datas, batch, strict=True)):
            if index == split:
                for _ in range(pause):
                    await asyncio.sleep(0.001)
            tasks.append(asyncio.ensure_future(
                runner.messages.publish(channel, sender, data, cid, lambda m: delivered.append(m["seq"]))))
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = runner.loop.run_until_complete(publish_all())
    stored_keys: dict[tuple[str, str], int] = {}  # (sender, cid) -> the index that stored it
    for index, ((good, sender, cid, _), outcome) in enumerate(zip(batch, outcomes, strict=True)):
        earlier = stored_keys.get((sender, cid)) if cid is not None else None
        if earlier is not None:  # a retried cid: the first answer, whatever the data
            assert isinstance(outcome, Published) and not outcome.new
            assert outcome.message["data"] == {"n": earlier}
        elif good:
            assert isinstance(outcome, Published) and outcome.new, outcome
            assert outcome.message["data"] == {"n": index}
            if cid is not None:
                stored_keys[(sender, cid)] = index
        else:
            assert isinstance(outcome, ApiError) and outcome.code == "invalid_request", outcome
    docs = list(client[runner.db].messages.find({"channel": channel}).sort("seq", 1))
    assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
    assert delivered == [d["seq"] for d in docs]
    new = [o for o in outcomes if isinstance(o, Published) and o.new]
    assert sorted(o.message["seq"] for o in new) == [d["seq"] for d in docs]
    assert sorted(d["data"]["n"] for d in docs) == sorted(o.message["data"]["n"] for o in new)
