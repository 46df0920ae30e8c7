"""Blocking stages in memory and spilled to disk give the results of the whole-input engine (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedded_mongo import keys
from embedded_mongo.engine import Engine
from embedded_mongo.errors import MongoError
from embedded_mongo.group import group
from embedded_mongo.operations import Operations
from embedded_mongo.pipeline import Pipeline
from embedded_mongo.query import sort_documents

SCALARS = st.one_of(st.none(), st.integers(-5, 5), st.floats(-3, 3, allow_nan=False), st.text("ab", max_size=3),
                    st.booleans())
VALUES = st.one_of(SCALARS, st.lists(st.integers(-3, 3), max_size=3), st.fixed_dictionaries({"x": SCALARS}))
DOCS = st.lists(st.fixed_dictionaries({"a": VALUES}, optional={"b": SCALARS}), max_size=40).map(
    lambda docs: [{"_id": i, **doc} for i, doc in enumerate(docs)])
SORTS = st.lists(st.tuples(st.sampled_from(["a", "b", "a.x"]), st.sampled_from([1, -1])), min_size=1, max_size=2,
                 unique_by=lambda item: item[0])
ENGINE = Engine()


def _limited(limit: int, allow_disk: bool = True) -> Any:
    """An operation whose blocking stages may hold ``limit`` bytes."""
    return Operations(limit).running({"aggregate": "c", "allowDiskUse": allow_disk}, "t.c", "", 0)


@settings(max_examples=60, deadline=None)
@given(DOCS, SORTS, st.sampled_from([200, 10**9]))
def test_sort_stage_matches_in_memory_sort(docs: list[dict[str, Any]], sort: list[tuple[str, int]],
                                           limit: int) -> None:
    """$sort, spilled (a tiny limit) or not, orders as the in-memory sort does, ties in input order."""
    with _limited(limit):
        got = list(Pipeline(ENGINE, None).run(iter(docs), [{"$sort": dict(sort)}]))
    assert [d["_id"] for d in got] == [d["_id"] for d in sort_documents(list(docs), sort)]


NUMBERS = st.lists(st.fixed_dictionaries({"k": st.integers(0, 3), "v": st.one_of(st.integers(-9, 9), st.none(),
                                                                                   st.text("x", max_size=1))}),
                   min_size=1, max_size=200).map(lambda docs: [{"_id": i, **doc} for i, doc in enumerate(docs)])
SPEC = {"_id": "$k", "s": {"$sum": "$v"}, "n": {"$sum": 1}, "c": {"$count": {}}, "lo": {"$min": "$v"},
        "hi": {"$max": "$v"}, "f": {"$first": "$_id"}, "l": {"$last": "$_id"}, "p": {"$push": "$_id"},
        "set": {"$addToSet": "$k"}, "avg": {"$avg": "$v"}}


def _expected(docs: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """What mongod's $group with SPEC gives, computed here."""
    out: dict[Any, dict[str, Any]] = {}
    for k in sorted({d["k"] for d in docs}):
        members = [d for d in docs if d["k"] == k]
        numbers = [d["v"] for d in members if isinstance(d["v"], int)]
        present = [d["v"] for d in members if d["v"] is not None]
        out[k] = {"_id": k, "s": sum(numbers), "n": len(members), "c": len(members),
                  "lo": min(present, key=keys.encode) if present else None,
                  "hi": max(present, key=keys.encode) if present else None,
                  "f": members[0]["_id"], "l": members[-1]["_id"], "p": [d["_id"] for d in members], "set": [k],
                  "avg": sum(numbers) / len(numbers) if numbers else None}
    return out


@settings(max_examples=60, deadline=None)
@given(NUMBERS, st.sampled_from([300, 10**9]), st.sampled_from(["$k", {"$add": ["$k", 0]}]))
def test_streamed_group_matches_mongod(docs: list[dict[str, Any]], limit: int, group_id: Any) -> None:
    """$group by chunks (field paths here, other expressions by the engine), merged in memory or through a spill,
    gives mongod's sums, extremes (across types), averages."""
    with _limited(limit):
        streamed = list(group(iter(docs), {**SPEC, "_id": group_id}, ENGINE.group_chunk))
    assert streamed == list(_expected(docs).values())


def test_group_without_disk_past_the_limit_is_292() -> None:
    """A $group whose state passes the limit with allowDiskUse false raises 292."""
    docs = [{"_id": i, "k": i} for i in range(2000)]
    with _limited(1000, allow_disk=False), pytest.raises(MongoError) as caught:
        list(group(iter(docs), {"_id": "$k", "n": {"$sum": 1}}, ENGINE.group_chunk))
    assert caught.value.code == 292
