"""$lookup reads only the foreign documents it joins, chunk by chunk, within the
memory limit: the same joins as the whole-collection engine (hypothesis), and
292 past the limit (a real store with a small --blocking-memory-limit)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedded_mongo.engine import Engine, compile_filter
from embedded_mongo.pipeline import Pipeline
from tests.mongo_process import StoreProcess
from tests.strategies import PROPERTY

MEMORY_LIMIT = 60_000  # bytes a blocking stage (and a lookup) may hold: small, so the tests stay small
ENGINE = Engine()
# No booleans: the whole-collection engine (mongomock) joins true to 1, which MongoDB and
# the chunked lookup (the store's own filter picks the foreign documents) do not.
SCALARS = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "b", 1.0]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.fixed_dictionaries({"x": SCALARS}))
LOCAL = st.lists(st.fixed_dictionaries({}, optional={"k": VALUES, "n": st.fixed_dictionaries({"k": VALUES})}),
                 max_size=150)
FOREIGN = st.lists(st.fixed_dictionaries({}, optional={"f": VALUES, "g": st.fixed_dictionaries({"f": VALUES})}),
                   max_size=30)


@PROPERTY
@given(LOCAL, FOREIGN, st.sampled_from([("k", "f"), ("n.k", "f"), ("k", "g.f"), ("n.k", "g.f")]))
def test_a_chunked_lookup_joins_as_the_whole_collection_does(local: list[dict[str, Any]],
                                                             foreign: list[dict[str, Any]],
                                                             fields: tuple[str, str]) -> None:
    """Arrays, nulls, missing and nested fields, over several chunks: the same joins as reading the whole collection."""
    local = [{"_id": i, **doc} for i, doc in enumerate(local)]
    foreign = [{"_id": i, **doc} for i, doc in enumerate(foreign)]
    stage = {"$lookup": {"from": "other", "localField": fields[0], "foreignField": fields[1], "as": "joined"}}
    queries: list[dict[str, Any]] = []

    def find(name: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        queries.append(query)
        matches = compile_filter(query)
        return [doc for doc in foreign if matches(doc)]

    whole = ENGINE.run_stages([dict(d) for d in local], [stage], ENGINE.pipeline_database({"other": foreign}))
    chunked = list(Pipeline(ENGINE, ENGINE.pipeline_database({}), find).run([dict(d) for d in local], [stage]))
    assert chunked == whole
    assert all(q for q in queries)  # each chunk asked for its values, never for the whole collection


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    process = StoreProcess(str(tmp_path_factory.mktemp("lookup")), "--blocking-memory-limit",
                           str(MEMORY_LIMIT)).start()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(process.uri)
    client.lk.users.create_index("uid")
    client.lk.users.insert_many([{"uid": i, "pad": "x" * 200} for i in range(2_000)])  # ~ 1.4 MB held: over
    client.lk.messages.insert_many([{"_id": i, "from": i * 7 % 2_000} for i in range(300)])
    client.lk.crowd.insert_many([{"_id": i, "from": 1} for i in range(3)])
    client.lk.users.insert_many([{"uid": 1, "pad": "y" * 200} for _ in range(300)])  # user 1 is many: ~200 KB
    client.close()
    yield process
    process.stop()


@pytest.fixture
def db(store: StoreProcess) -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store.uri)
    yield client.lk
    client.close()


def test_a_lookup_holds_only_what_it_joins(db: Any) -> None:
    """Joining 300 messages to 2,000 users (more than the limit, whole) holds each chunk's users only."""
    joined = list(db.messages.aggregate([
        {"$match": {"_id": {"$ne": 143}}},  # 143 * 7 % 2000 == 1: the crowded user
        {"$lookup": {"from": "users", "localField": "from", "foreignField": "uid", "as": "who"}}]))
    assert len(joined) == 299
    assert all([u["uid"] for u in doc["who"]] == [doc["from"]] for doc in joined)


def test_a_lookup_joining_more_than_the_limit_is_292(db: Any) -> None:
    """A chunk whose joined documents pass the memory limit answers 292 (a join is never spilled)."""
    with pytest.raises(pymongo.errors.OperationFailure) as caught:
        list(db.crowd.aggregate([{"$lookup": {"from": "users", "localField": "from", "foreignField": "uid",
                                              "as": "who"}}]))
    assert caught.value.code == 292


def test_a_graph_lookup_reading_more_than_the_limit_is_292(db: Any) -> None:
    """$graphLookup (which reads its collection whole) counts it against the limit: 292, not unbounded memory."""
    with pytest.raises(pymongo.errors.OperationFailure) as caught:
        list(db.messages.aggregate([{"$graphLookup": {"from": "users", "startWith": "$from",
                                                      "connectFromField": "uid", "connectToField": "uid",
                                                      "as": "chain"}}]))
    assert caught.value.code == 292
