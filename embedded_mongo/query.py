"""Query planning and execution: which index to read, in which order.

The planner reads the top level of a filter (and of ``$and``) for equality,
``$in`` and range predicates, and picks the index whose leading fields they fix;
a sort is served by the index when its fields follow the fixed ones in one
direction. The index only narrows the candidates: every document read is checked
against the whole filter, so a plan can be imprecise but never wrong.
"""

from __future__ import annotations

import datetime
import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bson import Decimal128, ObjectId

from . import keys
from .engine import compile_filter
from .errors import MongoError
from .operations import checkpoint
from .spill import Sorter, sort_bytes
from .storage import Collection, Index, Store, decode

SortSpec = list[tuple[str, Any]]
_RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
_MAX_POINTS = 1000
_TOP_K = 10_000  # a sort with a limit up to this keeps only the first ones, on a heap


@dataclass
class Plan:
    """How to read candidates: an index and its key ranges, or the whole table."""

    index: Index | None = None  # None: a collection scan
    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)  # [low, high) key ranges
    reverse: bool = False  # read the ranges (or the table) backwards
    sort_served: bool = False  # the order read is the order asked for
    exact: bool = False  # the key ranges select exactly what the filter matches

    def describe(self) -> dict[str, Any]:
        if self.index is None:
            return {"stage": "COLLSCAN", "direction": "backward" if self.reverse else "forward"}
        return {
            "stage": "IXSCAN",
            "exact": self.exact,
            "indexName": self.index.name,
            "keyPattern": self.index.spec["key"],
            "direction": "backward" if self.reverse else "forward",
            "sortServed": self.sort_served,
        }


def _usable_point(value: Any) -> bool:
    return not (value is None or isinstance(value, (list, re.Pattern)) or keys.type_byte(value) == keys.REGEX)


def _ranged(value: Any) -> bool:
    if isinstance(value, float) and value != value:
        return False  # NaN
    return isinstance(value, (int, float, Decimal128, str, datetime.datetime, ObjectId)) and not isinstance(value, bool)


def _exact_value(value: Any) -> bool:
    """Whether the key of ``value`` compares exactly as MongoDB does: Decimal128
    keys are approximations."""
    if isinstance(value, Decimal128):
        return False
    if isinstance(value, dict):
        return all(_exact_value(v) for v in value.values())
    if isinstance(value, list):
        return all(_exact_value(v) for v in value)
    return True


def _exact_filter(query: dict[str, Any]) -> bool:
    """Whether ``predicates`` captured every condition of the filter."""
    for name, value in query.items():
        if name.startswith("$"):
            return False
        if isinstance(value, dict) and value and all(str(k).startswith("$") for k in value):
            if any(op not in ("$eq", "$in", *_RANGE_OPS) for op in value):
                return False
            if sum(op in ("$gt", "$gte") for op in value) > 1 or sum(op in ("$lt", "$lte") for op in value) > 1:
                return False
            if "$in" in value and ("$eq" in value or len(value) > 1):
                return False
        elif not _usable_point(value) or not _exact_value(value):
            return False
    return True


def predicates(query: dict[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    """Top-level (and ``$and``) predicates by field: ``(op, value)`` pairs."""
    found: dict[str, list[tuple[str, Any]]] = {}
    for name, value in query.items():
        if name == "$and" and isinstance(value, list):
            for sub in value:
                if isinstance(sub, dict):
                    for sub_name, ops in predicates(sub).items():
                        found.setdefault(sub_name, []).extend(ops)
        elif name.startswith("$"):
            continue
        elif isinstance(value, dict) and value and all(str(k).startswith("$") for k in value):
            for op, arg in value.items():
                if op == "$eq" and _usable_point(arg):
                    found.setdefault(name, []).append(("$eq", arg))
                elif op == "$in" and isinstance(arg, list) and arg and all(_usable_point(a) for a in arg):
                    found.setdefault(name, []).append(("$in", arg))
                elif op in _RANGE_OPS and _ranged(arg):
                    found.setdefault(name, []).append((op, arg))
        elif _usable_point(value):
            found.setdefault(name, []).append(("$eq", value))
    return found


def _index_plan(index: Index, preds: dict[str, list[tuple[str, Any]]], sort: SortSpec,
                exact_filter: bool = False) -> tuple[tuple[int, ...], Plan]:
    names = list(index.spec["key"])
    prefixes = [b""]
    fixed = 0
    bounded = False
    used: set[str] = set()
    low_part, high_part = b"", keys.AFTER
    for name in names:
        ops = preds.get(name, [])
        points = [arg for op, arg in ops if op == "$eq"]
        if points:
            if len(ops) > 1:
                exact_filter = False
            prefixes = [p + keys.encode(points[0]) for p in prefixes]
            fixed += 1
            used.add(name)
            continue
        sets = [arg for op, arg in ops if op == "$in"]
        if sets and len(prefixes) * len(sets[0]) <= _MAX_POINTS:
            encoded = sorted({keys.encode(v) for v in sets[0]})
            prefixes = [p + e for p in prefixes for e in encoded]
            fixed += 1
            used.add(name)
            continue
        lows = [(op, arg) for op, arg in ops if op in ("$gt", "$gte")]
        highs = [(op, arg) for op, arg in ops if op in ("$lt", "$lte")]
        if lows or highs:
            bounded = True
            used.add(name)
            brackets = {keys.type_byte(arg) for _, arg in lows + highs}
            if len(brackets) > 1:
                exact_filter = False
            bracket_low, bracket_high = keys.bracket_bounds((lows or highs)[0][1])
            if bracket_low == bytes([keys.NUMBER]):
                bracket_low = keys.encode(float("-inf"))  # NaN is in no range
            low_part, high_part = bracket_low, bracket_high
            if lows:
                op, arg = lows[0]
                low_part = keys.encode(arg) + (keys.AFTER if op == "$gt" else b"")
            if highs:
                op, arg = highs[0]
                high_part = keys.encode(arg) + (keys.AFTER if op == "$lte" else b"")
        break
    ranges = [(p + low_part, p + high_part) for p in prefixes]
    rest = names[fixed:]
    directions = {1 if d in (1, 1.0) else -1 for _, d in sort}
    served = (
        bool(sort)
        and not index.multikey
        and len(prefixes) == 1
        and len(directions) == 1
        and [n for n, _ in sort] == rest[: len(sort)]
    )
    exact = exact_filter and not index.multikey and used == set(preds)
    plan = Plan(index=index, ranges=ranges, reverse=served and directions == {-1}, sort_served=served, exact=exact)
    unique_hit = int(index.unique and fixed == len(names))
    return (unique_hit, int(fixed > 0 or bounded), fixed, int(served), int(bounded)), plan


def choose(coll: Collection, query: dict[str, Any], sort: SortSpec, hint: Any = None) -> Plan:
    """The plan for a filter and a sort (and an optional hint)."""
    if sort and sort[0][0] == "$natural":
        return Plan(reverse=sort[0][1] in (-1, -1.0), sort_served=True)
    if keys.collating():
        return Plan()  # index keys compare strings by their bytes: read the table
    preds = predicates(query)
    exact = _exact_filter(query)
    if hint not in (None, "", {}):
        if isinstance(hint, dict) and "$natural" in hint:
            return Plan(reverse=hint["$natural"] in (-1, -1.0))
        index = find_index(coll, hint)
        if index is None:
            raise MongoError(2, "error processing query: planner returned error :: caused by :: "
                                "hint provided does not correspond to an existing index")
        return _index_plan(index, preds, sort, exact)[1]
    best: tuple[tuple[int, ...], Plan] | None = None
    for index in list(coll.indexes.values()):  # a snapshot: the writer may add one meanwhile
        if not index.usable:
            continue  # being built by the writer: its table is not committed
        if (index.sparse or index.partial is not None) and not _holds_every_match(index, preds):
            continue  # holds only some documents, maybe not every match
        score, plan = _index_plan(index, preds, sort, exact)
        if (score[1] or score[3]) and (best is None or score > best[0]):
            best = (score, plan)
    return best[1] if best else Plan()


def _holds_every_match(index: Index, preds: dict[str, list[tuple[str, Any]]]) -> bool:
    """Whether a sparse or partial index holds every document the query can
    match: the query pins (by equality or ``$in``, to values other than null) a
    field the index requires to exist. Partial filters other than ``$exists:
    true`` are not reasoned about."""
    def pinned(name: str) -> bool:
        return any((op == "$eq" and arg is not None) or (op == "$in" and None not in arg)
                   for op, arg in preds.get(name, []))

    if index.partial is not None:
        expression = index.spec.get("partialFilterExpression") or {}
        if not expression or not all(cond in ({"$exists": True}, {"$exists": 1}) and pinned(name)
                                     for name, cond in expression.items()):
            return False
    if index.sparse:
        return any(pinned(name) for name in index.spec["key"])
    return True


def find_index(coll: Collection, hint: Any) -> Index | None:
    """The index a hint names, by name or by key pattern."""
    if isinstance(hint, str):
        named = coll.indexes.get(hint)
        return named if named is not None and named.usable else None
    if isinstance(hint, dict):
        for index in list(coll.indexes.values()):
            if index.usable and list(index.spec["key"].items()) == list(hint.items()):
                return index
    return None


def candidates(store: Store, coll: Collection, plan: Plan) -> Iterator[tuple[int, bytes]]:
    """The rows a plan reads; every one is a checkpoint for killOp and maxTimeMS."""
    for position, row in enumerate(_rows(store, coll, plan)):
        if position % 64 == 0:
            checkpoint()
        yield row


def _rows(store: Store, coll: Collection, plan: Plan) -> Iterator[tuple[int, bytes]]:
    if plan.index is None:
        yield from store.scan(coll, reverse=plan.reverse)
        return
    ranges = list(reversed(plan.ranges)) if plan.reverse else plan.ranges
    seen: set[int] | None = set() if len(ranges) > 1 else None
    for low, high in ranges:
        for rid, raw in store.index_scan(coll, plan.index, low, high, reverse=plan.reverse):
            if seen is not None:
                if rid in seen:
                    continue
                seen.add(rid)
            yield rid, raw


def sort_documents(items: list[Any], sort: SortSpec, doc_of: Any = lambda item: item) -> list[Any]:
    """Sorts in MongoDB's order, by successive stable passes from the last key."""
    for name, direction in reversed(sort):
        if isinstance(direction, dict):  # {$meta: ...}: no text search here
            continue
        ascending = direction in (1, 1.0)
        path = name.split(".")
        items.sort(key=lambda item: keys.sort_key(doc_of(item), path, ascending), reverse=not ascending)
    return items


class Match:
    """A document found: its rid, its stored bytes and, decoded when first asked
    for, its fields."""

    __slots__ = ("_doc", "raw", "rid")

    def __init__(self, rid: int, raw: bytes, doc: dict[str, Any] | None = None) -> None:
        self.rid = rid  # the row id in the collection table
        self.raw = raw  # the stored BSON
        self._doc = doc  # the decoded document, once decoded

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            self._doc = decode(self.raw)
        return self._doc


def execute(store: Store, coll: Collection | None, query: dict[str, Any] | None, sort: SortSpec | None = None,
            skip: int = 0, limit: int = 0, hint: Any = None) -> Iterator[Match]:
    """The documents that match, in order, after skip and limit (0: none)."""
    if coll is None:
        return
    query = query or {}
    sort = sort or []
    matches = compile_filter(query)
    plan = choose(coll, query, sort, hint)
    found: Iterator[Match]
    if plan.exact:
        found = (Match(rid, raw) for rid, raw in candidates(store, coll, plan))
    else:
        found = (
            Match(rid, raw, doc)
            for rid, raw in candidates(store, coll, plan)
            for doc in (decode(raw),)
            if matches(doc)
        )
    if sort and not plan.sort_served:
        found = _sorted(found, sort, skip + limit if limit else 0)
    emitted = 0
    for position, match in enumerate(found):
        if position < skip:
            continue
        yield match
        emitted += 1
        if limit and emitted >= limit:
            return


def _sorted(found: Iterator[Match], sort: SortSpec, keep: int) -> Iterator[Match]:
    """Matches in ``sort`` order, without an index: the ``keep`` first ones
    (0: all) on a heap when few are wanted, else within the memory limit and
    spilled past it (``spill.py``). Only the stored bytes are held."""
    def key(match: Match) -> bytes:
        return sort_bytes(match.doc, sort)

    def stripped(matches: Iterator[Match]) -> Iterator[tuple[bytes, Match]]:
        for position, match in enumerate(matches):
            if position % 256 == 0:
                checkpoint()
            yield key(match), Match(match.rid, match.raw)

    if 0 < keep <= _TOP_K:
        return (m for _, m in heapq.nsmallest(keep, stripped(found), key=lambda entry: entry[0]))
    sorter: Sorter[tuple[bytes, Match]] = Sorter(
        "$sort", lambda entry: entry[0], lambda entry: len(entry[1].raw),
        lambda entry: entry[1].rid.to_bytes(8, "big") + entry[1].raw,
        lambda payload: (b"", Match(int.from_bytes(payload[:8], "big"), payload[8:])))
    return (m for _, m in sorter.sort(stripped(found)))


def parse_sort(sort: Any) -> SortSpec:
    if sort in (None, {}):
        return []
    if not isinstance(sort, dict):
        raise MongoError(2, "sort must be an object")
    spec: SortSpec = []
    for name, direction in sort.items():
        if isinstance(direction, dict) and "$meta" in direction:
            spec.append((name, direction))
        elif direction in (1, -1, 1.0, -1.0):
            spec.append((name, int(direction)))
        else:
            raise MongoError(15975, "$sort key ordering must be 1 (for ascending) or -1 (for descending)")
    return spec
