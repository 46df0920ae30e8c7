"""The MongoDB shell (mongosh, from the npm registry) against the store, as an admin uses it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from typing import Any

import pymongo
import pytest
from pymongo.errors import OperationFailure

from tests.mongo_process import ROOT, StoreProcess


def _mongosh() -> str | None:
    local = os.path.join(ROOT, ".tools", "node_modules", ".bin", "mongosh")
    return shutil.which("mongosh") or (local if os.path.exists(local) else None)


MONGOSH = _mongosh()
# In CI (CI=true) a missing mongosh fails the tests instead of skipping them.
pytestmark = pytest.mark.skipif(MONGOSH is None and os.environ.get("CI") != "true",
                                reason="mongosh is not installed (.ci/run installs it with npm)")


def _shell(store: StoreProcess, database: str, script: str) -> str:
    result = subprocess.run([MONGOSH, "--quiet", "--norc", f"{store.uri}{database}", "--eval", script],  # type: ignore[list-item]
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_mongosh_crud_aggregate_and_indexes(store: StoreProcess) -> None:
    """insertOne, find().sort().limit(), updateOne, aggregate, countDocuments, createIndex and getIndexes work."""
    script = """
    db.c.insertOne({name: "tea", price: 12});
    db.c.insertOne({name: "coffee", price: 15});
    db.c.insertOne({name: "water", price: 1});
    const top = db.c.find({}, {_id: 0}).sort({price: -1}).limit(2).toArray();
    const updated = db.c.updateOne({name: "tea"}, {$set: {price: 13}});
    const total = db.c.aggregate([{$group: {_id: null, total: {$sum: "$price"}}}]).toArray();
    const counted = db.c.countDocuments({price: {$gt: 10}});
    const index = db.c.createIndex({name: 1}, {unique: true});
    const indexes = db.c.getIndexes().map(i => i.name);
    print(JSON.stringify({top, modified: updated.modifiedCount, total: total[0].total, counted, index, indexes}));
    """
    out = json.loads(_shell(store, "mongosh_crud", script).strip().splitlines()[-1])
    assert out == {
        "top": [{"name": "coffee", "price": 15}, {"name": "tea", "price": 12}],
        "modified": 1, "total": 29, "counted": 2, "index": "name_1", "indexes": ["_id_", "name_1"],
    }


def test_mongosh_show_dbs_and_collections(store: StoreProcess) -> None:
    """`show dbs` and `show collections` list what is stored."""
    _shell(store, "mongosh_show", 'db.orders.insertOne({a: 1}); db.users.insertOne({b: 2});')
    dbs = _shell(store, "mongosh_show", "show dbs")
    assert "mongosh_show" in dbs
    collections = _shell(store, "mongosh_show", "show collections").split()
    assert collections == ["orders", "users"]


def test_mongosh_current_op_and_kill_op(store: StoreProcess) -> None:
    """db.currentOp() shows a running aggregate with its opid, and db.killOp(opid) stops it (11601)."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store.uri)
    client.mongosh_ops.fat.insert_many([{"a": list(range(100)), "b": list(range(100))} for _ in range(300)])
    endless = [{"$unwind": "$a"}, {"$unwind": "$b"}, {"$group": {"_id": "$a", "n": {"$sum": "$b"}}}]
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            list(client.mongosh_ops.fat.aggregate(endless, maxTimeMS=120_000))
        except OperationFailure as exc:
            outcome["code"] = exc.code

    thread = threading.Thread(target=run)
    thread.start()
    script = """
    let ops = [];
    for (let i = 0; i < 500 && ops.length === 0; i++) {
        ops = db.currentOp({ns: "mongosh_ops.fat"}).inprog;
        if (ops.length === 0) sleep(10);
    }
    const op = ops[0];
    const killed = db.killOp(op.opid);
    print(JSON.stringify({found: ops.length, fields: ["opid", "ns", "command", "secs_running", "client"]
        .every(f => f in op), pipeline: op.command.pipeline.length, killed: killed.ok}));
    """
    try:
        out = json.loads(_shell(store, "mongosh_ops", script).strip().splitlines()[-1])
    finally:
        thread.join(60)
        client.close()
    assert out == {"found": 1, "fields": True, "pipeline": 3, "killed": 1}
    assert outcome == {"code": 11601}
