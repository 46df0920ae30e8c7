"""Aggregation pipelines as streams: memory holds a chunk, not a collection.

Stages that treat each document alone run on chunks of the stream through the
engine; ``$limit``, ``$skip`` and ``$count`` count as documents pass; ``$group``
(with mergeable accumulators), ``$sort`` and ``$sortByCount`` are blocking
stages that keep to the memory limit and spill past it (``group.py``,
``spill.py``). Any other stage (``$facet``, ``$bucket``, ``$bucketAuto``,
``$sample``, ``$group`` with other accumulators...) receives its whole input at
once, counted against the same limit: past it the pipeline fails with 292, as
the store cannot spill those. Everything is lazy: a cursor's ``getMore`` pulls
the next documents through the stages, and each chunk is a checkpoint for
``killOp`` and ``maxTimeMS``.

A ``$lookup`` on ``localField``/``foreignField`` reads, for each chunk, only the
foreign documents that chunk can join (``foreignField: {$in: [its local
values]}``, which the foreign collection's index on ``foreignField`` serves), and
what it holds counts against the same limit: past it, 292 (a join is not spilled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import bson
from mongomock.helpers import get_value_by_dot

from . import keys
from .engine import Engine
from .errors import MongoError
from .group import CHUNK, group, streamable
from .operations import checkpoint
from .query import parse_sort
from .spill import PYTHON_OVERHEAD, Sorter, limits, over_limit, sort_bytes
from .wire import CODEC

PER_DOCUMENT = {"$match", "$project", "$addFields", "$set", "$replaceRoot", "$unwind", "$lookup", "$graphLookup",
                "$redact"}

Docs = Iterable[dict[str, Any]]
Find = Callable[[str, dict[str, Any]], Iterable[dict[str, Any]]]  # (collection, query) -> its documents


def _encode(doc: dict[str, Any]) -> bytes:
    return bson.encode(doc, codec_options=CODEC)


def _decode(raw: bytes) -> dict[str, Any]:
    return bson.decode(raw, CODEC)


def _count_argument(stage: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise MongoError(15957 if stage == "$limit" else 15956, f"invalid argument to {stage} stage: {value!r}")
    if value < (1 if stage == "$limit" else 0):
        raise MongoError(15958 if stage == "$limit" else 15956,
                         f"the {stage} argument must be {'positive' if stage == '$limit' else 'non-negative'}")
    return int(value)


class Pipeline:
    """Runs the stages of one aggregate over a stream of documents."""

    def __init__(self, engine: Engine, database: Any, find: Find | None = None) -> None:
        self.engine = engine  # expressions, accumulators and per-document stages
        self.database = database  # the collections $lookup and friends read, loaded whole
        self.find = find  # queries a collection of the database: what a simple $lookup reads, chunk by chunk

    def run(self, docs: Docs, stages: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        stream: Iterator[dict[str, Any]] = iter(docs)
        for stage in stages:
            stream = self._stage(stream, stage)
        return stream

    def _stage(self, stream: Iterator[dict[str, Any]], stage: dict[str, Any]) -> Iterator[dict[str, Any]]:
        op, spec = next(iter(stage.items()))
        if op == "$lookup" and self.find is not None and simple_lookup(spec):
            return self._lookup(stream, stage)
        if op in PER_DOCUMENT:
            return self._per_chunk(stream, stage)
        if op == "$limit":
            return islice(stream, _count_argument(op, spec))
        if op == "$skip":
            return islice(stream, _count_argument(op, spec), None)
        if op == "$count":
            return self._count(stream, spec)
        if op == "$group" and streamable(spec):
            return group(stream, spec, self.engine.group_chunk)
        if op == "$sortByCount":
            counted = group(stream, {"_id": spec, "count": {"$sum": 1}}, self.engine.group_chunk)
            return self._sort(counted, {"count": -1})
        if op == "$sort":
            return self._sort(stream, spec)
        return self._whole(stream, stage)

    def _per_chunk(self, stream: Iterator[dict[str, Any]], stage: dict[str, Any]) -> Iterator[dict[str, Any]]:
        while chunk := list(islice(stream, CHUNK)):
            checkpoint()
            yield from self.engine.run_stages(chunk, [stage], self.database)

    def _lookup(self, stream: Iterator[dict[str, Any]], stage: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A $lookup on localField/foreignField, one chunk at a time: the foreign
        documents the chunk's local values can match, held within the memory limit."""
        assert self.find is not None
        spec = stage["$lookup"]
        limit, _ = limits()
        while chunk := list(islice(stream, CHUNK)):
            checkpoint()
            values = _local_values(chunk, spec["localField"])
            query = {spec["foreignField"]: {"$in": values}} if values is not None else {}
            foreign: list[dict[str, Any]] = []
            used = 0
            for doc in self.find(spec["from"], query):
                foreign.append(doc)
                used += len(_encode(doc)) * PYTHON_OVERHEAD
                if used > limit:
                    raise over_limit("$lookup", limit, can_spill=False)
                if len(foreign) % CHUNK == 0:
                    checkpoint()
            database = self.engine.pipeline_database({spec["from"]: foreign})
            yield from self.engine.run_stages(chunk, [stage], database)

    @staticmethod
    def _count(stream: Iterator[dict[str, Any]], name: Any) -> Iterator[dict[str, Any]]:
        if not isinstance(name, str) or not name or name.startswith("$") or "." in name:
            raise MongoError(40156, "the count field must be a non-empty string, not starting with '$' nor "
                                    "containing '.'")
        n = 0
        for n, _ in enumerate(stream, 1):
            if n % CHUNK == 0:
                checkpoint()
        if n:
            yield {name: n}

    @staticmethod
    def _sort(stream: Iterator[dict[str, Any]], spec: Any) -> Iterator[dict[str, Any]]:
        sort = parse_sort(spec)
        if not sort:
            raise MongoError(15976, "$sort stage must have at least one sort key")
        sorter: Sorter[dict[str, Any]] = Sorter("$sort", lambda doc: sort_bytes(doc, sort),
                                                lambda doc: len(_encode(doc)) * PYTHON_OVERHEAD, _encode, _decode)
        return sorter.sort(stream)

    def _whole(self, stream: Iterator[dict[str, Any]], stage: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A stage that needs its whole input: held in memory up to the limit."""
        limit, _ = limits()
        held: list[dict[str, Any]] = []
        used = 0
        for doc in stream:
            held.append(doc)
            used += len(_encode(doc)) * PYTHON_OVERHEAD
            if used > limit:
                raise over_limit(next(iter(stage)), limit, can_spill=False)
            if len(held) % CHUNK == 0:
                checkpoint()
        yield from self.engine.run_stages(held, [stage], self.database)


def simple_lookup(spec: Any) -> bool:
    """A $lookup joining on localField/foreignField only (no pipeline, no let)."""
    return (isinstance(spec, dict) and set(spec) == {"from", "localField", "foreignField", "as"}
            and all(isinstance(spec[k], str) for k in spec) and not spec["foreignField"].startswith("$"))


def _local_values(chunk: list[dict[str, Any]], field: str) -> list[Any] | None:
    """The distinct values a chunk's documents look up (an array: each element;
    missing: null), as the engine's $lookup matches them; None when one cannot be
    put in an $in (an operator document): then the whole foreign collection."""
    found: dict[bytes, Any] = {}
    for doc in chunk:
        try:
            value = get_value_by_dot(doc, field)
        except KeyError:
            value = None
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and any(str(k).startswith("$") for k in item):
                return None
            found.setdefault(keys.encode(item), item)
    return list(found.values())
