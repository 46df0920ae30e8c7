"""``$group`` over a stream of documents, within the memory limit.

The documents arrive a chunk at a time; the engine groups each chunk (its
expressions and accumulators are mongomock's), and the chunk's partial results
merge into one state per group. Past the memory limit the states go to a spill
(``spill.py``) and merge again, in key order, at the end. Only accumulators
whose partial results merge are streamed (``MERGEABLE``); a ``$group`` using any
other runs on the whole input at once, and answers 292 past the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import bson

from . import keys
from .operations import checkpoint
from .spill import PYTHON_OVERHEAD, Spill, limits, over_limit
from .wire import CODEC

MERGEABLE = {"$sum", "$avg", "$min", "$max", "$first", "$last", "$push", "$addToSet", "$count", "$mergeObjects"}
CHUNK = 64  # documents grouped at a time: a checkpoint every millisecond or so
_GROUP_OVERHEAD = 200  # bytes one group's entry costs besides its values

GroupChunk = Callable[[list[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]]


def streamable(spec: Any) -> bool:
    """Whether a ``$group`` spec uses only accumulators whose partials merge."""
    if not isinstance(spec, dict) or "_id" not in spec:
        return False
    return all(isinstance(acc, dict) and len(acc) == 1 and next(iter(acc)) in MERGEABLE
               for name, acc in spec.items() if name != "_id")


def _size(value: Any) -> int:
    try:
        return len(bson.encode({"v": value}, codec_options=CODEC))
    except Exception:  # a value BSON cannot hold is rare here: a guess will do
        return 256


def _numbers(values: list[Any]) -> list[Any]:
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _partial(op: str, value: Any) -> Any:
    """A chunk's result for one accumulator, as a mergeable partial."""
    if op == "$avg":  # the chunk pushed the values: keep their sum and count
        numbers = _numbers(value if isinstance(value, list) else [])
        return [sum(numbers), len(numbers)]
    if op in ("$min", "$max"):  # the chunk pushed the values: compare them in BSON order, nulls aside
        present = [v for v in (value if isinstance(value, list) else []) if v is not None]
        if not present:
            return None
        return (min if op == "$min" else max)(present, key=keys.encode)
    if op == "$addToSet":  # the chunk pushed the values: distinct by BSON value (mongomock drops falsy ones)
        return _merge(op, [], value if isinstance(value, list) else [])
    return value


def _merge(op: str, a: Any, b: Any) -> Any:
    """The partial of an earlier part ``a`` and a later part ``b``."""
    if op in ("$sum", "$count"):
        return (a or 0) + (b or 0)
    if op == "$avg":
        return [a[0] + b[0], a[1] + b[1]]
    if op in ("$min", "$max"):
        if a is None or b is None:
            return b if a is None else a
        smaller = keys.encode(a) <= keys.encode(b)
        return a if smaller == (op == "$min") else b
    if op == "$first":
        return a
    if op == "$last":
        return b
    if op == "$push":
        return list(a) + list(b)
    if op == "$addToSet":
        seen = {keys.encode(v) for v in a}
        merged = list(a)
        for value in b:
            key = keys.encode(value)
            if key not in seen:
                seen.add(key)
                merged.append(value)
        return merged
    return {**(a or {}), **(b or {})}  # $mergeObjects


def _final(op: str, value: Any) -> Any:
    if op == "$avg":
        return value[0] / value[1] if value[1] else None
    return value


_MISSING = object()
_LIST = object()  # a path crossed an array: the engine evaluates the chunk


def _path(expression: Any) -> list[str] | None:
    """The dotted path of a ``"$field.path"`` expression, else None."""
    if isinstance(expression, str) and expression.startswith("$") and not expression.startswith("$$"):
        return expression[1:].split(".")
    return None


def _simple(expression: Any) -> bool:
    if isinstance(expression, dict):
        return all(not str(k).startswith("$") and _simple(v) for k, v in expression.items())
    if isinstance(expression, str):
        return not expression.startswith("$$")
    return expression is None or (isinstance(expression, (int, float)) and not isinstance(expression, bool))


def _value(doc: dict[str, Any], expression: Any) -> Any:
    """A field path or a constant (or a document of them) over ``doc``."""
    if isinstance(expression, dict):
        out = {}
        for name, sub in expression.items():
            value = _value(doc, sub)
            if value is _LIST:
                return _LIST
            if value is not _MISSING:
                out[name] = value
        return out
    path = _path(expression)
    if path is None:
        return expression
    found: Any = doc
    for part in path:
        if isinstance(found, list):
            return _LIST
        if not isinstance(found, dict) or part not in found:
            return _MISSING
        found = found[part]
    return _LIST if isinstance(found, list) and len(path) > 1 else found


def _fast_chunk(chunk: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A chunk's ``$group`` (a rewritten spec of field paths and constants)
    evaluated here, ten times faster than the engine; None when a path crosses
    an array (the engine then takes the chunk)."""
    results: dict[bytes, dict[str, Any]] = {}
    fields = [(name, *next(iter(acc.items()))) for name, acc in spec.items() if name != "_id"]
    for doc in chunk:
        group_id = _value(doc, spec["_id"])
        if group_id is _LIST:
            return None
        group_id = None if group_id is _MISSING else group_id
        key = keys.encode(group_id)
        result = results.get(key)
        if result is None:
            result = results[key] = {"_id": group_id}
            for name, op, _ in fields:
                result[name] = [] if op == "$push" else 0 if op == "$sum" else _MISSING
        for name, op, argument in fields:
            value = _value(doc, argument)
            if value is _LIST:
                return None
            if op == "$push":
                if value is not _MISSING:
                    result[name].append(value)
            elif op == "$sum":
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    result[name] += value
            elif op == "$last" or result[name] is _MISSING:  # $first keeps the first
                result[name] = None if value is _MISSING else value
    return list(results.values())


def group(docs: Iterable[dict[str, Any]], spec: dict[str, Any], group_chunk: GroupChunk) -> Iterator[dict[str, Any]]:
    """The ``$group`` stage's results (a streamable spec), in ``_id`` order."""
    fields = {name: next(iter(acc.items())) for name, acc in spec.items() if name != "_id"}
    chunk_spec: dict[str, Any] = {"_id": spec["_id"]}
    for name, (op, arg) in fields.items():
        # mongomock's $min and $max fail across types, its $addToSet turns 0 and "" into null: done here
        pushed = op in ("$avg", "$min", "$max", "$addToSet")
        chunk_spec[name] = {"$push": arg} if pushed else {"$sum": 1} if op == "$count" else {op: arg}
    fast = _simple(spec["_id"]) and all(
        next(iter(acc)) in ("$push", "$sum", "$first", "$last") and _simple(next(iter(acc.values())))
        for name, acc in chunk_spec.items() if name != "_id")
    growing = [name for name, (op, _) in fields.items() if op in ("$push", "$addToSet", "$mergeObjects")]
    limit, allow_disk = limits()
    states: dict[bytes, dict[str, Any]] = {}
    used = 0
    spill: Spill | None = None
    flushes = 0
    source = iter(docs)
    try:
        while chunk := list(islice(source, CHUNK)):
            checkpoint()
            results = _fast_chunk(chunk, chunk_spec) if fast else None
            for result in group_chunk(chunk, chunk_spec) if results is None else results:
                key = keys.encode(result.get("_id"))
                partial = {name: _partial(op, result.get(name)) for name, (op, _) in fields.items()}
                state = states.get(key)
                if state is None:
                    states[key] = {"_id": result.get("_id"), **partial}
                    used += (_GROUP_OVERHEAD + len(key) + _size(partial)) * PYTHON_OVERHEAD
                    continue
                for name, (op, _) in fields.items():
                    state[name] = _merge(op, state[name], partial[name])
                used += sum(_size(partial[name]) for name in growing) * PYTHON_OVERHEAD
            if used > limit:
                if not allow_disk:
                    raise over_limit("$group", limit)
                spill = spill or Spill("$group")
                spill.write((key, flushes, bson.encode(state, codec_options=CODEC)) for key, state in states.items())
                flushes += 1
                states, used = {}, 0
        if spill is None:
            for key in sorted(states):
                yield _finished(states[key], fields)
            return
        spill.write((key, flushes, bson.encode(state, codec_options=CODEC)) for key, state in states.items())
        states = {}
        yield from _merged(spill.read(), fields)
    finally:
        if spill is not None:
            spill.close()


def _merged(rows: Iterator[tuple[bytes, bytes]], fields: dict[str, tuple[str, Any]]) -> Iterator[dict[str, Any]]:
    """Merges the spilled partials of each key (rows in key order)."""
    current_key: bytes | None = None
    state: dict[str, Any] = {}
    for key, payload in rows:
        part = bson.decode(payload, CODEC)
        if key != current_key:
            if current_key is not None:
                yield _finished(state, fields)
            current_key, state = key, part
            continue
        for name, (op, _) in fields.items():
            state[name] = _merge(op, state[name], part[name])
    if current_key is not None:
        yield _finished(state, fields)


def _finished(state: dict[str, Any], fields: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    return {"_id": state["_id"], **{name: _final(op, state[name]) for name, (op, _) in fields.items()}}
