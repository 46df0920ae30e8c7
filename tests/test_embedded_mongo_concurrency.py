"""Long operations in the store: other clients go on, maxTimeMS, currentOp/killOp, memory limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo.errors import OperationFailure

from tests.mongo_process import StoreProcess

MEMORY_LIMIT = 1_000_000  # bytes a blocking stage may hold: small, so the tests stay fast
# An aggregate that runs until it is stopped: 300 x 100 x 100 documents out of two $unwind.
ENDLESS = [{"$unwind": "$a"}, {"$unwind": "$b"}, {"$group": {"_id": "$a", "n": {"$sum": "$b"}}}]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    process = StoreProcess(str(tmp_path_factory.mktemp("concurrency")), "--blocking-memory-limit",
                           str(MEMORY_LIMIT)).start()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(process.uri)
    db = client.conc
    db.big.insert_many([{"_id": i, "k": i % 7, "text": f"message {i}", "pad": "x" * 100} for i in range(20_000)])
    db.fat.insert_many([{"a": list(range(100)), "b": list(range(100))} for _ in range(300)])
    client.close()
    yield process
    process.stop()


@pytest.fixture
def clients(store: StoreProcess) -> Iterator[tuple[pymongo.MongoClient[dict[str, Any]], ...]]:
    made: list[pymongo.MongoClient[dict[str, Any]]] = [pymongo.MongoClient(store.uri) for _ in range(2)]
    yield tuple(made)
    for client in made:
        client.close()


def _running(client: pymongo.MongoClient[dict[str, Any]], ns: str) -> dict[str, Any] | None:
    """The first operation currentOp shows on ``ns``, waiting until there is one."""
    for _ in range(500):
        ops = client.admin.command("currentOp", {"$all": True})["inprog"]
        found = [op for op in ops if op.get("ns") == ns and op.get("active")]
        if found:
            return found[0]
        time.sleep(0.01)
    return None


def _in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:  # the test looks at it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_long_aggregate_leaves_others_running_and_killop_stops_it(clients) -> None:
    """While one client's aggregate runs, another's inserts and indexed finds finish; killOp then stops it (11601)."""
    admin, other = clients
    thread, outcome = _in_thread(lambda: list(admin.conc.fat.aggregate(ENDLESS, maxTimeMS=120_000)))
    op = _running(other, "conc.fat")
    assert op is not None, "the aggregate never showed in currentOp"
    assert {"opid", "ns", "command", "secs_running", "client"} <= set(op)
    assert op["command"]["pipeline"] == ENDLESS
    for i in range(20):
        other.conc.side.insert_one({"_id": i})
        assert other.conc.big.find_one({"_id": i * 100})["k"] == (i * 100) % 7
    assert other.conc.side.count_documents({}) == 20
    assert _running(other, "conc.fat")["opid"] == op["opid"], "the aggregate ended before the others' commands"
    assert other.admin.command("killOp", op=op["opid"])["ok"] == 1.0
    thread.join(60)
    assert isinstance(outcome.get("error"), OperationFailure)
    assert outcome["error"].code == 11601


NO_MATCH = {"text": {"$regex": "zzz"}}  # read in every document of conc.big, and matches none


@pytest.mark.parametrize("command", [
    {"find": "big", "filter": NO_MATCH},
    {"aggregate": "fat", "pipeline": ENDLESS, "cursor": {}},
    {"count": "big", "query": NO_MATCH},
    {"distinct": "big", "key": "k", "query": NO_MATCH},
    {"findAndModify": "big", "query": NO_MATCH, "update": {"$set": {"y": 1}}},
    {"update": "big", "updates": [{"q": NO_MATCH, "u": {"$set": {"y": 1}}, "multi": True}]},
    {"delete": "big", "deletes": [{"q": NO_MATCH, "limit": 0}]},
])
def test_max_time_ms_expires_with_code_50(clients, command: dict[str, Any]) -> None:
    """Each read and write command past its maxTimeMS answers MaxTimeMSExpired (50)."""
    with pytest.raises(OperationFailure) as caught:
        clients[0].conc.command({**command, "maxTimeMS": 2})
    assert caught.value.code == 50
    assert caught.value.details["codeName"] == "MaxTimeMSExpired"


def test_insert_past_max_time_ms_applies_nothing(clients) -> None:
    """A batch insert that runs out of time answers 50 and stores none of its documents."""
    docs = [{"batch": "late", "n": i, "pad": "y" * 200} for i in range(20_000)]
    with pytest.raises(OperationFailure) as caught:
        clients[0].conc.command({"insert": "late", "documents": docs, "maxTimeMS": 1})
    assert caught.value.code == 50
    assert clients[0].conc.late.count_documents({}) == 0


def test_group_past_the_memory_limit(clients, store: StoreProcess) -> None:
    """A $group over the memory limit answers 292 with allowDiskUse false, and spills and succeeds by default."""
    pipeline = [{"$group": {"_id": "$_id", "texts": {"$push": "$text"}, "pads": {"$addToSet": "$pad"},
                            "k": {"$max": "$k"}, "avg": {"$avg": "$_id"}, "n": {"$sum": 1}}}]
    with pytest.raises(OperationFailure) as caught:
        list(clients[0].conc.big.aggregate(pipeline, allowDiskUse=False))
    assert caught.value.code == 292
    assert caught.value.details["codeName"] == "QueryExceededMemoryLimitNoDiskUseAllowed"
    before = _spills(clients[0])
    groups = list(clients[0].conc.big.aggregate(pipeline))
    assert _spills(clients[0]) > before
    assert [g["_id"] for g in groups] == list(range(20_000))
    assert groups[123] == {"_id": 123, "texts": ["message 123"], "pads": ["x" * 100], "k": 123 % 7,
                           "avg": 123.0, "n": 1}


def test_group_with_few_groups_merges_chunks(clients) -> None:
    """A $group over many documents into few groups gives the same sums, averages and extremes as computed here."""
    got = {g["_id"]: g for g in clients[0].conc.big.aggregate([
        {"$group": {"_id": "$k", "n": {"$sum": 1}, "total": {"$sum": "$_id"}, "avg": {"$avg": "$_id"},
                    "low": {"$min": "$_id"}, "high": {"$max": "$_id"}, "first": {"$first": "$_id"},
                    "last": {"$last": "$_id"}, "c": {"$count": {}}}}])}
    for k in range(7):
        ids = [i for i in range(20_000) if i % 7 == k]
        assert got[k] == {"_id": k, "n": len(ids), "total": sum(ids), "avg": sum(ids) / len(ids), "low": ids[0],
                          "high": ids[-1], "first": ids[0], "last": ids[-1], "c": len(ids)}


def test_unindexed_sort_past_the_memory_limit(clients) -> None:
    """find().sort() on an unindexed field over the limit answers 292 without disk use, and sorts by spilling."""
    coll = clients[0].conc.big
    with pytest.raises(OperationFailure) as caught:
        list(coll.find({}, {"text": 1}).sort([("text", -1), ("_id", 1)]).allow_disk_use(False))
    assert caught.value.code == 292
    before = _spills(clients[0])
    found = [d["text"] for d in coll.find({}, {"text": 1}).sort([("text", -1), ("_id", 1)])]
    assert found == sorted((f"message {i}" for i in range(20_000)), reverse=True)
    staged = [d["_id"] for d in coll.aggregate([{"$project": {"pad": 1, "k": 1}}, {"$sort": {"k": 1, "_id": -1}}])]
    assert staged == sorted(range(20_000), key=lambda i: (i % 7, -i))
    assert _spills(clients[0]) >= before + 2


def _spills(client: pymongo.MongoClient[dict[str, Any]]) -> int:
    metrics = client.admin.command("serverStatus")["metrics"]["query"]
    return int(metrics["sort"]["spillToDisk"] + metrics["group"]["spills"])


def test_cursor_stays_valid_across_concurrent_writes(clients) -> None:
    """A cursor's getMore batches go on while another client writes; every original document comes once."""
    reader, writer = clients
    cursor = reader.conc.big.find({"k": 3}, batch_size=50)
    seen = []
    for position, doc in enumerate(cursor):
        seen.append(doc["_id"])
        if position % 200 == 0:
            writer.conc.big.insert_one({"_id": 100_000 + position, "k": 3})
            writer.conc.big.update_one({"_id": 3 + 7 * position}, {"$set": {"touched": True}})
    original = [i for i in range(20_000) if i % 7 == 3]
    assert [i for i in seen if i < 20_000] == original
    assert len(seen) == len(set(seen))
    writer.conc.big.delete_many({"_id": {"$gte": 100_000}})


def test_current_op_and_kill_op_need_admin_and_a_number(clients) -> None:
    """currentOp and killOp answer only on the admin database, and killOp takes a numeric opid."""
    with pytest.raises(OperationFailure) as caught:
        clients[0].conc.command("currentOp")
    assert caught.value.code == 13
    with pytest.raises(OperationFailure) as caught:
        clients[0].admin.command("killOp", op="nope")
    assert caught.value.code == 14
    assert clients[0].admin.command("killOp", op=987654321)["ok"] == 1.0
    staged = list(clients[0].admin.aggregate([{"$currentOp": {}}, {"$match": {"ns": "admin.$cmd"}}]))
    assert staged and staged[0]["command"]["aggregate"] == 1


def test_reads_never_see_half_a_write(clients) -> None:
    """Counts on the reader threads, taken while 100-document batches are inserted, are always whole batches."""
    reader, writer = clients
    thread, outcome = _in_thread(lambda: [writer.conc.batches.insert_many([{"b": b, "i": i} for i in range(100)])
                                          for b in range(30)])
    counts = []
    while thread.is_alive():
        counts.append(reader.conc.batches.count_documents({"i": {"$gte": 0}}))
    thread.join(60)
    assert "error" not in outcome
    counts.append(reader.conc.batches.count_documents({"i": {"$gte": 0}}))
    assert all(n % 100 == 0 for n in counts), counts
    assert counts[-1] == 3000


def test_a_collection_being_created_reads_as_empty_not_dropped(clients) -> None:
    """A read racing the first insert (which creates the collection) sees nothing or the committed batch, never 175
    (CI once met 175: the writer's nesting depth, which this used to look at, drops to 0 before COMMIT returns)."""
    reader, writer = clients
    seen: set[int] = set()
    for round_ in range(40):
        name = f"fresh{round_}"
        thread, outcome = _in_thread(lambda name=name: writer.conc[name].insert_many([{"i": i} for i in range(200)]))
        while thread.is_alive():
            seen.add(reader.conc[name].count_documents({"i": {"$gte": 0}}))
            seen.add(reader.conc[name].estimated_document_count())  # the count command, from the table's size
        thread.join()
        assert "error" not in outcome
    assert seen <= {0, 200}


def test_a_read_racing_an_index_build_uses_another_plan(clients) -> None:
    """An index being built (in the catalog, its table not committed) is no plan for another client's read:
    the read answers every match, never an empty result or 175; once built, a hint may name it."""
    reader, writer = clients
    coll_name = "indexed_later"
    writer.conc[coll_name].insert_many([{"k": i % 10, "pad": "x" * 50} for i in range(5_000)])
    counts: set[int] = set()
    for round_ in range(10):
        name = f"k_{round_}"
        thread, outcome = _in_thread(lambda name=name: writer.conc[coll_name].create_index([("k", 1)], name=name))
        while thread.is_alive():
            counts.add(reader.conc[coll_name].count_documents({"k": 3}))
        thread.join()
        assert "error" not in outcome
        assert reader.conc[coll_name].count_documents({"k": 3}, hint=name) == 500
        writer.conc[coll_name].drop_index(name)
    assert counts == {500}


def test_a_cursors_max_time_ms_covers_its_getmores(clients) -> None:
    """maxTimeMS bounds the work of every batch of a cursor, as mongod's does: a huge result read in small
    batches answers 50 at a getMore (it used to bound the first batch only); the time between getMores does
    not count, so a cheap cursor read slowly still ends."""
    read = 0
    with pytest.raises(OperationFailure) as caught:  # 3,000,000 documents: seconds of work, past the limit
        for _ in clients[0].conc.fat.aggregate([{"$unwind": "$a"}, {"$unwind": "$b"}], batchSize=100,
                                               maxTimeMS=1000):
            read += 1
    assert caught.value.code == 50 and read >= 100  # past the first batch: a getMore stopped
    slow = clients[0].conc.big.find({}, batch_size=5000, max_time_ms=200)
    count = 0
    for _ in slow:
        count += 1
        if count % 5000 == 0:
            time.sleep(0.25)  # idle between getMores: not the cursor's time
    assert count == 20_000


def test_an_index_being_built_serves_its_own_transaction_only(tmp_path) -> None:
    """Inside the transaction that builds an index (an upsert batch that creates its collection, say), the
    writer's own plans use it (its table exists for the writer: no scan per statement); another thread's plans
    do not, until the transaction commits."""
    from embedded_mongo.query import choose
    from embedded_mongo.storage import Store

    store = Store(str(tmp_path), lambda spec: (lambda doc: True))
    plans: dict[str, Any] = {}

    def from_another_thread(key: str) -> None:
        reader = threading.Thread(target=lambda: plans.__setitem__(key, choose(coll, {"_id": 7}, [])))
        reader.start()
        reader.join()

    with store.transaction():
        coll = store.create("db", "fresh")
        plans["writer"] = choose(coll, {"_id": 7}, [])
        from_another_thread("reader, before the commit")
    from_another_thread("reader, after it")
    store.close()
    assert plans["writer"].index is not None and plans["writer"].index.name == "_id_"
    assert plans["reader, before the commit"].index is None
    assert plans["reader, after it"].index is not None
