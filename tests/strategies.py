"""Hypothesis strategies for hostile JSON, and an oracle of what MongoDB and
``JSON.parse`` can take, written apart from ``server.values``."""

from __future__ import annotations

import json
import math
from typing import Any

import bson
from bson.errors import InvalidDocument
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from server.values import MAX_DEPTH

# Deterministic and bounded: the same examples every run, no example database.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

WILD_TEXT = st.text(st.characters(exclude_categories=()), max_size=10)  # lone surrogates and NUL included
KEYS = st.one_of(WILD_TEXT, st.sampled_from(["$set", "$", "a.b", "", "\x00", "_id", "a\x00b", "\ud800", "é"]))
NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**53, 2**53 + 1]),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WILD_TEXT)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=16)


def nest(value: Any, levels: int, in_list: bool) -> Any:
    for _ in range(levels):
        value = [value] if in_list else {"a": value}
    return value


DEEP = st.builds(nest, VALUES, st.integers(MAX_DEPTH - 4, MAX_DEPTH + 4), st.booleans())
ANY_VALUE = st.one_of(VALUES, DEEP)
OBJECTS = st.one_of(st.dictionaries(KEYS, VALUES, max_size=5), st.builds(nest, VALUES, st.integers(28, 36),
                                                                          st.just(False)))


def depth(value: Any) -> int:
    """Levels of objects and arrays (a scalar: 0)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def _operator_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any(k.startswith("$") or _operator_key(v) for k, v in value.items())
    return isinstance(value, list) and any(_operator_key(v) for v in value)


def storable(value: Any, levels: int = MAX_DEPTH) -> bool:
    """Whether strict JSON (UTF-8, no NaN) and BSON hold ``value``, it nests at
    most ``levels``, and it has no operator key: the oracle of the value rules."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        bson.encode({"v": value})
    except (ValueError, UnicodeEncodeError, OverflowError, InvalidDocument):
        return False
    return depth(value) <= levels and not _operator_key(value)


def strict_json(text: str | bytes) -> Any:
    """JSON as JSON.parse reads it: NaN and Infinity refused."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _kind(value: Any) -> type:
    """The JSON type of a value (BSON's Int64 is an int)."""
    for kind in (bool, int, float, str, dict, list):
        if isinstance(value, kind):
            return kind
    return type(value)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON types all the way down (1 is not 1.0, 0.0 is not -0.0)."""
    if _kind(a) is not _kind(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def resolve(value: Any, path: str) -> bool:
    """Whether a JSON Pointer leads somewhere in ``value`` (keys shown as U+FFFD, or a
    shortened path, cannot be followed: True)."""
    if "\ufffd" in path or path.endswith("…"):
        return True
    if path == "/":
        return True
    node = value
    for token in path[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True

# Values the rules accept, extremes included: for what the store must keep.
CLEAN_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
CLEAN_KEYS = CLEAN_TEXT.filter(lambda k: not k.startswith("$") and "\x00" not in k) | st.sampled_from(
    ["a.b", "", "_id", "é", "a$", " ", "\U0001f600"])
CLEAN_SCALARS = st.one_of(
    st.none(), st.booleans(), CLEAN_TEXT, st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 2**53 + 1, 0]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308]))
CLEAN_OBJECTS = st.dictionaries(CLEAN_KEYS, st.recursive(
    CLEAN_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(CLEAN_KEYS, inner, max_size=4),
    max_leaves=16), max_size=5)
