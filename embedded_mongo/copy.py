"""Copies a store's databases, collections, documents and indexes to a MongoDB."""

from __future__ import annotations

from typing import TextIO

import pymongo
from bson.raw_bson import RawBSONDocument

from .engine import compile_filter
from .server import DataDirLock
from .storage import Store
from .wire import CODEC

BATCH = 1000


def copy_store(dbpath: str, uri: str, drop: bool, out: TextIO) -> None:
    """Copies everything under ``dbpath`` to ``uri``; documents keep their exact
    BSON bytes. The store must not be running (its lock is taken)."""
    lock = DataDirLock(dbpath)
    lock.acquire()
    store = Store(dbpath, compile_filter)
    client: pymongo.MongoClient[RawBSONDocument] = pymongo.MongoClient(uri, document_class=RawBSONDocument)
    try:
        for (db_name, coll_name), coll in sorted(store.collections.items()):
            target = client[db_name].get_collection(coll_name, codec_options=CODEC.with_options(
                document_class=RawBSONDocument))
            if target.estimated_document_count():
                if not drop:
                    raise RuntimeError(f"{db_name}.{coll_name} already holds documents at the target; "
                                       "use --drop to replace it")
                target.drop()
            if coll_name not in client[db_name].list_collection_names():
                options = {k: v for k, v in coll.options.items() if k in ("validator", "validationLevel",
                                                                            "validationAction", "collation")}
                client[db_name].create_collection(coll_name, **options)
            batch: list[RawBSONDocument] = []
            copied = 0
            for _, raw in store.scan(coll):
                batch.append(RawBSONDocument(bytes(raw)))
                if len(batch) >= BATCH:
                    target.insert_many(batch, ordered=True)
                    copied += len(batch)
                    batch = []
            if batch:
                target.insert_many(batch, ordered=True)
                copied += len(batch)
            indexes = []
            for index in coll.indexes.values():
                if index.name == "_id_":
                    continue
                options = {k: v for k, v in index.spec.items() if k not in ("v", "key", "name")}
                indexes.append(pymongo.IndexModel(list(index.spec["key"].items()), name=index.name, **options))
            if indexes:
                target.create_indexes(indexes)
            print(f"copied {db_name}.{coll_name}: {copied} documents, {len(indexes)} indexes", file=out, flush=True)
    finally:
        client.close()
        store.close()
        lock.release()
