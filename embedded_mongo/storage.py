"""Documents and indexes on disk, in one SQLite file.

Each collection is a table of ``(rid, BSON bytes)``; each index, ``_id_``
included, is a table of ``(key, rid)`` whose keys are the order-preserving bytes
of ``keys.py``, so SQLite's own B-trees answer equality, ranges and ordered scans.
A unique index makes ``key`` the primary key, so SQLite itself refuses a
duplicate. Every command runs in one SQLite transaction (WAL journal): a write the
client saw acknowledged is in the WAL and survives the process being killed, and
a failed write leaves nothing behind.

Writes go through one connection, on the thread that opened the store (the
server's event loop). Reads made on any other thread (the server's reader
threads) go through that thread's own connection: WAL gives every statement a
snapshot of what was committed when it began, so a read never sees half of a
write and never waits for one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import bson

from . import keys
from .errors import MongoError
from .operations import checkpoint, interrupt_sqlite
from .wire import CODEC, MAX_BSON_BYTES

Matcher = Callable[[dict[str, Any]], bool]
_PROGRESS_STEPS = 20_000  # SQLite VM steps between checks of the operation's limits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY, db TEXT NOT NULL, name TEXT NOT NULL, options BLOB NOT NULL,
    UNIQUE (db, name));
CREATE TABLE IF NOT EXISTS indexes (
    id INTEGER PRIMARY KEY, coll_id INTEGER NOT NULL, name TEXT NOT NULL, spec BLOB NOT NULL,
    multikey INTEGER NOT NULL DEFAULT 0, UNIQUE (coll_id, name));
"""


@dataclass
class Index:
    """One index of a collection, as the catalog holds it."""

    id: int  # catalog row id; the index table is ``i<id>``
    spec: dict[str, Any]  # what listIndexes shows: v, key, name and options
    multikey: bool  # some document gave more than one key
    paths: list[list[str]] = field(init=False)  # the key's dotted paths, split
    directions: list[Any] = field(init=False)  # the key's directions (1, -1, "hashed")
    partial: Matcher | None = None  # matcher of partialFilterExpression
    # While the transaction that builds it is open: the writer's thread, the only one its table exists for
    # (another thread's plan never uses it); 0 once committed.
    builder: int = 0

    @property
    def usable(self) -> bool:
        """Whether a plan on this thread may read it: committed, or built by this thread's transaction."""
        return self.builder == 0 or self.builder == threading.get_ident()

    def __post_init__(self) -> None:
        self.paths = [name.split(".") for name in self.spec["key"]]
        self.directions = list(self.spec["key"].values())

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def table(self) -> str:
        return f"i{self.id}"

    @property
    def unique(self) -> bool:
        return bool(self.spec.get("unique")) or self.name == "_id_"

    @property
    def sparse(self) -> bool:
        return bool(self.spec.get("sparse"))

    def entries(self, doc: dict[str, Any]) -> list[tuple[bytes, list[Any]]]:
        """The keys this index holds for ``doc`` (none when the document is
        outside a partial or sparse index)."""
        if self.partial is not None and not self.partial(doc):
            return []
        if self.sparse and all(
            next(keys.path_values(doc, path)) is keys.MISSING for path in self.paths
        ):
            return []
        return keys.index_entries(doc, self.paths)


@dataclass
class Collection:
    """One collection, as the catalog holds it."""

    id: int  # catalog row id; the document table is ``c<id>``
    db: str  # database name
    name: str  # collection name
    options: dict[str, Any]  # what create was given
    indexes: dict[str, Index] = field(default_factory=dict)  # by index name

    @property
    def table(self) -> str:
        return f"c{self.id}"

    @property
    def namespace(self) -> str:
        return f"{self.db}.{self.name}"


def decode(raw: bytes) -> dict[str, Any]:
    return bson.decode(raw, CODEC)


def encode_document(doc: dict[str, Any]) -> bytes:
    raw = bson.encode(doc, codec_options=CODEC)
    if len(raw) > MAX_BSON_BYTES:
        raise MongoError(10334, f"object to insert too large. size in bytes: {len(raw)}, max size: {MAX_BSON_BYTES}")
    return raw


class Store:
    """The catalog and every collection of one ``--dbpath``."""

    def __init__(self, dbpath: str, compile_filter: Callable[[dict[str, Any]], Matcher]) -> None:
        path = os.path.join(dbpath, "store.sqlite3")
        self._path = path  # the SQLite file, for the readers' connections
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # the writer's connection
        self._writer = threading.get_ident()  # the thread whose reads see its own transaction
        self._local = threading.local()  # each reader thread's connection
        self._readers: list[sqlite3.Connection] = []  # every reader connection, closed with the store
        self._readers_lock = threading.Lock()  # guards _readers
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a committed transaction is in the WAL before COMMIT returns, so it
        # survives the process being killed; ``sync()`` makes it survive power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._compile = compile_filter  # builds partialFilterExpression matchers
        self._depth = 0  # nesting of transaction()
        # Tables the open transaction creates: a reader that finds one missing reads it as
        # empty (its creation is not committed). Emptied only once COMMIT or ROLLBACK returns.
        self._creating: set[str] = set()
        self._building: list[Index] = []  # indexes the open transaction creates, usable by all once it commits
        self.collections: dict[tuple[str, str], Collection] = {}  # the catalog, cached
        self._load_catalog()

    def close(self) -> None:
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
        self._db.close()

    def close_reader(self) -> None:
        """Closes this thread's reader connection (a reader thread that exits)."""
        reader: sqlite3.Connection | None = getattr(self._local, "db", None)
        if reader is None:
            return
        self._local.db = None
        with self._readers_lock:
            if reader in self._readers:
                self._readers.remove(reader)
        reader.close()

    def _reads(self) -> sqlite3.Connection:
        """The connection a read on this thread uses: the writer's own on the
        writer's thread (it sees its transaction), else the thread's reader."""
        if threading.get_ident() == self._writer:
            return self._db
        reader: sqlite3.Connection | None = getattr(self._local, "db", None)
        if reader is None:
            reader = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            reader.execute("PRAGMA query_only=1")
            reader.execute("PRAGMA busy_timeout=10000")
            reader.set_progress_handler(interrupt_sqlite, _PROGRESS_STEPS)
            self._local.db = reader
            with self._readers_lock:
                self._readers.append(reader)
        return reader

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of one read statement; a statement stopped by the operation's
        limits raises the operation's error."""
        for _attempt in range(2):
            try:
                return self._reads().execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                checkpoint()  # interrupted by killOp or maxTimeMS: that error, not SQLite's
                message = str(exc)
                if not message.startswith("no such table: "):
                    raise
                # The catalog (shared with the writer) names a table this reader's snapshot
                # lacks: created by a write not yet committed (it holds nothing yet, as mongod
                # would answer), committed since (read it again), or dropped while the query ran.
                if message[len("no such table: "):] in self._creating:
                    return []
        raise MongoError(175, "the collection was dropped while the query ran")

    def sync(self) -> None:
        """Forces what is committed to stable storage (``j: true``, ``fsync``)."""
        self._db.execute("PRAGMA wal_checkpoint(FULL)")

    # -- transactions --------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction, or a savepoint inside one: all of it or none of it."""
        name = f"sp{self._depth}"
        self._db.execute("BEGIN IMMEDIATE" if self._depth == 0 else f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                try:
                    self._db.execute("ROLLBACK")
                    self._load_catalog()
                finally:
                    self._creating.clear()
                    self._building.clear()
            else:
                self._db.execute(f"ROLLBACK TO {name}")
                self._db.execute(f"RELEASE {name}")
            raise
        self._depth -= 1
        if self._depth:
            self._db.execute(f"RELEASE {name}")
            return
        try:
            self._db.execute("COMMIT")
        finally:
            self._creating.clear()
        for index in self._building:
            index.builder = 0
        self._building.clear()

    # -- catalog -------------------------------------------------------------

    def _load_catalog(self) -> None:
        self.collections = {}
        by_id: dict[int, Collection] = {}
        for cid, db, name, options in self._db.execute("SELECT id, db, name, options FROM collections"):
            coll = Collection(cid, db, name, decode(options))
            self.collections[(db, name)] = coll
            by_id[cid] = coll
        for iid, cid, spec, multikey in self._db.execute(
            "SELECT id, coll_id, spec, multikey FROM indexes ORDER BY id"
        ):
            index = self._make_index(iid, decode(spec), bool(multikey))
            by_id[cid].indexes[index.name] = index

    def _make_index(self, iid: int, spec: dict[str, Any], multikey: bool) -> Index:
        index = Index(iid, spec, multikey)
        if "partialFilterExpression" in spec:
            index.partial = self._compile(spec["partialFilterExpression"])
        return index

    def databases(self) -> list[str]:
        return sorted({db for db, _ in list(self.collections)})  # a snapshot: the writer may add meanwhile

    def get(self, db: str, name: str) -> Collection | None:
        return self.collections.get((db, name))

    def collections_of(self, db: str) -> list[Collection]:
        return [c for (d, _), c in sorted(list(self.collections.items())) if d == db]

    def create(self, db: str, name: str, options: dict[str, Any] | None = None) -> Collection:
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO collections (db, name, options) VALUES (?, ?, ?)",
                (db, name, encode_document(options or {})),
            )
            cid = int(cur.lastrowid or 0)
            self._creating.add(f"c{cid}")
            self._db.execute(f"CREATE TABLE c{cid} (rid INTEGER PRIMARY KEY, doc BLOB NOT NULL)")
            coll = Collection(cid, db, name, options or {})
            self.collections[(db, name)] = coll
            self.create_index(coll, {"v": 2, "key": {"_id": 1}, "name": "_id_"})
        return coll

    def get_or_create(self, db: str, name: str) -> Collection:
        return self.get(db, name) or self.create(db, name)

    def drop(self, coll: Collection) -> None:
        with self.transaction():
            for index in coll.indexes.values():
                self._db.execute(f"DROP TABLE {index.table}")
            self._db.execute(f"DROP TABLE {coll.table}")
            self._db.execute("DELETE FROM indexes WHERE coll_id = ?", (coll.id,))
            self._db.execute("DELETE FROM collections WHERE id = ?", (coll.id,))
            del self.collections[(coll.db, coll.name)]

    def rename(self, coll: Collection, db: str, name: str) -> None:
        with self.transaction():
            self._db.execute("UPDATE collections SET db = ?, name = ? WHERE id = ?", (db, name, coll.id))
            del self.collections[(coll.db, coll.name)]
            coll.db, coll.name = db, name
            self.collections[(db, name)] = coll

    def create_index(self, coll: Collection, spec: dict[str, Any]) -> Index:
        """Adds an index and fills it from the documents already stored; a
        duplicate among them for a unique index fails the whole command."""
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO indexes (coll_id, name, spec) VALUES (?, ?, ?)",
                (coll.id, spec["name"], encode_document(spec)),
            )
            index = self._make_index(int(cur.lastrowid or 0), spec, False)
            index.builder = threading.get_ident()
            self._building.append(index)
            if index.unique:
                self._db.execute(
                    f"CREATE TABLE {index.table} (key BLOB PRIMARY KEY, rid INTEGER NOT NULL) WITHOUT ROWID"
                )
            else:
                self._db.execute(
                    f"CREATE TABLE {index.table} (key BLOB NOT NULL, rid INTEGER NOT NULL, "
                    "PRIMARY KEY (key, rid)) WITHOUT ROWID"
                )
            coll.indexes[index.name] = index
            for rid, raw in self._db.execute(f"SELECT rid, doc FROM {coll.table}").fetchall():
                self._add_keys(coll, index, rid, decode(raw))
        return index

    def set_options(self, coll: Collection, options: dict[str, Any]) -> None:
        with self.transaction():
            self._db.execute("UPDATE collections SET options = ? WHERE id = ?", (encode_document(options), coll.id))
        coll.options = options

    def set_index_spec(self, coll: Collection, name: str, spec: dict[str, Any]) -> None:
        """Changes options of an index that do not change its keys (TTL, hidden)."""
        index = coll.indexes[name]
        with self.transaction():
            self._db.execute("UPDATE indexes SET spec = ? WHERE id = ?", (encode_document(spec), index.id))
        index.spec = spec

    def drop_index(self, coll: Collection, name: str) -> None:
        index = coll.indexes[name]
        with self.transaction():
            self._db.execute(f"DROP TABLE {index.table}")
            self._db.execute("DELETE FROM indexes WHERE id = ?", (index.id,))
            del coll.indexes[name]

    # -- documents -----------------------------------------------------------

    def _add_keys(self, coll: Collection, index: Index, rid: int, doc: dict[str, Any],
                  only: set[bytes] | None = None) -> None:
        entries = index.entries(doc)
        if len(entries) > 1 and not index.multikey:
            index.multikey = True
            self._db.execute("UPDATE indexes SET multikey = 1 WHERE id = ?", (index.id,))
        for key, values in entries:
            if only is not None and key not in only:
                continue
            try:
                self._db.execute(f"INSERT INTO {index.table} (key, rid) VALUES (?, ?)", (key, rid))
            except sqlite3.IntegrityError:
                raise self._duplicate(coll, index, values) from None

    @staticmethod
    def _duplicate(coll: Collection, index: Index, values: list[Any]) -> MongoError:
        key_value = dict(zip(index.spec["key"], values, strict=False))
        shown = ", ".join(f"{k}: {v!r}" for k, v in key_value.items())
        return MongoError(
            11000,
            f"E11000 duplicate key error collection: {coll.namespace} index: {index.name} dup key: {{ {shown} }}",
            keyPattern=dict(index.spec["key"]),
            keyValue=key_value,
        )

    def _remove_keys(self, index: Index, rid: int, doc: dict[str, Any], only: set[bytes] | None = None) -> None:
        for key, _ in index.entries(doc):
            if only is None or key in only:
                self._db.execute(f"DELETE FROM {index.table} WHERE key = ? AND rid = ?", (key, rid))

    def insert(self, coll: Collection, doc: dict[str, Any], atomic: bool = True) -> int:
        """Stores one document (its ``_id`` already set); returns its rid. With
        ``atomic`` off the caller's transaction is the only undo: for a command
        that writes one document, it saves a savepoint."""
        raw = encode_document(doc)
        with self.transaction() if atomic else nullcontext():
            cur = self._db.execute(f"INSERT INTO {coll.table} (doc) VALUES (?)", (raw,))
            rid = int(cur.lastrowid or 0)
            for index in coll.indexes.values():
                self._add_keys(coll, index, rid, doc)
        return rid

    def replace(self, coll: Collection, rid: int, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Replaces a stored document, moving only the index keys that changed."""
        raw = encode_document(new)
        with self.transaction():
            self._db.execute(f"UPDATE {coll.table} SET doc = ? WHERE rid = ?", (raw, rid))
            for index in coll.indexes.values():
                before = {k for k, _ in index.entries(old)}
                after = {k for k, _ in index.entries(new)}
                if before != after:
                    self._remove_keys(index, rid, old, before - after)
                    self._add_keys(coll, index, rid, new, after - before)

    def delete(self, coll: Collection, rid: int, doc: dict[str, Any]) -> None:
        with self.transaction():
            self._db.execute(f"DELETE FROM {coll.table} WHERE rid = ?", (rid,))
            for index in coll.indexes.values():
                self._remove_keys(index, rid, doc)

    # -- reads ---------------------------------------------------------------

    def count(self, coll: Collection) -> int:
        rows = self._fetch(f"SELECT COUNT(*) FROM {coll.table}")
        return int(rows[0][0]) if rows else 0  # no rows: the collection's creation is not committed

    def data_size(self, coll: Collection) -> int:
        rows = self._fetch(f"SELECT COALESCE(SUM(LENGTH(doc)), 0) FROM {coll.table}")
        return int(rows[0][0]) if rows else 0

    def scan(self, coll: Collection, reverse: bool = False, chunk: int = 256) -> Iterator[tuple[int, bytes]]:
        """Every document in storage order, read a chunk at a time so that no
        statement stays open between reads."""
        last = -1 if not reverse else (1 << 63) - 1
        op, order = ("<", "DESC") if reverse else (">", "ASC")
        while True:
            rows = self._fetch(
                f"SELECT rid, doc FROM {coll.table} WHERE rid {op} ? ORDER BY rid {order} LIMIT ?", (last, chunk)
            )
            yield from rows
            if len(rows) < chunk:
                return
            last = rows[-1][0]
            chunk = min(chunk * 4, 4096)

    def index_scan(self, coll: Collection, index: Index, low: bytes, high: bytes, reverse: bool = False,
                   chunk: int = 64) -> Iterator[tuple[int, bytes]]:
        """Documents whose key in ``index`` is in [low, high), in key order
        (reversed when asked), each document once; a chunk at a time."""
        seen: set[int] | None = set() if index.multikey else None
        table = index.table
        if reverse:
            where, order, cursor = "(x.key, x.rid) < (?, ?) AND x.key >= ?", "DESC", (high, -1, low)
        else:
            where, order, cursor = "(x.key, x.rid) > (?, ?) AND x.key < ?", "ASC", (low, -1, high)
        sql = (
            f"SELECT x.key, x.rid, c.doc FROM {table} x JOIN {coll.table} c ON c.rid = x.rid "
            f"WHERE {where} ORDER BY x.key {order}, x.rid {order} LIMIT ?"
        )
        while True:
            rows = self._fetch(sql, (*cursor, chunk))
            for _key, rid, raw in rows:
                if seen is not None:
                    if rid in seen:
                        continue
                    seen.add(rid)
                yield rid, raw
            if len(rows) < chunk:
                return
            last_key, last_rid = rows[-1][0], rows[-1][1]
            cursor = (last_key, last_rid, cursor[2])
            chunk = min(chunk * 4, 4096)
