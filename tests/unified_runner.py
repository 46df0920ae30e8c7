"""An interpreter of MongoDB's unified test format, for the CRUD spec tests.

It covers what ``tests/conformance/mongodb-crud`` uses: client, database and
collection entities, ``initialData``, the CRUD operations, ``expectResult``,
``expectError`` and ``outcome``, with the format's matching rules (extra fields
allowed only in root documents, numbers compared by value, ``$$exists``,
``$$type``, ``$$unsetOrMatches``). ``expectEvents`` (command monitoring) is not
part of what a server is judged on and is not checked.
"""

from __future__ import annotations

import collections
import datetime
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pymongo
from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp, json_util
from bson.codec_options import CodecOptions
from pymongo import DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

SERVER_VERSION = (7, 0, 0)
SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance", "mongodb-crud")


# Outcomes of this run's spec tests, for the summary line pytest prints.
RESULTS: collections.Counter[str] = collections.Counter()


class NotApplicable(Exception):
    """The test's requirements exclude a standalone server of our version."""


class Mismatch(AssertionError):
    """An actual value does not match the expected one."""


@dataclass
class SpecTest:
    """One test of one spec file."""

    file: str  # the spec file name
    description: str  # the test's description
    spec: dict[str, Any]  # the whole file
    test: dict[str, Any]  # this test

    @property
    def key(self) -> str:
        return f"{self.file}::{self.description}"


def load_tests(directory: str = SPEC_DIR) -> list[SpecTest]:
    found = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as handle:
            spec = json_util.loads(handle.read())
        for test in spec["tests"]:
            found.append(SpecTest(os.path.basename(path), test["description"], spec, test))
    return found


def _version(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def _requirement_met(requirement: dict[str, Any]) -> bool:
    if "minServerVersion" in requirement and _version(requirement["minServerVersion"]) > SERVER_VERSION:
        return False
    if "maxServerVersion" in requirement and _version(requirement["maxServerVersion"]) < SERVER_VERSION:
        return False
    if "topologies" in requirement and "single" not in requirement["topologies"]:
        return False
    if requirement.get("serverless") == "require" or requirement.get("auth") is True:
        return False
    return not requirement.get("csfle")


def applicable(test: SpecTest) -> bool:
    for requirements in (test.spec.get("runOnRequirements"), test.test.get("runOnRequirements")):
        if requirements and not any(_requirement_met(r) for r in requirements):
            return False
    return "skipReason" not in test.test


# -- matching ---------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "double": (float,), "string": (str,), "object": (dict,), "array": (list,), "binData": (bytes, Binary),
    "objectId": (ObjectId,), "bool": (bool,), "date": (datetime.datetime,), "null": (type(None),),
    "regex": (Regex, re.Pattern), "int": (int,), "long": (Int64, int), "decimal": (Decimal128,),
    "timestamp": (Timestamp,),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal128)) and not isinstance(value, bool)


def _number(value: Any) -> Any:
    return value.to_decimal() if isinstance(value, Decimal128) else value


def _type_matches(value: Any, names: str | list[str]) -> bool:
    for name in [names] if isinstance(names, str) else names:
        if name == "number" and _is_number(value):
            return True
        if name == "int" and isinstance(value, int) and not isinstance(value, (bool, Int64)):
            return True
        if name != "int" and isinstance(value, _TYPES.get(name, ())) and not (
                name in ("long", "double") and isinstance(value, bool)):
            return True
    return False


def match(expected: Any, actual: Any, root: bool = True, path: str = "$") -> None:
    """Raises Mismatch unless ``actual`` matches ``expected`` by the format's rules."""
    if isinstance(expected, dict) and len(expected) == 1 and next(iter(expected)).startswith("$$"):
        operator, argument = next(iter(expected.items()))
        if operator == "$$type":
            if not _type_matches(actual, argument):
                raise Mismatch(f"{path}: {actual!r} is not of type {argument}")
            return
        if operator == "$$unsetOrMatches":
            match(argument, actual, root, path)
            return
        if operator == "$$exists":
            return
        raise Mismatch(f"{path}: the runner does not implement {operator}")
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            raise Mismatch(f"{path}: expected a document, got {actual!r}")
        for name, value in expected.items():
            if isinstance(value, dict) and len(value) == 1 and "$$exists" in value:
                if (name in actual) != value["$$exists"]:
                    raise Mismatch(f"{path}.{name}: expected $$exists {value['$$exists']}")
                continue
            if isinstance(value, dict) and "$$unsetOrMatches" in value and name not in actual:
                continue
            if name not in actual:
                raise Mismatch(f"{path}.{name}: missing")
            match(value, actual[name], False, f"{path}.{name}")
        if not root:
            extra = set(actual) - set(expected)
            if extra:
                raise Mismatch(f"{path}: unexpected fields {sorted(extra)}")
        return
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            raise Mismatch(f"{path}: expected {expected!r}, got {actual!r}")
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            match(e, a, root and isinstance(e, dict), f"{path}[{i}]")
        return
    if _is_number(expected) and _is_number(actual):
        if _number(expected) != _number(actual):
            raise Mismatch(f"{path}: expected {expected!r}, got {actual!r}")
        return
    if expected != actual or (type(expected) is bool and type(actual) is not bool):
        raise Mismatch(f"{path}: expected {expected!r}, got {actual!r}")


# -- running -------------------------------------------------------------------------


@dataclass
class Runner:
    """Runs one spec test against a server."""

    uri: str  # the server under test
    entities: dict[str, Any] = field(default_factory=dict)  # id -> client, database or collection
    clients: list[pymongo.MongoClient] = field(default_factory=list)  # to close afterwards

    def run(self, test: SpecTest) -> None:
        if not applicable(test):
            raise NotApplicable(test.key)
        try:
            self._create_entities(test.spec.get("createEntities", []))
            self._load(test.spec.get("initialData", []))
            for operation in test.test["operations"]:
                self._operation(operation)
            for outcome in test.test.get("outcome", []):
                coll = self._plain[outcome["databaseName"]][outcome["collectionName"]]
                actual = list(coll.find({}, sort=[("_id", 1)]))
                match(outcome["documents"], actual, root=False, path="outcome")
        finally:
            for client in self.clients:
                client.close()

    @property
    def _plain(self) -> pymongo.MongoClient:
        if not self.clients:
            self.clients.append(pymongo.MongoClient(self.uri, codec_options=CodecOptions()))
        return self.clients[0]

    def _create_entities(self, entities: list[dict[str, Any]]) -> None:
        for entity in entities:
            kind, spec = next(iter(entity.items()))
            if kind == "client":
                options = dict(spec.get("uriOptions", {}))
                client: pymongo.MongoClient = pymongo.MongoClient(self.uri, **options)
                self.clients.append(client)
                self.entities[spec["id"]] = client
            elif kind == "database":
                self.entities[spec["id"]] = self.entities[spec["client"]][spec["databaseName"]]
            elif kind == "collection":
                database = self.entities[spec["database"]]
                options = spec.get("collectionOptions", {})
                kwargs = {}
                if "writeConcern" in options:
                    kwargs["write_concern"] = pymongo.WriteConcern(**options["writeConcern"])
                self.entities[spec["id"]] = database.get_collection(spec["collectionName"], **kwargs)
            elif kind == "session":
                self.entities[spec["id"]] = self.entities[spec["client"]].start_session()
            else:
                raise Mismatch(f"the runner does not implement entity {kind}")

    def _load(self, data: list[dict[str, Any]]) -> None:
        for item in data:
            database = self._plain[item["databaseName"]]
            database.drop_collection(item["collectionName"])
            database.create_collection(item["collectionName"], **item.get("createOptions", {}))
            if item["documents"]:
                database[item["collectionName"]].insert_many(item["documents"])

    def _operation(self, operation: dict[str, Any]) -> None:
        expect_error = operation.get("expectError")
        try:
            result = self._execute(operation)
        except (PyMongoError, TypeError, ValueError) as exc:
            if expect_error is None:
                raise
            self._check_error(expect_error, exc)
            return
        if expect_error is not None:
            raise Mismatch(f"{operation['name']}: expected an error, got {result!r}")
        if "expectResult" in operation:
            match(operation["expectResult"], result, root=True, path=operation["name"])

    @staticmethod
    def _check_error(expected: dict[str, Any], exc: Exception) -> None:
        server_error = isinstance(exc, OperationFailure)
        if expected.get("isClientError") and server_error:
            raise Mismatch(f"expected a client error, got a server error {exc}")
        if expected.get("isClientError") is False and not server_error:
            raise Mismatch(f"expected a server error, got {exc!r}")
        if "errorContains" in expected and expected["errorContains"].lower() not in str(exc).lower():
            raise Mismatch(f"error {exc} does not contain {expected['errorContains']!r}")
        details = getattr(exc, "details", None) or {}
        if isinstance(exc, BulkWriteError) and details.get("writeErrors"):
            code = details["writeErrors"][0].get("code")
        else:
            code = getattr(exc, "code", None)
        if "errorCode" in expected and code != expected["errorCode"]:
            raise Mismatch(f"error code {code} is not {expected['errorCode']}")
        if "errorCodeName" in expected and details.get("codeName") != expected["errorCodeName"]:
            raise Mismatch(f"error code name {details.get('codeName')} is not {expected['errorCodeName']}")
        if "errorResponse" in expected:
            match(expected["errorResponse"], details, root=True, path="errorResponse")
        if "expectResult" in expected and isinstance(exc, BulkWriteError):
            match(expected["expectResult"], _bulk_partial(details), root=True, path="errorResult")

    def _execute(self, operation: dict[str, Any]) -> Any:
        name = operation["name"]
        args = dict(operation.get("arguments", {}))
        if "session" in args:
            args["session"] = self.entities[args["session"]]
        target = operation["object"]
        if target == "testRunner":
            return self._test_runner(name, args)
        obj = self.entities[target]
        handler = getattr(self, f"_op_{name}", None)
        if handler is None:
            raise Mismatch(f"the runner does not implement operation {name}")
        return handler(obj, args)

    def _test_runner(self, name: str, args: dict[str, Any]) -> Any:
        if name == "failPoint":
            client = self.entities[args["client"]]
            client.admin.command(args["failPoint"])
            return None
        raise Mismatch(f"the runner does not implement testRunner.{name}")

    # -- operations --------------------------------------------------------------

    @staticmethod
    def _kwargs(args: dict[str, Any], renames: dict[str, str] | None = None) -> dict[str, Any]:
        names = {"batchSize": "batch_size", "allowDiskUse": "allowDiskUse", "arrayFilters": "array_filters",
                 "bypassDocumentValidation": "bypass_document_validation", "maxTimeMS": "maxTimeMS",
                 "returnDocument": "return_document", "fieldName": "key", **(renames or {})}
        out = {}
        for key, value in args.items():
            key = names.get(key, key)
            if key == "return_document":
                value = value == "After"
            out[key] = value
        return out

    def _op_aggregate(self, obj: Any, args: dict[str, Any]) -> Any:
        pipeline = args.pop("pipeline")
        return list(obj.aggregate(pipeline, **self._kwargs(args)))

    def _op_find(self, obj: Any, args: dict[str, Any]) -> Any:
        filter_ = args.pop("filter", {})
        kwargs = self._kwargs(args, {"allowDiskUse": "allow_disk_use"})
        if "sort" in kwargs and isinstance(kwargs["sort"], dict):
            kwargs["sort"] = list(kwargs["sort"].items())
        return list(obj.find(filter_, **kwargs))

    def _op_findOne(self, obj: Any, args: dict[str, Any]) -> Any:
        filter_ = args.pop("filter", {})
        kwargs = self._kwargs(args)
        if "sort" in kwargs and isinstance(kwargs["sort"], dict):
            kwargs["sort"] = list(kwargs["sort"].items())
        return obj.find_one(filter_, **kwargs)

    def _op_countDocuments(self, obj: Any, args: dict[str, Any]) -> Any:
        return obj.count_documents(args.pop("filter"), **self._kwargs(args))

    def _op_estimatedDocumentCount(self, obj: Any, args: dict[str, Any]) -> Any:
        return obj.estimated_document_count(**self._kwargs(args))

    def _op_count(self, obj: Any, args: dict[str, Any]) -> Any:
        command = {"count": obj.name, "query": args.pop("filter", {}), **args}
        return obj.database.command(command)["n"]

    def _op_distinct(self, obj: Any, args: dict[str, Any]) -> Any:
        key = args.pop("fieldName")
        filter_ = args.pop("filter", None)
        return obj.distinct(key, filter_, **self._kwargs(args))

    def _op_insertOne(self, obj: Any, args: dict[str, Any]) -> Any:
        result = obj.insert_one(args.pop("document"), **self._kwargs(args))
        return {"insertedId": result.inserted_id}

    def _op_insertMany(self, obj: Any, args: dict[str, Any]) -> Any:
        result = obj.insert_many(args.pop("documents"), **self._kwargs(args))
        return {"insertedIds": {str(i): v for i, v in enumerate(result.inserted_ids)}}

    @staticmethod
    def _update_result(result: Any) -> dict[str, Any]:
        if not result.acknowledged:
            return {}
        return {"matchedCount": result.matched_count, "modifiedCount": result.modified_count,
                "upsertedCount": 1 if result.upserted_id is not None else 0, "upsertedId": result.upserted_id}

    def _op_updateOne(self, obj: Any, args: dict[str, Any]) -> Any:
        return self._update_result(obj.update_one(args.pop("filter"), args.pop("update"), **self._kwargs(args)))

    def _op_updateMany(self, obj: Any, args: dict[str, Any]) -> Any:
        return self._update_result(obj.update_many(args.pop("filter"), args.pop("update"), **self._kwargs(args)))

    def _op_replaceOne(self, obj: Any, args: dict[str, Any]) -> Any:
        return self._update_result(obj.replace_one(args.pop("filter"), args.pop("replacement"), **self._kwargs(args)))

    def _op_deleteOne(self, obj: Any, args: dict[str, Any]) -> Any:
        result = obj.delete_one(args.pop("filter"), **self._kwargs(args))
        return {"deletedCount": result.deleted_count} if result.acknowledged else {}

    def _op_deleteMany(self, obj: Any, args: dict[str, Any]) -> Any:
        result = obj.delete_many(args.pop("filter"), **self._kwargs(args))
        return {"deletedCount": result.deleted_count} if result.acknowledged else {}

    def _find_and(self, method: Any, args: dict[str, Any], *positional: str) -> Any:
        values = [args.pop(p) for p in positional]
        kwargs = self._kwargs(args)
        if "sort" in kwargs and isinstance(kwargs["sort"], dict):
            kwargs["sort"] = list(kwargs["sort"].items())
        return method(*values, **kwargs)

    def _op_findOneAndUpdate(self, obj: Any, args: dict[str, Any]) -> Any:
        return self._find_and(obj.find_one_and_update, args, "filter", "update")

    def _op_findOneAndReplace(self, obj: Any, args: dict[str, Any]) -> Any:
        return self._find_and(obj.find_one_and_replace, args, "filter", "replacement")

    def _op_findOneAndDelete(self, obj: Any, args: dict[str, Any]) -> Any:
        return self._find_and(obj.find_one_and_delete, args, "filter")

    def _op_bulkWrite(self, obj: Any, args: dict[str, Any]) -> Any:
        requests = [_bulk_request(r) for r in args.pop("requests")]
        result = obj.bulk_write(requests, **self._kwargs(args))
        return _bulk_result(result.bulk_api_result) if result.acknowledged else {}

    def _op_createIndex(self, obj: Any, args: dict[str, Any]) -> Any:
        keys = list(args.pop("keys").items())
        return obj.create_index(keys, **args)

    def _op_dropCollection(self, obj: Any, args: dict[str, Any]) -> Any:
        return obj.drop_collection(args.pop("collection"))

    def _op_createCollection(self, obj: Any, args: dict[str, Any]) -> Any:
        return obj.create_collection(args.pop("collection"), **args)

    def _op_modifyCollection(self, obj: Any, args: dict[str, Any]) -> Any:
        return obj.command({"collMod": args.pop("collection"), **args})


def _bulk_request(request: dict[str, Any]) -> Any:
    kind, args = next(iter(request.items()))
    args = dict(args)
    renames = {"arrayFilters": "array_filters"}
    args = {renames.get(k, k): v for k, v in args.items()}
    if kind == "insertOne":
        return InsertOne(args["document"])
    if kind == "deleteOne":
        return DeleteOne(args.pop("filter"), **args)
    if kind == "deleteMany":
        return DeleteMany(args.pop("filter"), **args)
    if kind == "replaceOne":
        return ReplaceOne(args.pop("filter"), args.pop("replacement"), **args)
    if kind == "updateOne":
        return UpdateOne(args.pop("filter"), args.pop("update"), **args)
    if kind == "updateMany":
        return UpdateMany(args.pop("filter"), args.pop("update"), **args)
    raise Mismatch(f"the runner does not implement bulk request {kind}")


def _bulk_result(raw: dict[str, Any]) -> dict[str, Any]:
    upserted = {str(u["index"]): u["_id"] for u in raw.get("upserted", [])}
    return {"deletedCount": raw.get("nRemoved", 0), "insertedCount": raw.get("nInserted", 0),
            "matchedCount": raw.get("nMatched", 0), "modifiedCount": raw.get("nModified", 0),
            "upsertedCount": raw.get("nUpserted", 0), "upsertedIds": upserted}


def _bulk_partial(details: dict[str, Any]) -> dict[str, Any]:
    return _bulk_result(details)

