"""The embedded store through motor, the driver the server uses: GridFS and concurrent clients."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

import pytest
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorGridFSBucket

from tests.mongo_process import StoreProcess


@pytest.mark.gen_test(timeout=120)
async def test_gridfs_round_trips_20_mib(store: StoreProcess) -> None:
    """motor's GridFS bucket uploads and downloads a 20 MiB file byte for byte."""
    client: AsyncIOMotorClient = AsyncIOMotorClient(store.uri)
    db = client[f"g_{uuid.uuid4().hex[:8]}"]
    bucket = AsyncIOMotorGridFSBucket(db, bucket_name="files")
    data = os.urandom(20 * 1024 * 1024)
    file_id = await bucket.upload_from_stream("big.bin", data, metadata={"owner": "u1"})
    stream = await bucket.open_download_stream(file_id)
    assert stream.length == len(data)
    downloaded = await stream.read()
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(data).digest()
    info = await db["files.files"].find_one({"_id": file_id})
    assert info["metadata"] == {"owner": "u1"} and info["length"] == len(data)
    chunks = await db["files.chunks"].count_documents({"files_id": file_id})
    assert chunks == -(-len(data) // info["chunkSize"])
    names = {i["name"] for i in await db["files.chunks"].list_indexes().to_list(None)}
    assert "files_id_1_n_1" in names
    await bucket.delete(file_id)
    assert await db["files.chunks"].count_documents({"files_id": file_id}) == 0
    await client.drop_database(db.name)
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_concurrent_writers_do_not_corrupt(store: StoreProcess) -> None:
    """Eight clients inserting and counting at once leave exactly what was acknowledged."""
    name = f"w_{uuid.uuid4().hex[:8]}"
    clients = [AsyncIOMotorClient(store.uri) for _ in range(8)]
    await clients[0][name].c.create_index("k", unique=True)

    async def writer(index: int) -> int:
        coll = clients[index][name].c
        for i in range(100):
            await coll.insert_one({"k": f"{index}-{i}", "w": index})
        return await coll.count_documents({"w": index})

    counts = await asyncio.gather(*(writer(i) for i in range(8)))
    assert counts == [100] * 8
    assert await clients[0][name].c.count_documents({}) == 800
    await clients[0].drop_database(name)
    for c in clients:
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_atomic_counter_under_concurrency(store: StoreProcess) -> None:
    """Concurrent find_one_and_update $inc from many clients yields every value exactly once."""
    name = f"n_{uuid.uuid4().hex[:8]}"
    clients = [AsyncIOMotorClient(store.uri) for _ in range(5)]

    async def bump(client: AsyncIOMotorClient) -> list[int]:
        got = []
        for _ in range(40):
            doc = await client[name].channels.find_one_and_update(
                {"_id": "room:x"}, {"$inc": {"seq": 1}}, upsert=True, return_document=True)
            got.append(doc["seq"])
        return got

    results = await asyncio.gather(*(bump(c) for c in clients))
    assert sorted(v for r in results for v in r) == list(range(1, 201))
    await clients[0].drop_database(name)
    for c in clients:
        c.close()
