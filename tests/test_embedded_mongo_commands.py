"""The embedded store's commands, through the real pymongo driver over a socket."""

from __future__ import annotations

import datetime
import re
import time

import pymongo
import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from embedded_mongo.keys import sort_key


def test_handshake_advertises_a_standalone_server(client: pymongo.MongoClient) -> None:
    """hello and buildInfo describe one standalone server of a stated version."""
    hello = client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert "setName" not in hello and "msg" not in hello
    assert hello["maxWireVersion"] == 21
    assert hello["maxBsonObjectSize"] == 16 * 1024 * 1024
    assert client.admin.command("isMaster")["ismaster"] is True
    info = client.admin.command("buildInfo")
    assert info["version"] == "7.0.0" and info["versionArray"][:2] == [7, 0]
    assert client.topology_description.topology_type_name == "Single"


@pytest.mark.parametrize("command", ["ping", "serverStatus", "connectionStatus", "hostInfo", "listDatabases",
                                     "getCmdLineOpts", "whatsmyuri"])
def test_admin_commands_answer_ok(client: pymongo.MongoClient, command: str) -> None:
    """Each administrative command answers ok: 1."""
    assert client.admin.command(command)["ok"] == 1.0


def test_server_status_and_parameters(client: pymongo.MongoClient) -> None:
    """serverStatus counts connections; getParameter gives the FCV."""
    status = client.admin.command("serverStatus")
    assert status["connections"]["current"] >= 1 and status["process"] == "mongod"
    fcv = client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
    assert fcv["featureCompatibilityVersion"]["version"] == "7.0"
    with pytest.raises(OperationFailure) as error:
        client.admin.command({"getParameter": 1, "noSuchParameter": 1})
    assert error.value.code == 72


def test_unknown_command_is_command_not_found(client: pymongo.MongoClient) -> None:
    """An unknown command gets CommandNotFound (59)."""
    with pytest.raises(OperationFailure) as error:
        client.admin.command("noSuchCommand")
    assert error.value.code == 59 and error.value.details["codeName"] == "CommandNotFound"


def test_transactions_and_change_streams_are_refused_like_a_standalone(client: pymongo.MongoClient, db) -> None:
    """Transactions get IllegalOperation (20) and change streams 40573, as a standalone mongod answers."""
    db.c.insert_one({"a": 1})
    with client.start_session() as session:
        with pytest.raises(OperationFailure) as error, session.start_transaction():
            db.c.insert_one({"a": 2}, session=session)
        assert error.value.code == 20
    with pytest.raises(OperationFailure) as stream_error:
        db.c.watch()
    assert stream_error.value.code == 40573
    assert db.c.count_documents({}) == 1


def test_retryable_write_fields_are_accepted(client: pymongo.MongoClient, db) -> None:
    """lsid and txnNumber on a write (retryable writes) are accepted."""
    reply = db.command({"insert": "c", "documents": [{"_id": 1}], "lsid": {"id": Binary(b"0" * 16, 4)},
                        "txnNumber": Int64(1)})
    assert reply["n"] == 1


def test_every_bson_type_round_trips(db) -> None:
    """ObjectId, dates, Decimal128, Int64, Binary, regex, timestamps and nesting come back unchanged."""
    doc = {
        "_id": ObjectId(),
        "date": datetime.datetime(2024, 5, 6, 7, 8, 9, 123000),
        "dec": Decimal128("12345.678901234567890"),
        "long": Int64(2**62),
        "int": 7,
        "double": 2.5,
        "bin": Binary(b"\x00\x01\xff", 0x80),
        "uuid": Binary(b"u" * 16, 4),
        "regex": Regex("^ab.*c$", "im"),
        "ts": Timestamp(1700000000, 3),
        "min": MinKey(),
        "max": MaxKey(),
        "none": None,
        "bool": True,
        "nested": {"a": [1, [2, 3], {"b": [{"c": "d"}]}], "e": {}},
        "empty": [],
        "unicode": "中文 ✓",
    }
    db.types.insert_one(doc)
    raw = db.types.with_options(codec_options=CodecOptions(document_class=dict)).find_one({"_id": doc["_id"]})
    assert raw == doc
    assert type(raw["long"]) is Int64 and type(raw["int"]) is int
    assert raw["bin"].subtype == 0x80


def test_insert_find_sort_projection_skip_limit(db) -> None:
    """find honours filter, sort, projection, skip and limit."""
    db.c.insert_many([{"_id": i, "n": i % 7, "s": f"v{i:03}", "tags": ["x", f"t{i % 3}"]} for i in range(50)])
    docs = list(db.c.find({"n": {"$gte": 3}}, {"s": 1, "_id": 0}).sort([("n", -1), ("s", 1)]).skip(2).limit(5))
    assert docs == [{"s": "v020"}, {"s": "v027"}, {"s": "v034"}, {"s": "v041"}, {"s": "v048"}]
    assert db.c.count_documents({"tags": "t1"}) == 17
    assert db.c.find_one({"s": {"$regex": "^v04"}, "n": {"$in": [5, 6]}})["_id"] == 40
    assert [d["_id"] for d in db.c.find({"$or": [{"_id": 3}, {"_id": {"$gt": 47}}]}).sort("_id", 1)] == [3, 48, 49]


def test_get_more_returns_every_batch(db) -> None:
    """A result larger than one batch arrives whole through getMore."""
    db.c.insert_many([{"i": i} for i in range(1000)])
    seen = [d["i"] for d in db.c.find({}, batch_size=7).sort("i", 1)]
    assert seen == list(range(1000))


def test_kill_cursors(client: pymongo.MongoClient, db) -> None:
    """killCursors closes an open cursor, and getMore on it then fails with CursorNotFound."""
    db.c.insert_many([{"i": i} for i in range(20)])
    first = db.command({"find": "c", "batchSize": 2})
    cursor_id = first["cursor"]["id"]
    assert cursor_id != 0
    killed = db.command({"killCursors": "c", "cursors": [cursor_id]})
    assert killed["cursorsKilled"] == [cursor_id]
    with pytest.raises(OperationFailure) as error:
        db.command({"getMore": cursor_id, "collection": "c"})
    assert error.value.code == 43


def test_update_operators_upsert_and_replace(db) -> None:
    """updates apply operators, upsert inserts from the filter, replace keeps the _id."""
    db.c.insert_one({"_id": 1, "n": 1, "arr": [1, 2, 3]})
    result = db.c.update_one({"_id": 1}, {"$inc": {"n": 2}, "$push": {"arr": 4}, "$set": {"x.y": "z"}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "n": 3, "arr": [1, 2, 3, 4], "x": {"y": "z"}}
    same = db.c.update_one({"_id": 1}, {"$set": {"n": 3}})
    assert (same.matched_count, same.modified_count) == (1, 0)
    upsert = db.c.update_one({"k": "new"}, {"$set": {"v": 1}}, upsert=True)
    assert upsert.upserted_id is not None
    assert db.c.find_one({"_id": upsert.upserted_id}, {"_id": 0}) == {"k": "new", "v": 1}
    db.c.replace_one({"_id": 1}, {"only": True})
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "only": True}
    many = db.c.update_many({}, {"$set": {"all": 1}})
    assert many.matched_count == 2 and many.modified_count == 2


def test_update_cannot_change_the_id(db) -> None:
    """Changing _id is ImmutableField (66) and leaves the document as it was."""
    db.c.insert_one({"_id": 1, "a": 1})
    with pytest.raises(pymongo.errors.WriteError) as error:
        db.c.update_one({"_id": 1}, {"$set": {"_id": 2}})
    assert error.value.code == 66
    with pytest.raises(pymongo.errors.WriteError):
        db.c.replace_one({"_id": 1}, {"_id": 3, "a": 2})
    assert db.c.find_one() == {"_id": 1, "a": 1}


def test_array_filters_and_pipeline_updates(db) -> None:
    """arrayFilters pick the elements to change; an update pipeline computes from the document."""
    db.c.insert_one({"_id": 1, "grades": [{"g": 80, "n": "a"}, {"g": 95, "n": "b"}, {"g": 70, "n": "c"}]})
    db.c.update_one({"_id": 1}, {"$set": {"grades.$[high].top": True}}, array_filters=[{"high.g": {"$gte": 90}}])
    grades = db.c.find_one()["grades"]
    assert [g.get("top") for g in grades] == [None, True, None]
    db.c.update_one({"_id": 1}, [{"$set": {"count": {"$size": "$grades"}}}])
    assert db.c.find_one()["count"] == 3


def test_delete_one_and_many(db) -> None:
    """delete_one removes one match and delete_many every match."""
    db.c.insert_many([{"k": i % 2} for i in range(10)])
    assert db.c.delete_one({"k": 0}).deleted_count == 1
    assert db.c.delete_many({"k": 1}).deleted_count == 5
    assert db.c.count_documents({}) == 4


def test_find_and_modify(db) -> None:
    """findAndModify returns the document before or after, upserts, removes, in sort order."""
    db.c.insert_many([{"_id": i, "q": "x", "v": i} for i in range(3)])
    before = db.c.find_one_and_update({"q": "x"}, {"$inc": {"v": 10}}, sort=[("v", -1)])
    assert before == {"_id": 2, "q": "x", "v": 2}
    after = db.c.find_one_and_update({"_id": 1}, {"$set": {"w": 1}}, return_document=pymongo.ReturnDocument.AFTER,
                                     projection={"_id": 0, "w": 1})
    assert after == {"w": 1}
    upserted = db.c.find_one_and_update({"_id": 9}, {"$set": {"v": 9}}, upsert=True,
                                        return_document=pymongo.ReturnDocument.AFTER)
    assert upserted == {"_id": 9, "v": 9}
    assert db.c.find_one_and_delete({"_id": 0}) == {"_id": 0, "q": "x", "v": 0}
    assert db.c.find_one_and_replace({"_id": 1}, {"r": 1}) is not None
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "r": 1}
    assert db.c.find_one_and_update({"_id": 404}, {"$set": {"a": 1}}) is None


def test_count_and_distinct(db) -> None:
    """count and distinct answer as mongod does, arrays unwound for distinct."""
    db.c.insert_many([{"a": 1, "t": ["x", "y"]}, {"a": 2, "t": ["y"]}, {"a": 2}, {"a": 1.0}])
    assert db.command({"count": "c"})["n"] == 4
    assert db.command({"count": "c", "query": {"a": 2}})["n"] == 2
    assert db.command({"count": "c", "skip": 1, "limit": 2})["n"] == 2
    assert db.c.estimated_document_count() == 4
    assert db.c.distinct("t") == ["x", "y"]
    assert sorted(db.c.distinct("a")) == [1, 2]
    assert db.c.distinct("a", {"t": "x"}) == [1]


def test_aggregate_common_stages(db) -> None:
    """aggregate runs $match, $group, $sort, $project, $unwind, $lookup, $count, $limit and $skip."""
    db.orders.insert_many([
        {"_id": 1, "user": "u1", "items": ["a", "b"], "total": 10},
        {"_id": 2, "user": "u2", "items": ["a"], "total": 5},
        {"_id": 3, "user": "u1", "items": [], "total": 7},
    ])
    db.users.insert_many([{"_id": "u1", "name": "Ann"}, {"_id": "u2", "name": "Bo"}])
    totals = list(db.orders.aggregate([
        {"$match": {"total": {"$gt": 4}}},
        {"$group": {"_id": "$user", "sum": {"$sum": "$total"}, "n": {"$sum": 1}}},
        {"$sort": {"sum": -1}},
    ]))
    assert totals == [{"_id": "u1", "sum": 17, "n": 2}, {"_id": "u2", "sum": 5, "n": 1}]
    unwound = list(db.orders.aggregate([{"$unwind": "$items"}, {"$count": "n"}]))
    assert unwound == [{"n": 3}]
    joined = list(db.orders.aggregate([
        {"$sort": {"_id": 1}}, {"$skip": 1}, {"$limit": 1},
        {"$lookup": {"from": "users", "localField": "user", "foreignField": "_id", "as": "who"}},
        {"$project": {"_id": 0, "name": {"$arrayElemAt": ["$who.name", 0]}}},
    ]))
    assert joined == [{"name": "Bo"}]


def test_aggregate_out_and_merge(db) -> None:
    """$out replaces a collection with the results; $merge merges into one."""
    db.src.insert_many([{"_id": i, "v": i} for i in range(3)])
    db.dst.insert_one({"_id": 99})
    list(db.src.aggregate([{"$match": {"v": {"$gte": 1}}}, {"$out": "dst"}]))
    assert sorted(d["_id"] for d in db.dst.find()) == [1, 2]
    list(db.src.aggregate([{"$project": {"w": {"$multiply": ["$v", 10]}}},
                           {"$merge": {"into": "dst", "whenMatched": "merge", "whenNotMatched": "insert"}}]))
    assert list(db.dst.find().sort("_id", 1)) == [{"_id": 0, "w": 0}, {"_id": 1, "v": 1, "w": 10},
                                                  {"_id": 2, "v": 2, "w": 20}]


def test_collections_create_list_rename_drop(client: pymongo.MongoClient, db) -> None:
    """create, listCollections, renameCollection, collStats, dbStats, drop and dropDatabase."""
    db.command("create", "a")
    with pytest.raises(OperationFailure) as exists:
        db.command("create", "a")
    assert exists.value.code == 48
    db.a.insert_one({"x": 1})
    assert db.list_collection_names(filter={"name": "a"}) == ["a"]
    db.a.rename("b")
    assert db.list_collection_names() == ["b"] and db.b.find_one()["x"] == 1
    stats = db.command("collStats", "b")
    assert stats["count"] == 1 and stats["nindexes"] == 1
    assert db.command("dbStats")["objects"] == 1
    assert db.name in client.list_database_names()
    db.b.drop()
    assert db.list_collection_names() == []
    db.z.insert_one({})
    client.drop_database(db.name)
    assert db.name not in client.list_database_names()


def test_invalid_names_are_refused(db) -> None:
    """A collection name with $ or an empty one is InvalidNamespace (73)."""
    with pytest.raises(OperationFailure) as error:
        db.command({"insert": "bad$name", "documents": [{}]})
    assert error.value.code == 73
    with pytest.raises(OperationFailure):
        db.command({"find": ""})


def test_indexes_create_list_drop(db) -> None:
    """createIndexes, listIndexes and dropIndexes keep the options they were given."""
    db.c.insert_one({"a": 1, "b": 2})
    db.c.create_index([("a", 1), ("b", -1)], name="ab")
    db.c.create_index("s", sparse=True, unique=True)
    db.c.create_index("p", partialFilterExpression={"p": {"$exists": True}}, unique=True)
    db.c.create_index("t", expireAfterSeconds=3600)
    info = {i["name"]: i for i in db.c.list_indexes()}
    assert set(info) == {"_id_", "ab", "s_1", "p_1", "t_1"}
    assert info["ab"]["key"] == {"a": 1, "b": -1}
    assert info["s_1"]["sparse"] is True and info["s_1"]["unique"] is True
    assert info["p_1"]["partialFilterExpression"] == {"p": {"$exists": True}}
    assert info["t_1"]["expireAfterSeconds"] == 3600
    assert db.c.create_index([("a", 1), ("b", -1)], name="ab") == "ab"  # the same again: no-op
    with pytest.raises(OperationFailure) as conflict:
        db.c.create_index([("z", 1)], name="ab")
    assert conflict.value.code == 86
    db.c.drop_index("ab")
    with pytest.raises(OperationFailure) as missing:
        db.c.drop_index("ab")
    assert missing.value.code == 27
    with pytest.raises(OperationFailure) as id_index:
        db.c.drop_index("_id_")
    assert id_index.value.code == 72
    db.c.drop_indexes()
    assert [i["name"] for i in db.c.list_indexes()] == ["_id_"]
    with pytest.raises(OperationFailure) as no_ns:
        db.command("listIndexes", "nothing")
    assert no_ns.value.code == 26


def test_unsupported_index_types_are_refused(db) -> None:
    """text and geo indexes are refused with CannotCreateIndex rather than silently ignored."""
    with pytest.raises(OperationFailure) as error:
        db.c.create_index([("body", "text")])
    assert error.value.code == 67


def test_duplicate_key_errors_are_shaped_like_mongod(db) -> None:
    """A duplicate key gives code 11000 with index, keyPattern and keyValue, and stores nothing."""
    db.c.create_index([("channel", 1), ("seq", 1)], unique=True)
    db.c.insert_one({"channel": "room:a", "seq": 1})
    with pytest.raises(DuplicateKeyError) as error:
        db.c.insert_one({"channel": "room:a", "seq": 1})
    details = error.value.details
    assert details["code"] == 11000
    assert details["keyPattern"] == {"channel": 1, "seq": 1}
    assert details["keyValue"] == {"channel": "room:a", "seq": 1}
    assert "E11000 duplicate key error collection" in details["errmsg"]
    with pytest.raises(BulkWriteError) as bulk:
        db.c.insert_many([{"channel": "room:a", "seq": 2}, {"channel": "room:a", "seq": 1},
                          {"channel": "room:a", "seq": 3}], ordered=False)
    errors = bulk.value.details["writeErrors"]
    assert [(e["index"], e["code"]) for e in errors] == [(1, 11000)]
    assert sorted(d["seq"] for d in db.c.find()) == [1, 2, 3]
    with pytest.raises(BulkWriteError) as ordered:
        db.c.insert_many([{"channel": "b", "seq": 1}, {"channel": "room:a", "seq": 1}, {"channel": "b", "seq": 2}])
    assert ordered.value.details["nInserted"] == 1
    assert db.c.count_documents({"channel": "b"}) == 1
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"_id": db.c.find_one()["_id"]})


def test_unique_index_over_existing_duplicates_fails_whole(db) -> None:
    """A unique index cannot be built over duplicates, and no trace of it remains."""
    db.c.insert_many([{"a": 1}, {"a": 1}])
    with pytest.raises(OperationFailure) as error:
        db.c.create_index("a", unique=True)
    assert error.value.code == 11000
    assert [i["name"] for i in db.c.list_indexes()] == ["_id_"]
    db.c.insert_one({"a": 1})


def test_update_into_a_duplicate_leaves_the_document(db) -> None:
    """An update that would duplicate a unique key fails and leaves the old document and its keys."""
    db.c.create_index("u", unique=True)
    db.c.insert_many([{"_id": 1, "u": "a"}, {"_id": 2, "u": "b"}])
    with pytest.raises(DuplicateKeyError):
        db.c.update_one({"_id": 2}, {"$set": {"u": "a"}})
    assert db.c.find_one({"_id": 2})["u"] == "b"
    assert db.c.find_one({"u": "b"})["_id"] == 2
    db.c.update_one({"_id": 2}, {"$set": {"u": "c"}})
    db.c.insert_one({"_id": 3, "u": "b"})


def test_partial_and_sparse_unique_indexes(db) -> None:
    """A partial unique index constrains only the documents its filter selects; sparse ones skip missing fields."""
    db.m.create_index([("channel", 1), ("from", 1), ("cid", 1)], unique=True,
                      partialFilterExpression={"cid": {"$exists": True}})
    db.m.insert_many([{"channel": "c", "from": "u"}, {"channel": "c", "from": "u"}])
    db.m.insert_one({"channel": "c", "from": "u", "cid": "x"})
    with pytest.raises(DuplicateKeyError):
        db.m.insert_one({"channel": "c", "from": "u", "cid": "x"})
    db.s.create_index("e", unique=True, sparse=True)
    db.s.insert_many([{"n": 1}, {"n": 2}, {"e": 1}])
    with pytest.raises(DuplicateKeyError):
        db.s.insert_one({"e": 1})


def test_partial_and_sparse_indexes_serve_queries_that_pin_their_fields(db) -> None:
    """A query pinning a partial index's $exists field (or a sparse index's field) to a value is served by that
    index; one that could match documents outside it is not, and finds them."""
    db.m.create_index([("channel", 1), ("seq", 1)], unique=True)
    db.m.create_index([("channel", 1), ("from", 1), ("cid", 1)], unique=True,
                      partialFilterExpression={"cid": {"$exists": True}}, name="cid")
    db.m.insert_many([{"channel": "c", "seq": n, "from": "u", **({"cid": f"k{n}"} if n % 2 else {})}
                      for n in range(1, 41)])
    pinned = db.m.find({"channel": "c", "from": "u", "cid": "k7"}).explain()["queryPlanner"]["winningPlan"]
    assert pinned.get("indexName") == "cid"
    assert [d["seq"] for d in db.m.find({"channel": "c", "from": "u", "cid": {"$in": ["k7", "k9"]}})] == [7, 9]
    loose = db.m.find({"channel": "c", "from": "u"}).explain()["queryPlanner"]["winningPlan"]
    assert loose.get("indexName") != "cid"
    assert db.m.count_documents({"channel": "c", "from": "u"}) == 40
    assert db.m.count_documents({"channel": "c", "from": "u", "cid": None}) == 20  # the ones outside the index
    db.s.create_index("e", sparse=True, name="e")
    db.s.insert_many([{"n": 1}, {"e": 2}, {"e": None}])
    assert db.s.find({"e": 2}).explain()["queryPlanner"]["winningPlan"].get("indexName") == "e"
    assert db.s.find({"e": None}).explain()["queryPlanner"]["winningPlan"].get("indexName") != "e"
    assert db.s.count_documents({"e": None}) == 2


def test_multikey_index_answers_element_queries(db) -> None:
    """An index over an array field finds documents by any element, each once."""
    db.c.create_index("tags")
    db.c.insert_many([{"_id": 1, "tags": ["a", "b"]}, {"_id": 2, "tags": ["b", "c"]}, {"_id": 3, "tags": "b"}])
    assert sorted(d["_id"] for d in db.c.find({"tags": "b"})) == [1, 2, 3]
    assert sorted(d["_id"] for d in db.c.find({"tags": {"$in": ["a", "c"]}})) == [1, 2]
    db.c.update_one({"_id": 1}, {"$pull": {"tags": "b"}})
    assert sorted(d["_id"] for d in db.c.find({"tags": "b"})) == [2, 3]


def test_index_serves_history_page_in_order(db) -> None:
    """find by channel sorted by seq descending reads the (channel, seq) index backwards."""
    db.messages.create_index([("channel", 1), ("seq", 1)], unique=True)
    db.messages.insert_many([{"channel": f"room:{c}", "seq": s} for c in range(5) for s in range(1, 101)])
    page = list(db.messages.find({"channel": "room:3", "seq": {"$lt": 60}}).sort("seq", -1).limit(10))
    assert [d["seq"] for d in page] == list(range(59, 49, -1))
    plan = db.messages.find({"channel": "room:3"}).sort("seq", -1).limit(10).explain()["queryPlanner"]["winningPlan"]
    assert plan["stage"] == "IXSCAN" and plan["sortServed"] is True and plan["direction"] == "backward"
    tail = db.messages.find({"channel": "room:1", "seq": {"$gt": 97}}).sort("seq", 1)
    assert [d["seq"] for d in tail] == [98, 99, 100]


def test_numbers_of_different_types_compare_by_value(db) -> None:
    """1, 1.0 and Int64(1) are equal keys; ranges and sorts mix numeric types correctly."""
    db.c.create_index("n", unique=True)
    db.c.insert_one({"n": 1})
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"n": 1.0})
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"n": Int64(1)})
    db.c.insert_many([{"n": 2.5}, {"n": Int64(-3)}, {"n": Decimal128("10")}, {"n": "text"}])
    assert [d["n"] for d in db.c.find({"n": {"$gte": 1}}).sort("n", 1)] == [1, 2.5, Decimal128("10")]
    assert db.c.find().sort("n", -1)[0]["n"] == "text"


def test_hint_must_name_an_index(db) -> None:
    """A hint naming no index is refused (BadValue 2); a valid hint is used."""
    db.c.create_index("a")
    db.c.insert_one({"a": 1})
    assert db.c.find_one({"a": 1}, hint="a_1")["a"] == 1
    with pytest.raises(OperationFailure) as error:
        list(db.c.find({}, hint="nope_1"))
    assert error.value.code == 2


def test_ttl_index_expires_documents(db) -> None:
    """Documents whose TTL field is older than expireAfterSeconds are deleted by the sweeper."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    db.t.create_index("at", expireAfterSeconds=1)
    db.t.insert_many([{"_id": "old", "at": now - datetime.timedelta(hours=1)},
                      {"_id": "new", "at": now + datetime.timedelta(hours=1)},
                      {"_id": "no-date", "at": "not a date"}])
    deadline = time.monotonic() + 10
    while db.t.find_one({"_id": "old"}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(d["_id"] for d in db.t.find()) == ["new", "no-date"]


def test_large_document_limit(db) -> None:
    """A document over 16 MiB is refused with BSONObjectTooLarge-like errors, nothing stored."""
    with pytest.raises((pymongo.errors.DocumentTooLarge, OperationFailure)):
        db.c.insert_one({"blob": b"x" * (16 * 1024 * 1024 + 1)})
    big = db.command({"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": "x" * (9 * 1024 * 1024)}},
                                                  "upsert": True}]})
    assert big["n"] == 1
    reply = db.command({"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"b": "y" * (9 * 1024 * 1024)}}}]})
    assert reply["writeErrors"][0]["code"] == 10334
    assert "b" not in db.c.find_one({"_id": 1})


def test_regex_and_expr_filters(db) -> None:
    """Regex (with options) and $expr filters use MongoDB's semantics."""
    db.c.insert_many([{"s": "Apple", "a": 5, "b": 3}, {"s": "banana", "a": 1, "b": 2}])
    assert [d["s"] for d in db.c.find({"s": re.compile("^a", re.I)})] == ["Apple"]
    assert [d["s"] for d in db.c.find({"s": {"$regex": "AN", "$options": "i"}})] == ["banana"]
    assert [d["s"] for d in db.c.find({"$expr": {"$gt": ["$a", "$b"]}})] == ["Apple"]


def test_indexed_answers_equal_collection_scan_answers(db) -> None:
    """For many filters and sorts, an indexed collection answers exactly as an unindexed copy does."""
    docs = []
    values = [None, 0, 1, 1.0, 2.5, -3, Int64(7), float("nan"), "", "a", "b\x00", "ab", "中", True,
              datetime.datetime(2020, 1, 1), ObjectId("0" * 24), {"x": 1}, [1, 2], Decimal128("2.5")]
    for i in range(400):
        doc = {"_id": i, "g": i % 5, "v": values[i % len(values)], "w": values[(i * 7) % len(values)]}
        if i % 11 == 0:
            del doc["v"]
        docs.append(doc)
    db.plain.insert_many(docs)
    db.indexed.insert_many(docs)
    db.indexed.create_index([("g", 1), ("v", 1)])
    db.indexed.create_index([("w", -1)])
    filters = [
        {"g": 2}, {"g": 2, "v": 1}, {"g": {"$in": [1, 3]}, "v": {"$gt": 0}}, {"g": 0, "v": {"$gte": 1, "$lt": 3}},
        {"g": 4, "v": {"$lte": "ab"}}, {"g": 1, "v": {"$gt": "a"}}, {"w": {"$gt": 1}}, {"w": {"$lt": 1}},
        {"w": "a"}, {"w": {"$eq": 1.0}}, {"g": 3, "v": {"x": 1}}, {"g": 3, "v": None}, {"v": {"$exists": False}},
        {"g": 2, "v": {"$gt": datetime.datetime(2019, 1, 1)}}, {"g": {"$gte": 2}, "v": 1}, {"w": {"$in": [1, "a"]}},
        {"g": 1, "v": {"$ne": 1}}, {"w": Decimal128("2.5")}, {"w": {"$gt": 2, "$lt": 8}}, {"g": 2, "w": 1},
    ]
    sorts = [None, [("v", 1)], [("v", -1)], [("w", 1), ("_id", -1)]]
    def sort_keys(found: list[dict], sort: list) -> list[bytes]:
        return [b"|".join(sort_key(d, name.split("."), direction == 1) for name, direction in sort) for d in found]

    for query in filters:
        for sort in sorts:
            expected = list(db.plain.find(query, sort=sort))
            got = list(db.indexed.find(query, sort=sort))
            assert sorted(d["_id"] for d in got) == sorted(d["_id"] for d in expected), (query, sort)
            if sort:
                assert sort_keys(got, sort) == sort_keys(expected, sort), (query, sort)
