"""Review findings on the store's reader threads: a disconnected client's read
keeps a reader busy, and a few long reads hold up every other client's reads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import bson
import pymongo
import pytest

from tests.mongo_process import StoreProcess

READERS = 2  # reader threads of the store under test: few, so the test stays small
# An aggregate that runs until it is stopped: 300 x 100 x 100 documents out of two $unwind.
ENDLESS = [{"$unwind": "$a"}, {"$unwind": "$b"}, {"$group": {"_id": "$a", "n": {"$sum": "$b"}}}]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    process = StoreProcess(str(tmp_path_factory.mktemp("readers")), "--reader-threads", str(READERS)).start()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(process.uri)
    client.rv.fat.insert_many([{"a": list(range(100)), "b": list(range(100))} for _ in range(300)])
    client.rv.small.insert_many([{"_id": i} for i in range(10)])
    client.close()
    yield process
    process.stop()


def _op_msg(body: dict[str, Any], request_id: int = 1) -> bytes:
    """An OP_MSG (2013) with one body section."""
    payload = b"\x00\x00\x00\x00" + b"\x00" + bson.encode(body)
    return (16 + len(payload)).to_bytes(4, "little") + request_id.to_bytes(4, "little") + \
        (0).to_bytes(4, "little") + (2013).to_bytes(4, "little") + payload


def _running(client: pymongo.MongoClient[dict[str, Any]], ns: str) -> list[dict[str, Any]]:
    ops = client.admin.command("currentOp", {"$all": True})["inprog"]
    return [op for op in ops if op.get("ns") == ns and op.get("active")]


def _wait_for(predicate: Any, guard: float = 20.0) -> bool:
    """Polls ``predicate`` until true; ``guard`` seconds only keep the test from hanging."""
    end = time.monotonic() + guard
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_disconnected_clients_read_stops(store: StoreProcess) -> None:
    """A read whose client hung up stops (mongod interrupts it), instead of holding a reader thread to its end."""
    admin: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store.uri)
    try:
        raw = socket.create_connection(("127.0.0.1", store.port))
        raw.sendall(_op_msg({"aggregate": "fat", "pipeline": ENDLESS, "cursor": {}, "maxTimeMS": 120_000,
                             "$db": "rv"}))
        assert _wait_for(lambda: len(_running(admin, "rv.fat")) == 1), "the aggregate never ran"
        raw.close()  # the client is gone: nobody will read the answer
        assert _wait_for(lambda: not _running(admin, "rv.fat")), "the read ran on after its client hung up"
    finally:
        admin.close()


def test_long_reads_do_not_hold_up_short_ones(store: StoreProcess) -> None:
    """With as many long aggregates as reader threads, another client's find by _id still answers."""
    clients = [pymongo.MongoClient(store.uri) for _ in range(READERS)]
    other: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store.uri, socketTimeoutMS=5_000)
    threads = []
    try:
        for client in clients:
            thread = threading.Thread(target=lambda c=client: _swallow(
                lambda: list(c.rv.fat.aggregate(ENDLESS, maxTimeMS=60_000))), daemon=True)
            thread.start()
            threads.append(thread)
        assert _wait_for(lambda: len(_running(other, "rv.fat")) == READERS), "the aggregates never ran"
        assert other.rv.small.find_one({"_id": 3}) == {"_id": 3}  # was NetworkTimeout: queued behind them
    finally:
        for op in _running(other, "rv.fat"):
            other.admin.command("killOp", op=op["opid"])
        for thread in threads:
            thread.join(30)
        for client in (*clients, other):
            client.close()


def _swallow(call: Any) -> None:
    try:
        call()
    except pymongo.errors.PyMongoError:
        pass


def test_what_a_disconnected_client_queued_behind_a_read_never_runs(store: StoreProcess) -> None:
    """Commands a client sent behind its long read, then hung up, are not run for nobody (mongod reads no more)."""
    admin: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store.uri)
    try:
        raw = socket.create_connection(("127.0.0.1", store.port))
        raw.sendall(_op_msg({"aggregate": "fat", "pipeline": ENDLESS, "cursor": {}, "maxTimeMS": 120_000,
                             "$db": "rv"}, 1)
                    + _op_msg({"aggregate": "fat", "pipeline": ENDLESS, "cursor": {}, "comment": "queued",
                               "maxTimeMS": 120_000, "$db": "rv"}, 2))
        assert _wait_for(lambda: len(_running(admin, "rv.fat")) == 1), "the first aggregate never ran"
        raw.close()
        assert _wait_for(lambda: not _running(admin, "rv.fat")), "the first read ran on after its client hung up"
        time.sleep(0.3)  # the queued one would have started by now
        assert not _running(admin, "rv.fat"), "the read queued behind it ran for nobody"
    finally:
        admin.close()
