"""The store as a process: ready line, lock file, signals, kill -9 durability, copy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pymongo
import pytest
from bson import Decimal128, Int64
from pymongo.errors import DuplicateKeyError

from tests.mongo_process import ROOT, StoreProcess


def test_second_instance_on_same_dbpath_refuses(tmp_path) -> None:
    """A second store on a held dbpath exits 1 with a message naming the lock file."""
    first = StoreProcess(str(tmp_path)).start()
    try:
        second = subprocess.run([sys.executable, "-m", "embedded_mongo", "--dbpath", str(tmp_path), "--port", "0"],
                                cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "mongod.lock" in second.stderr and "in use" in second.stderr
        assert pymongo.MongoClient(first.uri).admin.command("ping")["ok"] == 1.0
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(tmp_path, sig: int) -> None:
    """SIGTERM and SIGINT stop the store with exit code 0 and release the lock."""
    process = StoreProcess(str(tmp_path)).start()
    assert process.stop(sig) == 0
    again = StoreProcess(str(tmp_path)).start()
    assert again.stop() == 0


def test_kill_9_keeps_every_acknowledged_write(tmp_path) -> None:
    """After kill -9 right after acknowledged writes, a restart finds every document, index and constraint."""
    process = StoreProcess(str(tmp_path)).start()
    client = pymongo.MongoClient(process.uri)
    coll = client.app.messages
    coll.create_index([("channel", 1), ("seq", 1)], unique=True)
    for seq in range(1, 201):
        coll.insert_one({"channel": "room:a", "seq": seq, "n": Int64(seq), "d": Decimal128(str(seq))})
    coll.update_one({"seq": 7}, {"$set": {"edited": True}})
    coll.delete_one({"seq": 8})
    process.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    process.stop()
    client.close()

    restarted = StoreProcess(str(tmp_path)).start()
    try:
        client = pymongo.MongoClient(restarted.uri)
        coll = client.app.messages
        assert coll.count_documents({}) == 199
        assert coll.find_one({"seq": 200})["d"] == Decimal128("200")
        assert coll.find_one({"seq": 7})["edited"] is True
        assert coll.find_one({"seq": 8}) is None
        assert "channel_1_seq_1" in coll.index_information()
        with pytest.raises(DuplicateKeyError):
            coll.insert_one({"channel": "room:a", "seq": 200})
        client.close()
    finally:
        restarted.stop()


def test_copy_moves_everything_to_another_server(tmp_path) -> None:
    """`python -m embedded_mongo copy` copies databases, collections, documents and indexes to a second store."""
    source = StoreProcess(str(tmp_path / "src")).start()
    client = pymongo.MongoClient(source.uri)
    client.app.users.create_index("openid", unique=True)
    client.app.users.insert_many([{"openid": f"o{i}", "n": Int64(i)} for i in range(2500)])
    client.app.rooms.insert_one({"_id": "r1", "members": ["a"]})
    client.app.rooms.create_index("members")
    client.other.things.create_index("at", expireAfterSeconds=60)
    client.other.things.insert_one({"x": 1})
    expected = {name: list(client.app[name].find().sort("_id", 1)) for name in ("users", "rooms")}
    client.close()
    assert source.stop() == 0

    target = StoreProcess(str(tmp_path / "dst")).start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "embedded_mongo", "copy", "--dbpath", str(tmp_path / "src"), "--to", target.uri],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "copied app.users: 2500 documents, 1 indexes" in result.stdout
        client = pymongo.MongoClient(target.uri)
        for name, docs in expected.items():
            assert list(client.app[name].find().sort("_id", 1)) == docs
        assert client.app.users.index_information()["openid_1"]["unique"] is True
        assert "members_1" in client.app.rooms.index_information()
        assert client.other.things.index_information()["at_1"]["expireAfterSeconds"] == 60
        again = subprocess.run(
            [sys.executable, "-m", "embedded_mongo", "copy", "--dbpath", str(tmp_path / "src"), "--to", target.uri],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert again.returncode == 1 and "already holds documents" in again.stderr
        client.close()
    finally:
        target.stop()


def test_port_zero_prints_the_port(tmp_path) -> None:
    """--port 0 picks a free port and prints it on the ready line."""
    process = StoreProcess(str(tmp_path)).start()
    try:
        assert process.port > 0
        assert os.path.exists(tmp_path / "mongod.lock")
    finally:
        process.stop()
