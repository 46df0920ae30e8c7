"""The MongoDB shell (mongosh, from the npm registry) against the store, as an admin uses it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.mongo_process import ROOT, StoreProcess


def _mongosh() -> str | None:
    local = os.path.join(ROOT, ".tools", "node_modules", ".bin", "mongosh")
    return shutil.which("mongosh") or (local if os.path.exists(local) else None)


MONGOSH = _mongosh()
pytestmark = pytest.mark.skipif(MONGOSH is None, reason="mongosh is not installed (.ci/run installs it with npm)")


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
