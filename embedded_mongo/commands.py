"""The commands a standalone mongod answers: one method per command.

``Commands.run(request)`` takes a decoded request and returns the reply document;
every failure becomes mongod's ``{ok: 0, errmsg, code, codeName}`` and writes
report per-document ``writeErrors``. Commands run one at a time on the server's
event loop, each in its own SQLite transaction; reads (``READS``) may run on the
server's reader threads instead, each on its own SQLite connection. Every
command is an ``Operation`` while it runs (``operations.py``): ``currentOp``
lists them, ``killOp`` and ``maxTimeMS`` stop them.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from bson import Int64, ObjectId, Regex
from bson.raw_bson import RawBSONDocument

from . import __version__, keys
from .cursors import Cursors
from .engine import Engine, bind_pipeline, bind_variables, compile_filter, evaluate_variables
from .errors import CloseConnection, MongoError, type_mismatch
from .operations import Interrupted, Operation, Operations, checkpoint
from .pipeline import Pipeline, simple_lookup
from .query import Match, choose, execute, find_index, parse_sort
from .spill import DEFAULT_LIMIT, PYTHON_OVERHEAD, SPILLS, limits, over_limit
from .storage import Collection, Store, decode, encode_document
from .wire import MAX_BSON_BYTES, MAX_MESSAGE_BYTES, Request

log = logging.getLogger("embedded_mongo")

SERVER_VERSION = "7.0.0"
MAX_WIRE_VERSION = 21  # MongoDB 7.0
MAX_WRITE_BATCH = 100_000
_NO_ID = object()
_TXN_MESSAGE = "Transaction numbers are only allowed on a replica set member or mongos"
_ALIASES = {"ismaster": "hello", "isMaster": "hello", "buildinfo": "buildInfo", "deleteIndexes": "dropIndexes"}
_GENERIC_FIELDS = {"$db", "lsid", "txnNumber", "$clusterTime", "$readPreference", "readConcern", "writeConcern",
                   "comment", "maxTimeMS", "apiVersion", "apiStrict", "apiDeprecationErrors", "$audit"}

Handler = Callable[[dict[str, Any], Request], dict[str, Any]]
# Commands that only read: the server may run them on a reader thread.
READS = {"find", "getMore", "count", "distinct", "aggregate", "collStats", "dbStats", "listDatabases"}


def _check_name(db: str, name: Any, command: str) -> str:
    if not isinstance(name, str):
        raise MongoError(2, f"collection name has invalid type {type(name).__name__}")
    if not name or "\x00" in name or name.startswith(".") or "$" in name:
        raise MongoError(73, f"Invalid collection name: '{name}' for command {command}")
    if not db or any(c in db for c in '/\\. "$\x00'):
        raise MongoError(73, f"Invalid database name: '{db}'")
    return name


def _int(body: dict[str, Any], name: str, default: int = 0, minimum: int | None = 0) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_mismatch(name, "long", value)
    if minimum is not None and value < minimum:
        raise MongoError(51024, f"BSON field '{name}' value must be >= {minimum}, actual value '{value}'")
    return int(value)


def _let(body: dict[str, Any]) -> dict[str, Any]:
    """A command's ``let`` variables, evaluated."""
    variables = _doc(body, "let")
    return evaluate_variables(variables) if variables else {}


def _doc(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise type_mismatch(name, "object", value)
    return value


def _with_id(doc: dict[str, Any]) -> dict[str, Any]:
    if "_id" in doc:
        value = doc["_id"]
        if isinstance(value, list):
            raise MongoError(53, "The '_id' value cannot be of type array")
        if isinstance(value, Regex) or keys.type_byte(value) == keys.REGEX:
            raise MongoError(53, "The '_id' value cannot be of type regex")
        if isinstance(value, dict):
            for name in value:
                if str(name).startswith("$"):
                    raise MongoError(52, f"_id fields may not contain '$'-prefixed fields: {name} is not valid "
                                         "for storage.")
        return doc
    return {"_id": ObjectId(), **doc}


def _bound_statement(spec: dict[str, Any], variables: dict[str, Any], query_field: str,
                     update_field: str | None = None) -> dict[str, Any]:
    """A write statement with its ``let`` variables bound in its filter and its
    update pipeline."""
    if not variables:
        return spec
    bound = dict(spec)
    if isinstance(spec.get(query_field), dict):
        bound[query_field] = bind_variables(spec[query_field], variables)
    if update_field and isinstance(spec.get(update_field), list):
        bound[update_field] = bind_pipeline(spec[update_field], variables)
    return bound


def _insertable(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise MongoError(2, "document to insert must be an object")
    return _with_id(doc)


def _is_operator_update(update: Any) -> bool:
    if not isinstance(update, dict) or not update:
        return False
    first = next(iter(update))
    operator = bool(first.startswith("$"))
    for name in update:
        if name.startswith("$") != operator:
            raise MongoError(9, f"Unknown modifier: {name}. Expected a valid update modifier or pipeline-style "
                                "update specified as an array")
    return operator


class Commands:
    """Dispatches commands to the store."""

    def __init__(self, store: Store, port: int, test_commands: bool = False,
                 memory_limit: int = DEFAULT_LIMIT) -> None:
        self.store = store  # the documents and indexes
        self.operations = Operations(memory_limit)  # the commands running, for currentOp and killOp
        self.idle_connections: Callable[[], list[tuple[int, str]]] = lambda: []  # (id, client), set by the server
        self.test_commands = test_commands  # configureFailPoint allowed (--enable-test-commands)
        self.fail_command: dict[str, Any] | None = None  # the failCommand failpoint, while on
        self.engine = Engine()  # update, projection and pipeline semantics
        self.cursors = Cursors()  # open cursors for getMore
        self.port = port  # the port served, for hello and hostInfo
        self.started = time.time()  # for uptime
        self.topology_version = {"processId": ObjectId(), "counter": Int64(0)}  # what awaitable hellos watch
        self.connections = 0  # open connections, kept by the server
        self.connections_total = 0  # connections ever accepted
        self.opcounters = {k: 0 for k in ("insert", "query", "update", "delete", "getmore", "command")}
        self._handlers: dict[str, Handler] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("cmd_")
        }

    # -- dispatch ------------------------------------------------------------

    def reads_only(self, request: Request) -> bool:
        """Whether a command only reads (an aggregate without $out or $merge)."""
        body = request.body
        if not body:
            return False
        name = next(iter(body))
        if name not in READS:
            return False
        if name == "aggregate":
            pipeline = body.get("pipeline")
            last = pipeline[-1] if isinstance(pipeline, list) and pipeline else None
            return not (isinstance(last, dict) and ("$out" in last or "$merge" in last))
        return True

    def run(self, request: Request, connection_id: int = 0, client: str = "", reader: bool = False) -> dict[str, Any]:
        body = request.body
        if not body:
            return MongoError(59, "no such command: ''").to_reply()
        name = next(iter(body))
        name = _ALIASES.get(name, name)
        target = body.get("collection") if name == "getMore" else body[next(iter(body))]
        ns = f"{request.db}.{target}" if isinstance(target, str) else f"{request.db}.$cmd"
        try:
            with self.operations.running(body, ns, client, connection_id, reader) as op:
                return self._run(name, request, connection_id, op)
        except MongoError as exc:
            return exc.to_reply()

    def _run(self, name: str, request: Request, connection_id: int, op: Operation) -> dict[str, Any]:
        body = request.body
        for key, docs in request.sequences.items():
            existing = body.get(key)
            body[key] = (existing if isinstance(existing, list) else []) + docs
        handler = self._handlers.get(name)
        try:
            if handler is None:
                raise MongoError(59, f"no such command: '{name}'")
            if "autocommit" in body or "startTransaction" in body:
                raise MongoError(20, _TXN_MESSAGE)
            failure = self._failpoint(name)
            if failure is not None and "errorCode" in failure:
                raise MongoError(int(failure["errorCode"]), "Failing command via 'failCommand' failpoint",
                                 **({"errorLabels": failure["errorLabels"]} if "errorLabels" in failure else {}))
            with keys.collation(body.get("collation")):
                reply = handler(body, request)
            if failure is not None and "writeConcernError" in failure:
                reply["writeConcernError"] = failure["writeConcernError"]
            if name in ("hello", "connectionStatus"):
                reply.setdefault("connectionId", connection_id)
            if body.get("writeConcern", {}).get("j") and name in ("insert", "update", "delete", "findAndModify"):
                self.store.sync()
            reply["ok"] = 1.0
            return reply
        except MongoError as exc:
            return exc.to_reply()
        except CloseConnection:
            raise
        except Exception as exc:  # a bug of ours: answer, log, keep serving
            if op.stopped():  # SQLite stopped the statement: killOp or maxTimeMS
                try:
                    op.check()
                except MongoError as stopped:
                    return stopped.to_reply()
            log.exception("command %s failed", name)
            return MongoError(1, f"internal error in {name}: {type(exc).__name__}: {exc}").to_reply()

    def _failpoint(self, name: str) -> dict[str, Any] | None:
        """The failCommand data that applies to this command, counting it down."""
        point = self.fail_command
        if point is None or name not in point["data"].get("failCommands", []):
            return None
        mode = point["mode"]
        if isinstance(mode, dict):
            if "skip" in mode and mode["skip"] > 0:
                mode["skip"] -= 1
                return None
            if "times" in mode:
                mode["times"] -= 1
                if mode["times"] <= 0:
                    self.fail_command = None
        data: dict[str, Any] = point["data"]
        if data.get("closeConnection"):
            raise CloseConnection()
        return data

    def cmd_configureFailPoint(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        if not self.test_commands:
            raise MongoError(59, "no such command: 'configureFailPoint'")
        if body.get("configureFailPoint") != "failCommand":
            raise MongoError(2, "only the failCommand failpoint is supported")
        mode = body.get("mode")
        if mode == "off":
            self.fail_command = None
        elif mode == "alwaysOn" or isinstance(mode, dict):
            self.fail_command = {"mode": dict(mode) if isinstance(mode, dict) else mode, "data": _doc(body, "data")}
        else:
            raise MongoError(2, f"invalid failpoint mode {mode!r}")
        return {}

    def cmd_collMod(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        coll = self._existing(body, request, "collMod", "ns does not exist: {ns}")
        reply: dict[str, Any] = {}
        options = {k: v for k, v in body.items() if k in ("validator", "validationLevel", "validationAction")}
        if "index" in body:
            change = _doc(body, "index")
            index = find_index(coll, change.get("name") or change.get("keyPattern"))
            if index is None:
                raise MongoError(27, "cannot find index for collMod")
            for option in ("expireAfterSeconds", "hidden"):
                if option in change:
                    reply[f"{option}_old"] = index.spec.get(option)
                    reply[f"{option}_new"] = change[option]
            spec = {**index.spec, **{k: v for k, v in change.items() if k in ("expireAfterSeconds", "hidden")}}
            self.store.set_index_spec(coll, index.name, spec)
        if options:
            self.store.set_options(coll, {**coll.options, **options})
        return reply

    def _coll(self, body: dict[str, Any], request: Request, field: str) -> tuple[str, str]:
        return request.db, _check_name(request.db, body.get(field), field)

    def _existing(self, body: dict[str, Any], request: Request, field: str, missing: str) -> Collection:
        """The collection a command names; NamespaceNotFound (26) with ``missing``
        ({ns} filled in) when there is none."""
        db, name = self._coll(body, request, field)
        coll = self.store.get(db, name)
        if coll is None:
            raise MongoError(26, missing.format(ns=f"{db}.{name}"))
        return coll

    # -- handshake and administration --------------------------------------------

    def hello_wait(self, request: Request) -> float:
        """Seconds to hold an awaitable hello: a driver's monitor that already
        knows this server's topologyVersion is answered only when the version
        changes (never, here) or after its maxAwaitTimeMS, as mongod does."""
        body = request.body
        if not body or _ALIASES.get(next(iter(body)), next(iter(body))) != "hello":
            return 0.0
        known = body.get("topologyVersion")
        wait = body.get("maxAwaitTimeMS")
        if not isinstance(known, dict) or known.get("processId") != self.topology_version["processId"]:
            return 0.0
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait <= 0:
            return 0.0
        return min(float(wait), 60_000.0) / 1000.0

    def cmd_hello(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {
            "helloOk": True,
            "isWritablePrimary": True,
            "ismaster": True,
            "topologyVersion": self.topology_version,
            "maxBsonObjectSize": MAX_BSON_BYTES,
            "maxMessageSizeBytes": MAX_MESSAGE_BYTES,
            "maxWriteBatchSize": MAX_WRITE_BATCH,
            "localTime": datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
            "logicalSessionTimeoutMinutes": 30,
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": False,
        }

    def cmd_ping(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {}

    def cmd_buildInfo(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {
            "version": SERVER_VERSION,
            "gitVersion": f"embedded_mongo-{__version__}",
            "versionArray": [int(p) for p in SERVER_VERSION.split(".")] + [0],
            "bits": 64,
            "debug": False,
            "maxBsonObjectSize": MAX_BSON_BYTES,
            "storageEngines": ["sqlite"],
            "javascriptEngine": "none",
            "modules": [],
            "sysInfo": "deprecated",
            "allocator": "system",
            "openssl": {"running": "disabled"},
        }

    def cmd_getParameter(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        known = {
            "featureCompatibilityVersion": {"version": SERVER_VERSION.rsplit(".", 1)[0]},
            "authenticationMechanisms": [],
            "ttlMonitorSleepSecs": 60,
            "cursorTimeoutMillis": Int64(600000),
            "internalQueryMaxPushBytes": 100 * 1024 * 1024,
        }
        if body.get("getParameter") == "*":
            return dict(known)
        wanted = [k for k in body if k not in _GENERIC_FIELDS and k != "getParameter"]
        missing = [k for k in wanted if k not in known]
        if missing or not wanted:
            raise MongoError(72, "no option found to get")
        return {k: known[k] for k in wanted}

    def cmd_serverStatus(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        uptime = time.time() - self.started
        rss = _rss_bytes()
        return {
            "host": f"{socket.gethostname()}:{self.port}",
            "version": SERVER_VERSION,
            "process": "mongod",
            "pid": Int64(os.getpid()),
            "uptime": float(int(uptime)),
            "uptimeMillis": Int64(int(uptime * 1000)),
            "uptimeEstimate": Int64(int(uptime)),
            "localTime": datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
            "connections": {"current": self.connections, "available": 20000 - self.connections,
                            "totalCreated": self.connections_total},
            "opcounters": {k: Int64(v) for k, v in self.opcounters.items()},
            "mem": {"bits": 64, "resident": rss // (1024 * 1024), "virtual": rss // (1024 * 1024),
                    "supported": True},
            "metrics": {"cursor": {"open": {"total": Int64(len(self.cursors))}},
                        "query": {"sort": {"spillToDisk": Int64(SPILLS["$sort"])},
                                  "group": {"spills": Int64(SPILLS["$group"])}}},
            "storageEngine": {"name": "sqlite", "supportsCommittedReads": False, "persistent": True},
        }

    def cmd_connectionStatus(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}}

    def cmd_hostInfo(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
        return {
            "system": {"currentTime": datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
                       "hostname": f"{socket.gethostname()}:{self.port}", "cpuAddrSize": 64,
                       "memSizeMB": Int64(pages // (1024 * 1024)), "numCores": os.cpu_count() or 1,
                       "cpuArch": platform.machine()},
            "os": {"type": platform.system(), "name": platform.platform(), "version": platform.release()},
            "extra": {},
        }

    def cmd_whatsmyuri(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"you": "127.0.0.1"}

    def cmd_getCmdLineOpts(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"argv": ["embedded_mongo"], "parsed": {"net": {"port": self.port}}}

    def cmd_getLog(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        if body.get("getLog") == "*":
            return {"names": ["global", "startupWarnings"]}
        return {"totalLinesWritten": 0, "log": []}

    def cmd_getFreeMonitoringStatus(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"state": "disabled"}

    def cmd_listCommands(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"commands": {name: {"help": ""} for name in sorted(self._handlers)}}

    def cmd_endSessions(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {}

    def cmd_startSession(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"id": {"id": __import__("uuid").uuid4()}, "timeoutMinutes": 30}

    def cmd_refreshSessions(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        return {}

    def cmd_fsync(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        self.store.sync()
        return {"numFiles": 1}

    def cmd_commitTransaction(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        raise MongoError(20, _TXN_MESSAGE)

    cmd_abortTransaction = cmd_commitTransaction

    def cmd_listDatabases(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        matches = compile_filter(_doc(body, "filter"))
        databases = []
        total = 0
        for name in self.store.databases():
            size = sum(self.store.data_size(c) for c in self.store.collections_of(name))
            total += size
            entry: dict[str, Any] = {"name": name}
            if not body.get("nameOnly"):
                entry.update(sizeOnDisk=Int64(max(size, 4096)), empty=size == 0)
            if matches(entry):
                databases.append(entry)
        reply: dict[str, Any] = {"databases": databases}
        if not body.get("nameOnly"):
            reply["totalSize"] = Int64(total)
            reply["totalSizeMb"] = Int64(total // (1024 * 1024))
        return reply

    def cmd_listCollections(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        matches = compile_filter(_doc(body, "filter"))
        items = []
        for coll in self.store.collections_of(request.db):
            entry: dict[str, Any] = {"name": coll.name, "type": "collection"}
            if not body.get("nameOnly"):
                entry.update(options=coll.options, info={"readOnly": False},
                             idIndex={"v": 2, "key": {"_id": 1}, "name": "_id_"})
            if matches(entry):
                items.append(entry)
        cursor_opts = _doc(body, "cursor")
        return {"cursor": self.cursors.first_batch(f"{request.db}.$cmd.listCollections", iter(items),
                                                   cursor_opts.get("batchSize"))}

    def cmd_create(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "create")
        if "viewOn" in body:
            raise MongoError(115, "views are not supported by the embedded store")
        if self.store.get(db, name) is not None:
            raise MongoError(48, f"Collection {db}.{name} already exists.")
        options = {k: v for k, v in body.items() if k != "create" and k not in _GENERIC_FIELDS}
        self.store.create(db, name, options)
        return {}

    def cmd_drop(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "drop")
        coll = self.store.get(db, name)
        if coll is None:
            return {"ns": f"{db}.{name}"}
        indexes = len(coll.indexes)
        self.store.drop(coll)
        return {"ns": f"{db}.{name}", "nIndexesWas": indexes}

    def cmd_dropDatabase(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        for coll in self.store.collections_of(request.db):
            self.store.drop(coll)
        return {"dropped": request.db}

    def cmd_renameCollection(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        if request.db != "admin":
            raise MongoError(13, "renameCollection may only be run against the admin database.")
        source, target = body.get("renameCollection"), body.get("to")
        if not isinstance(source, str) or not isinstance(target, str) or "." not in source or "." not in target:
            raise MongoError(73, "Invalid namespace specified")
        src_db, src_name = source.split(".", 1)
        dst_db, dst_name = target.split(".", 1)
        _check_name(dst_db, dst_name, "renameCollection")
        coll = self.store.get(src_db, src_name)
        if coll is None:
            raise MongoError(26, "Source collection " + source + " does not exist")
        existing = self.store.get(dst_db, dst_name)
        with self.store.transaction():
            if existing is not None:
                if not body.get("dropTarget"):
                    raise MongoError(48, "target namespace exists")
                self.store.drop(existing)
            self.store.rename(coll, dst_db, dst_name)
        return {}

    def cmd_collStats(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        coll = self._existing(body, request, "collStats", "Collection [{ns}] not found.")
        count = self.store.count(coll)
        size = self.store.data_size(coll)
        return {"ns": coll.namespace, "count": count, "size": size, "avgObjSize": size // count if count else 0,
                "storageSize": size, "nindexes": len(coll.indexes), "capped": False,
                "indexSizes": {n: 0 for n in coll.indexes}, "totalIndexSize": 0}

    def cmd_dbStats(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        colls = self.store.collections_of(request.db)
        objects = sum(self.store.count(c) for c in colls)
        size = sum(self.store.data_size(c) for c in colls)
        return {"db": request.db, "collections": len(colls), "views": 0, "objects": objects,
                "avgObjSize": size / objects if objects else 0, "dataSize": float(size), "storageSize": float(size),
                "indexes": sum(len(c.indexes) for c in colls), "indexSize": 0.0,
                "totalSize": float(size), "scaleFactor": 1, "fsUsedSize": 0.0, "fsTotalSize": 0.0}

    def _current_ops(self, idle: bool) -> list[dict[str, Any]]:
        running = [op.describe() for op in self.operations.all()]
        if idle:
            busy = {op["connectionId"] for op in running}
            running += [{"type": "op", "desc": f"conn{cid}", "connectionId": cid, "client": client, "active": False}
                        for cid, client in self.idle_connections() if cid not in busy]
        return running

    def cmd_currentOp(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        """The operations running (``$all``: and the idle connections), as
        mongod lists them; the command's other fields filter them."""
        if request.db != "admin":
            raise MongoError(13, "access denied: currentOp may only be run against the admin database")
        wanted = {k: v for k, v in body.items()
                  if k not in ("currentOp", "$all", "$ownOps", "allUsers") and k not in _GENERIC_FIELDS}
        matches = compile_filter(wanted)
        return {"inprog": [op for op in self._current_ops(bool(body.get("$all"))) if matches(op)]}

    def cmd_killOp(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        """Marks an operation to stop at its next checkpoint (it answers 11601)."""
        if request.db != "admin":
            raise MongoError(13, "access denied: killOp may only be run against the admin database")
        opid = body.get("op")
        if isinstance(opid, bool) or not isinstance(opid, (int, float)):
            raise type_mismatch("op", "long", opid)
        found = self.operations.kill(int(opid))
        log.info("event=kill_op opid=%d found=%s", int(opid), found)
        return {"info": "attempting to kill op"}

    def cmd_killCursors(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        ids = body.get("cursors")
        if not isinstance(ids, list):
            raise type_mismatch("cursors", "array", ids)
        killed, missing = self.cursors.kill([int(i) for i in ids])
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": []}

    # -- indexes ----------------------------------------------------------------

    def cmd_createIndexes(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "createIndexes")
        specs = body.get("indexes")
        if not isinstance(specs, list) or not specs:
            raise MongoError(2, "Must specify at least one index to create")
        with self.store.transaction():
            coll = self.store.get(db, name)
            created_collection = coll is None
            coll = coll or self.store.create(db, name)
            before = len(coll.indexes)
            for raw_spec in specs:
                spec = _index_spec(raw_spec)
                existing = coll.indexes.get(spec["name"])
                if existing is not None:
                    if _same_index(existing.spec, spec):
                        continue
                    if list(existing.spec["key"].items()) == list(spec["key"].items()):
                        raise MongoError(85, f"An equivalent index already exists with the same name but different "
                                             f"options. Requested index: {spec}, existing index: {existing.spec}")
                    raise MongoError(86, f"An existing index has the same name as the requested index. When index "
                                         f"names are not specified, they are auto generated and can cause "
                                         f"conflicts. Requested index: {spec}, existing index: {existing.spec}")
                same_key = [i for i in coll.indexes.values() if list(i.spec["key"].items()) == list(spec["key"].items())
                            and _options(i.spec) == _options(spec)]
                if same_key:
                    raise MongoError(85, f"Index already exists with a different name: {same_key[0].name}")
                self.store.create_index(coll, spec)
        reply: dict[str, Any] = {"numIndexesBefore": before, "numIndexesAfter": len(coll.indexes),
                                 "createdCollectionAutomatically": created_collection}
        if before == len(coll.indexes):
            reply["note"] = "all indexes already exist"
        return reply

    def cmd_listIndexes(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        coll = self._existing(body, request, "listIndexes", "ns does not exist: {ns}")
        items = [dict(index.spec) for index in coll.indexes.values()]
        return {"cursor": self.cursors.first_batch(f"{coll.db}.$cmd.listIndexes", iter(items),
                                                   _doc(body, "cursor").get("batchSize"))}

    def cmd_dropIndexes(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        coll = self._existing(body, request, "dropIndexes", "ns not found {ns}")
        wanted = body.get("index")
        count = len(coll.indexes)
        if wanted == "*":
            names = [n for n in coll.indexes if n != "_id_"]
        elif isinstance(wanted, list):
            names = wanted
        else:
            index = find_index(coll, wanted)
            if index is None:
                raise MongoError(27, f"index not found with name [{wanted}]" if isinstance(wanted, str)
                                 else f"can't find index with key: {wanted}")
            names = [index.name]
        for index_name in names:
            if index_name == "_id_":
                raise MongoError(72, "cannot drop _id index")
            if index_name not in coll.indexes:
                raise MongoError(27, f"index not found with name [{index_name}]")
        with self.store.transaction():
            for index_name in names:
                self.store.drop_index(coll, index_name)
        return {"nIndexesWas": count}

    # -- reads --------------------------------------------------------------------

    def _results(self, matches: Iterator[Match], projection: dict[str, Any]) -> Iterator[Any]:
        if not projection:
            return (RawBSONDocument(m.raw) for m in matches)
        return (self.engine.project([m.doc], projection)[0] for m in matches)

    def cmd_find(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "find")
        self.opcounters["query"] += 1
        if body.get("tailable"):
            raise MongoError(2, "error processing query: tailable cursor requested on non capped collection")
        limit = _int(body, "limit", 0, minimum=None)
        single = bool(body.get("singleBatch")) or limit < 0
        limit = abs(limit)
        batch_size = body.get("batchSize")
        if batch_size is not None:
            batch_size = _int(body, "batchSize")
        if limit and (batch_size is None or batch_size > limit):
            batch_size = limit
        coll = self.store.get(db, name)
        query = bind_variables(_doc(body, "filter"), _let(body))
        sort = parse_sort(body.get("sort"))
        matches = execute(self.store, coll, query, sort, _int(body, "skip"), limit, body.get("hint"))
        items = self._results(matches, _doc(body, "projection"))
        return {"cursor": self.cursors.first_batch(f"{db}.{name}", items, batch_size, single)}

    def cmd_getMore(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        self.opcounters["getmore"] += 1
        cursor_id = body.get("getMore")
        if not isinstance(cursor_id, int):
            raise type_mismatch("getMore", "long", cursor_id)
        collection = body.get("collection")
        if not isinstance(collection, str):
            raise type_mismatch("collection", "string", collection)
        batch = _int(body, "batchSize", 0)
        return {"cursor": self.cursors.get_more(int(cursor_id), f"{request.db}.{collection}", batch)}

    def cmd_count(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "count")
        coll = self.store.get(db, name)
        query = _doc(body, "query")
        skip, limit = _int(body, "skip"), abs(_int(body, "limit", 0, minimum=None))
        if coll is None:
            return {"n": 0}
        if not query and not body.get("hint"):
            total = max(self.store.count(coll) - skip, 0)
            return {"n": min(total, limit) if limit else total}
        return {"n": sum(1 for _ in execute(self.store, coll, query, [], skip, limit, body.get("hint")))}

    def cmd_distinct(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "distinct")
        key = body.get("key")
        if not isinstance(key, str):
            raise type_mismatch("key", "string", key)
        values: dict[bytes, Any] = {}
        path = key.split(".")
        for match in execute(self.store, self.store.get(db, name), _doc(body, "query"), hint=body.get("hint")):
            for value in keys.path_values(match.doc, path):
                if value is keys.MISSING:
                    continue
                for item in value if isinstance(value, list) else [value]:
                    values.setdefault(keys.encode(item), item)
        return {"values": [values[k] for k in sorted(values)]}

    def cmd_aggregate(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        pipeline = body.get("pipeline")
        if not isinstance(pipeline, list):
            raise type_mismatch("pipeline", "array", pipeline)
        if "cursor" not in body and not body.get("explain"):
            raise MongoError(9, "The 'cursor' option is required, except for aggregate with the explain argument")
        for stage in pipeline:
            if not isinstance(stage, dict) or len(stage) != 1:
                raise MongoError(40323, "A pipeline stage specification object must contain exactly one field.")
        if pipeline and "$changeStream" in pipeline[0]:
            raise MongoError(40573, "The $changeStream stage is only supported on replica sets")
        collection_name = body.get("aggregate")
        if collection_name == 1:
            db, name = request.db, None
        else:
            db, name = self._coll(body, request, "aggregate")
        pipeline = bind_pipeline(pipeline, _let(body))
        output = pipeline[-1] if pipeline and next(iter(pipeline[-1])) in ("$out", "$merge") else None
        stages = pipeline[:-1] if output else pipeline
        docs, rest = self._pipeline_input(db, name, stages)
        if body.get("explain"):
            return {"stages": stages}
        others = self._whole_collections(db, [s for s in stages if not _chunked_lookup(s)])

        def find(other: str, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
            return (m.doc for m in execute(self.store, self.store.get(db, other), query))

        results = Pipeline(self.engine, self.engine.pipeline_database(others), find).run(docs, rest)
        if output is not None:
            self._write_output(db, output, list(results))
            results = iter(())
        namespace = f"{db}.{name}" if name else f"{db}.$cmd.aggregate"
        return {"cursor": self.cursors.first_batch(namespace, results, _doc(body, "cursor").get("batchSize"))}

    def _whole_collections(self, db: str, stages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """The collections that $graphLookup, $unionWith and $lookup with a pipeline
        read, loaded whole, within the memory limit of a blocking stage (292 past it)."""
        limit, _ = limits()
        used = 0
        others: dict[str, list[dict[str, Any]]] = {}
        for other in _pipeline_collections(stages):
            others[other] = []
            for match in execute(self.store, self.store.get(db, other), {}):
                others[other].append(match.doc)
                used += len(match.raw) * PYTHON_OVERHEAD
                if used > limit:
                    raise over_limit("$lookup", limit, can_spill=False)
        return others

    @staticmethod
    def _pushed(stages: list[dict[str, Any]]) -> int:
        """How many leading stages the store answers itself: a ``$match`` and a
        ``$sort``, which an index may serve."""
        count = 1 if stages and "$match" in stages[0] else 0
        if len(stages) > count and "$sort" in stages[count]:
            count += 1
        return count

    def _pipeline_input(self, db: str, name: str | None,
                        stages: list[dict[str, Any]]) -> tuple[Iterator[dict[str, Any]], list[dict[str, Any]]]:
        """The documents entering the pipeline, and the stages left to run."""
        if name is None:
            if stages and "$documents" in stages[0]:
                docs = stages[0]["$documents"]
                return iter(list(docs) if isinstance(docs, list) else []), stages[1:]
            if stages and "$currentOp" in stages[0]:
                if db != "admin":
                    raise MongoError(73, "$currentOp must be run against the 'admin' database with {aggregate: 1}")
                options = stages[0]["$currentOp"] if isinstance(stages[0]["$currentOp"], dict) else {}
                return iter(self._current_ops(bool(options.get("idleConnections")))), stages[1:]
            return iter(()), stages
        pushed = self._pushed(stages)
        query: dict[str, Any] = {}
        sort: list[tuple[str, Any]] = []
        for stage in stages[:pushed]:
            if "$match" in stage:
                query = stage["$match"] if isinstance(stage["$match"], dict) else {}
            else:
                sort = parse_sort(stage["$sort"])
        limit = 0
        if sort and pushed < len(stages) and "$limit" in stages[pushed]:
            value = stages[pushed]["$limit"]
            limit = int(value) if isinstance(value, (int, float)) and value > 0 else 0
        docs = (m.doc for m in execute(self.store, self.store.get(db, name), query, sort, 0, limit))
        return docs, stages[pushed:]

    def _write_output(self, db: str, stage: dict[str, Any], results: list[dict[str, Any]]) -> None:
        op, spec = next(iter(stage.items()))
        target_db, target = db, spec
        if isinstance(spec, dict):
            into = spec.get("into", spec) if op == "$merge" else spec
            if isinstance(into, dict):
                target_db, target = into.get("db", db), into.get("coll")
            else:
                target = into
        target = _check_name(target_db, target, op)
        with self.store.transaction():
            coll = self.store.get_or_create(target_db, target)
            if op == "$out":
                for match in list(execute(self.store, coll, {})):
                    self.store.delete(coll, match.rid, match.doc)
                for doc in results:
                    self.store.insert(coll, _with_id(doc))
                return
            options = spec if isinstance(spec, dict) else {}
            on = options.get("on", "_id")
            on_fields = [on] if isinstance(on, str) else list(on)
            when_matched = options.get("whenMatched", "merge")
            when_not_matched = options.get("whenNotMatched", "insert")
            for doc in results:
                doc = _with_id(doc)
                query = {f: doc.get(f) for f in on_fields}
                found = next(execute(self.store, coll, query, limit=1), None)
                if found is None:
                    if when_not_matched == "insert":
                        self.store.insert(coll, doc)
                    elif when_not_matched == "fail":
                        raise MongoError(13113, "$merge could not find a matching document in the target collection")
                    continue
                if when_matched == "fail":
                    raise MongoError(11000, f"E11000 duplicate key error collection: {coll.namespace} "
                                            f"(whenMatched: fail)", keyPattern={f: 1 for f in on_fields},
                                     keyValue=query)
                if when_matched == "keepExisting":
                    continue
                if when_matched == "replace":
                    new = {**doc, "_id": found.doc["_id"]}
                elif isinstance(when_matched, list):
                    new = self.engine.apply_update(found.doc, when_matched)
                else:
                    new = {**found.doc, **{k: v for k, v in doc.items() if k != "_id"}}
                self.store.replace(coll, found.rid, found.doc, new)

    # -- writes ---------------------------------------------------------------

    def _write_batch(self, body: dict[str, Any], field: str) -> tuple[list[Any], bool]:
        items = body.get(field)
        if not isinstance(items, list):
            raise type_mismatch(field, "array", items)
        if len(items) > MAX_WRITE_BATCH:
            raise MongoError(16, f"Write batch sizes must be between 1 and {MAX_WRITE_BATCH}. "
                                 f"Got {len(items)} operations.")
        ordered = body.get("ordered", True)
        return items, bool(ordered)

    def cmd_insert(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "insert")
        docs, ordered = self._write_batch(body, "documents")
        errors = []
        n = 0
        if len(docs) == 1:  # one document: the command's transaction is its undo
            self.opcounters["insert"] += 1
            checkpoint()
            try:
                with self.store.transaction():
                    self.store.insert(self.store.get_or_create(db, name), _insertable(docs[0]), atomic=False)
                n = 1
            except MongoError as exc:
                errors.append(exc.to_write_error(0))
            docs = []
        if docs:
            with self.store.transaction():
                coll = self.store.get_or_create(db, name)
                for position, doc in enumerate(docs):
                    self.opcounters["insert"] += 1
                    checkpoint()
                    try:
                        self.store.insert(coll, _insertable(doc))
                        n += 1
                    except Interrupted:
                        raise
                    except MongoError as exc:
                        errors.append(exc.to_write_error(position))
                        if ordered:
                            break
        reply: dict[str, Any] = {"n": n}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def cmd_update(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "update")
        updates, ordered = self._write_batch(body, "updates")
        errors, upserted = [], []
        n = modified = 0
        with self.store.transaction():
            coll = self.store.get(db, name)
            for position, spec in enumerate(updates):
                self.opcounters["update"] += 1
                try:
                    with self.store.transaction(), keys.collation(_doc(spec, "collation") if isinstance(spec, dict)
                                                                  else None):
                        if not isinstance(spec, dict):
                            raise MongoError(14, "update statement must be an object")
                        spec = _bound_statement(spec, {**_let(body), **evaluate_variables(_doc(spec, "c"))}, "q", "u")
                        matched, changed, new_id, coll = self._update_one_spec(db, name, coll, spec)
                    n += matched
                    modified += changed
                    if new_id is not None:
                        n += 1
                        upserted.append({"index": position, "_id": new_id})
                except Interrupted:
                    raise
                except MongoError as exc:
                    errors.append(exc.to_write_error(position))
                    if ordered:
                        break
        reply: dict[str, Any] = {"n": n, "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _update_one_spec(self, db: str, name: str, coll: Collection | None,
                         spec: dict[str, Any]) -> tuple[int, int, Any, Collection | None]:
        query = spec.get("q", {})
        update = spec.get("u")
        if not isinstance(query, dict):
            raise type_mismatch("q", "object", query)
        if not isinstance(update, (dict, list)):
            raise type_mismatch("u", "object", update)
        array_filters = spec.get("arrayFilters")
        if isinstance(update, list):
            update = bind_pipeline(update, None)
        multi = bool(spec.get("multi"))
        operator = isinstance(update, list) or _is_operator_update(update)
        if multi and not operator:
            raise MongoError(9, "multi update is not supported for replacement-style update")
        if "sort" in spec:
            raise MongoError(40415, "BSON field 'update.updates.sort' is an unknown field.")
        matches = list(execute(self.store, coll, query, [], 0, 0 if multi else 1, spec.get("hint")))
        if not matches:
            if not spec.get("upsert"):
                return 0, 0, None, coll
            coll = coll or self.store.get_or_create(db, name)
            doc = self._new_document(query, update, array_filters, operator)
            self.store.insert(coll, doc)
            return 0, 0, doc["_id"], coll
        changed = 0
        assert coll is not None
        for match in matches:
            new = self._updated(match.doc, update, array_filters, operator)
            raw = encode_document(new)
            if raw != match.raw:
                self.store.replace(coll, match.rid, match.doc, new)
                changed += 1
        return len(matches), changed, None, coll

    def _updated(self, doc: dict[str, Any], update: Any, array_filters: Any, operator: bool) -> dict[str, Any]:
        if operator:
            new = self.engine.apply_update(doc, update, array_filters)
        else:
            new = {"_id": doc["_id"], **{k: v for k, v in update.items() if k != "_id"}}
            if "_id" in update and keys.encode(update["_id"]) != keys.encode(doc["_id"]):
                raise MongoError(66, "After applying the update, the (immutable) field '_id' was found to have "
                                     f"been altered to _id: {update['_id']!r}")
        if keys.encode(new.get("_id")) != keys.encode(doc["_id"]):
            raise MongoError(66, "Performing an update on the path '_id' would modify the immutable field '_id'")
        return new

    def _new_document(self, query: dict[str, Any], update: Any, array_filters: Any, operator: bool) -> dict[str, Any]:
        doc = self.engine.upsert_document(query, update, array_filters) if operator else dict(update)
        query_id = query.get("_id", _NO_ID)
        operators = isinstance(query_id, dict) and any(str(k).startswith("$") for k in query_id)
        if query_id is not _NO_ID and not operators:
            if "_id" in doc and keys.encode(doc["_id"]) != keys.encode(query_id) and not operator:
                raise MongoError(66, "The _id in the replacement does not match the _id in the query")
            doc = {"_id": query_id, **{k: v for k, v in doc.items() if k != "_id"}}
        return _with_id(doc)

    def cmd_delete(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "delete")
        deletes, ordered = self._write_batch(body, "deletes")
        errors = []
        n = 0
        with self.store.transaction():
            coll = self.store.get(db, name)
            for position, spec in enumerate(deletes):
                self.opcounters["delete"] += 1
                try:
                    if not isinstance(spec, dict):
                        raise MongoError(14, "delete statement must be an object")
                    spec = _bound_statement(spec, _let(body), "q")
                    query = spec.get("q")
                    if not isinstance(query, dict):
                        raise type_mismatch("q", "object", query)
                    limit = spec.get("limit", 0)
                    if limit not in (0, 1):
                        raise MongoError(9, "The limit field in delete objects must be 0 or 1. Got " + str(limit))
                    with keys.collation(spec.get("collation")):
                        matches = list(execute(self.store, coll, query, [], 0, int(limit), spec.get("hint")))
                    for match in matches:
                        assert coll is not None
                        self.store.delete(coll, match.rid, match.doc)
                        n += 1
                except Interrupted:
                    raise
                except MongoError as exc:
                    errors.append(exc.to_write_error(position))
                    if ordered:
                        break
        reply: dict[str, Any] = {"n": n}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def cmd_findAndModify(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        db, name = self._coll(body, request, "findAndModify")
        self.opcounters["command"] += 1
        body = _bound_statement(body, _let(body), "query", "update")
        query = _doc(body, "query")
        update = body.get("update")
        remove = bool(body.get("remove"))
        if remove == (update is not None):
            raise MongoError(9, "Either an update or remove=true must be specified")
        if remove and (body.get("new") or body.get("upsert")):
            raise MongoError(9, "Cannot specify both new=true and remove=true; 'remove' always returns the deleted "
                                "document" if body.get("new") else "Cannot specify both upsert=true and remove=true")
        if update is not None and not isinstance(update, (dict, list)):
            raise type_mismatch("update", "object", update)
        if isinstance(update, list):
            update = bind_pipeline(update, None)
        projection = _doc(body, "fields")
        array_filters = body.get("arrayFilters")
        with self.store.transaction():
            coll = self.store.get(db, name)
            found = next(execute(self.store, coll, query, parse_sort(body.get("sort")), 0, 1, body.get("hint")), None)
            last_error: dict[str, Any] = {"n": 0}
            value: dict[str, Any] | None = None
            if remove:
                if found is not None:
                    assert coll is not None
                    self.store.delete(coll, found.rid, found.doc)
                    last_error["n"] = 1
                    value = found.doc
            else:
                operator = isinstance(update, list) or _is_operator_update(update)
                last_error["updatedExisting"] = found is not None
                if found is not None:
                    assert coll is not None
                    new = self._updated(found.doc, update, array_filters, operator)
                    if encode_document(new) != found.raw:
                        self.store.replace(coll, found.rid, found.doc, new)
                    last_error["n"] = 1
                    value = new if body.get("new") else found.doc
                elif body.get("upsert"):
                    coll = coll or self.store.get_or_create(db, name)
                    new = self._new_document(query, update, array_filters, operator)
                    self.store.insert(coll, new)
                    last_error.update(n=1, upserted=new["_id"])
                    value = new if body.get("new") else None
        if value is not None and projection:
            value = self.engine.project([value], projection)[0]
        return {"lastErrorObject": last_error, "value": value}

    def cmd_explain(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        inner = body.get("explain")
        if not isinstance(inner, dict) or not inner:
            raise type_mismatch("explain", "object", inner)
        command = next(iter(inner))
        db, name = request.db, _check_name(request.db, inner.get(command), "explain")
        coll = self.store.get(db, name)
        query = inner.get("filter") or inner.get("query") or {}
        sort = parse_sort(inner.get("sort"))
        plan = choose(coll, query, sort, inner.get("hint")).describe() if coll else {"stage": "EOF"}
        return {"queryPlanner": {"namespace": f"{db}.{name}", "parsedQuery": query, "winningPlan": plan},
                "serverInfo": {"version": SERVER_VERSION}}

    # -- background work --------------------------------------------------------

    def expire_ttl(self, now: datetime.datetime | None = None) -> int:
        """Deletes documents whose TTL index date has passed; returns how many."""
        now = now or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        removed = 0
        for coll in list(self.store.collections.values()):
            for index in list(coll.indexes.values()):
                seconds = index.spec.get("expireAfterSeconds")
                if seconds is None or len(index.paths) != 1:
                    continue
                cutoff = now - datetime.timedelta(seconds=float(seconds))
                low, _ = keys.bracket_bounds(cutoff)
                expired = [(rid, decode(raw)) for rid, raw in
                           self.store.index_scan(coll, index, low, keys.encode(cutoff))]
                if expired:
                    with self.store.transaction():
                        for rid, doc in expired:
                            self.store.delete(coll, rid, doc)
                    removed += len(expired)
        return removed


def _index_spec(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise MongoError(14, "index specification must be an object")
    key = raw.get("key")
    if not isinstance(key, dict) or not key:
        raise MongoError(67, "Index keys cannot be empty.")
    for field, direction in key.items():
        if isinstance(direction, str):
            if direction != "hashed":
                raise MongoError(67, f"Index type '{direction}' is not supported by the embedded store")
        elif isinstance(direction, bool) or not isinstance(direction, (int, float)) or direction == 0:
            raise MongoError(67, f"Values in the index key pattern can only be positive or negative numbers or "
                                 f"strings; got {field}: {direction!r}")
    name = raw.get("name") or "_".join(f"{f}_{d}" for f, d in key.items())
    if not isinstance(name, str):
        raise type_mismatch("name", "string", name)
    spec: dict[str, Any] = {"v": 2, "key": dict(key), "name": name}
    for option in ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds", "hidden", "collation",
                   "background"):
        if option in raw:
            spec[option] = raw[option]
    if "expireAfterSeconds" in spec:
        seconds = spec["expireAfterSeconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise MongoError(67, "TTL index 'expireAfterSeconds' option must be a non-negative number")
        if len(key) != 1:
            raise MongoError(67, "TTL indexes are single-field indexes, compound indexes do not support TTL")
    if "partialFilterExpression" in spec and not isinstance(spec["partialFilterExpression"], dict):
        raise MongoError(67, "partialFilterExpression must be an object")
    if spec.get("unique") is False:
        del spec["unique"]
    return spec


def _options(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in ("v", "key", "name", "background")}


def _same_index(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return list(a["key"].items()) == list(b["key"].items()) and _options(a) == _options(b)


def _chunked_lookup(stage: Any) -> bool:
    """A top-level $lookup the pipeline runs chunk by chunk (reading only what it joins)."""
    return isinstance(stage, dict) and "$lookup" in stage and simple_lookup(stage["$lookup"])


def _pipeline_collections(stages: list[Any]) -> set[str]:
    """Collections that lookup-like stages read, at any depth."""
    found: set[str] = set()
    for stage in stages:
        if not isinstance(stage, dict):
            continue
        for op, spec in stage.items():
            if op in ("$lookup", "$graphLookup") and isinstance(spec, dict) and isinstance(spec.get("from"), str):
                found.add(spec["from"])
                found |= _pipeline_collections(spec.get("pipeline") or [])
            elif op == "$unionWith":
                coll = spec if isinstance(spec, str) else spec.get("coll") if isinstance(spec, dict) else None
                if isinstance(coll, str):
                    found.add(coll)
            elif op == "$facet" and isinstance(spec, dict):
                for sub in spec.values():
                    found |= _pipeline_collections(sub if isinstance(sub, list) else [])
    return found


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
