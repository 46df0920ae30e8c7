"""Records: JSON objects of a kind, checked against the kind's JSON Schema.

Schemas (``SCHEMAS_DIR/<kind>.json``) are compiled once at start-up; an invalid
one stops start-up, naming the file. A batch is stored whole or not at all. An
``Idempotency-Key`` is decided by the unique ``(owner, kind, idempotency_key)``
index, not by a read before the write: the first record of a request carries the
key, the others ``<key>#<index>``; a retry finds them and gets the first answer,
and the same key with a different body is ``conflict``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

from bson import ObjectId
from jsonschema import FormatChecker
from jsonschema.exceptions import SchemaError
from pymongo.errors import BulkWriteError, DuplicateKeyError

from server.errors import ApiError
from server.storage import Storage, iso, utcnow
from server.validation import Validator, pointer

KIND = re.compile(r"[a-z0-9_-]{1,64}")  # whole (fullmatch)
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # whole (fullmatch)
MAX_BATCH = 500
PAGE_LIMIT = 100


class SchemaFileError(Exception):
    """A schema file that cannot serve: the message names the file."""


def idempotency_key(value: str | None) -> str | None:
    """An ``Idempotency-Key`` header's key (None without one); invalid_request
    unless it is 1 to 64 of A-Z a-z 0-9 _ . : - (records and files alike)."""
    if value is not None and not IDEMPOTENCY_KEY.fullmatch(value):
        raise ApiError("invalid_request", "Idempotency-Key takes 1 to 64 of A-Z a-z 0-9 _ . : -")
    return value


def load_schemas(directory: str) -> dict[str, Any]:
    """Every ``<kind>.json`` of ``directory``, compiled (``$`` in a pattern
    ends the text, as JSON Schema means it)."""
    validators: dict[str, Any] = {}
    if not os.path.isdir(directory):
        return validators
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        kind, path = name[:-5], os.path.join(directory, name)
        if not KIND.fullmatch(kind):
            raise SchemaFileError(f"{path}: a kind is named with a-z, 0-9, _ and - (at most 64)")
        try:
            with open(path, encoding="utf-8") as handle:
                schema = json.load(handle)
            Validator.check_schema(schema)
        except (OSError, ValueError) as exc:
            raise SchemaFileError(f"{path}: not a readable JSON file ({exc})") from None
        except SchemaError as exc:
            raise SchemaFileError(f"{path}: not a valid JSON Schema ({exc.message})") from None
        validators[kind] = Validator(schema, format_checker=FormatChecker())
    return validators


def is_batch(body: Any) -> bool:
    """Whether a request body is a batch: ``{"items": [...]}`` and nothing else."""
    return isinstance(body, dict) and len(body) == 1 and isinstance(body.get("items"), list)


def envelope(body: Any) -> int:
    """The levels around a record in a request body: a batch's object and
    array, or none (the body is the record)."""
    return 2 if is_batch(body) else 0


def public(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(doc["_id"]), "kind": doc["kind"], "data": doc["data"], "created_at": iso(doc["created_at"])}


class Records:
    """The ``records`` collection."""

    def __init__(self, storage: Storage, validators: dict[str, Any]) -> None:
        self._records = storage["records"]  # {_id, kind, owner, data, idempotency_key, created_at}
        self.validators = validators  # kind -> compiled schema

    def _validator(self, kind: str) -> Any:
        validator = self.validators.get(kind) if KIND.fullmatch(kind) else None
        if validator is None:
            raise ApiError("not_found", f"no such kind of record: {kind}")
        return validator

    def check(self, kind: str, body: Any) -> tuple[list[dict[str, Any]], bool]:
        """The items of a request (one object, or {"items": [...]}) and whether it
        was a batch; every failing path of every item, or nothing is stored.
        ``body`` is within the value rules already (``envelope`` told how deep)."""
        validator = self._validator(kind)
        if not isinstance(body, dict):
            raise ApiError("validation_failed", "a record is a JSON object",
                           [{"path": "/", "message": "must be an object"}])
        batch = is_batch(body)
        items = body["items"] if batch else [body]
        if batch and not 1 <= len(items) <= MAX_BATCH:
            raise ApiError("validation_failed", f"a batch holds 1 to {MAX_BATCH} items",
                           [{"path": "/items", "message": f"must hold 1 to {MAX_BATCH} items"}])
        details = []
        for index, item in enumerate(items):
            prefix = ["items", index] if batch else []
            for error in validator.iter_errors(item):
                details.append({"path": pointer(prefix + list(error.absolute_path)), "message": error.message})
        if details:
            raise ApiError("validation_failed", f"{len(details)} problem(s) in the {'batch' if batch else 'record'}",
                           details)
        return items, batch

    @staticmethod
    def _answer(docs: list[dict[str, Any]], batch: bool) -> dict[str, Any]:
        return {"items": [public(d) for d in docs]} if batch else public(docs[0])

    async def store(self, owner: str, kind: str, items: list[dict[str, Any]], batch: bool,
                    key: str | None) -> dict[str, Any]:
        idempotency_key(key)
        now = utcnow()
        docs = []
        for index, item in enumerate(items):
            doc: dict[str, Any] = {"_id": ObjectId(), "kind": kind, "owner": owner, "data": item, "created_at": now}
            if key is not None:
                doc["idempotency_key"] = key if index == 0 else f"{key}#{index}"
            docs.append(doc)
        try:
            await self._records.insert_many(docs, ordered=True)
        except (BulkWriteError, DuplicateKeyError) as exc:
            inserted = exc.details.get("nInserted", 0) if isinstance(exc, BulkWriteError) and exc.details else 0
            if inserted:  # a later item of this batch collided: undo the earlier ones, all or nothing
                await self._records.delete_many({"_id": {"$in": [d["_id"] for d in docs[:inserted]]}})
            if key is None:
                raise
            return await self._replay(owner, kind, items, batch, key)
        return self._answer(docs, batch)

    async def _replay(self, owner: str, kind: str, items: list[dict[str, Any]], batch: bool,
                      key: str) -> dict[str, Any]:
        """The first answer to ``key``: the same items again get it; other items
        are a conflict. Waits (briefly) while the request that won is still
        storing its batch."""
        pattern = {"$regex": f"^{re.escape(key)}(#[0-9]+)?$"}
        for _ in range(50):
            found = await self._records.find({"owner": owner, "kind": kind, "idempotency_key": pattern}
                                             ).to_list(MAX_BATCH + 1)
            by_key = {d["idempotency_key"]: d for d in found}
            first = by_key.get(key)
            if (first is not None and first["data"] != items[0]) or len(found) > len(items):
                break
            keys = [key if i == 0 else f"{key}#{i}" for i in range(len(items))]
            if len(found) == len(items) and all(k in by_key for k in keys):
                if [by_key[k]["data"] for k in keys] != items:
                    break
                return self._answer([by_key[k] for k in keys], batch)
            await asyncio.sleep(0.02)
        raise ApiError("conflict", "this Idempotency-Key was used with a different body")

    async def page(self, owner: str, kind: str, before: str | None, limit: int) -> dict[str, Any]:
        """The caller's records, newest first; ``next`` continues after the last one."""
        self._validator(kind)
        query: dict[str, Any] = {"owner": owner, "kind": kind}
        if before is not None:
            if not ObjectId.is_valid(before) or len(before) != 24:
                raise ApiError("invalid_request", "before must be a record id")
            query["_id"] = {"$lt": ObjectId(before)}
        docs = await self._records.find(query, sort=[("_id", -1)], limit=limit + 1).to_list(limit + 1)
        more = len(docs) > limit
        docs = docs[:limit]
        return {"items": [public(d) for d in docs], "next": str(docs[-1]["_id"]) if more else None}
