"""Order-preserving binary keys for BSON values.

``encode(value)`` maps a value to bytes whose byte order is MongoDB's comparison
order (type brackets first: MinKey < null < numbers < strings < objects < arrays <
binData < ObjectId < bool < date < timestamp < regex < MaxKey, then the value).
Every encoding is self-delimiting, so concatenating the encodings of a compound
key keeps tuple order. SQLite compares BLOBs with memcmp, so an index table keyed
by these bytes answers equality, ranges and sorts in MongoDB's order.

Strings compare by their UTF-8 bytes (MongoDB's simple collation). Numbers of
different BSON types compare by value (1 == 1.0 == Int64(1)); Decimal128 values
are compared through the nearest double.
"""

from __future__ import annotations

import datetime
import math
import struct
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from bson import Binary, Code, DBRef, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS

from .errors import MongoError

MINKEY = 0x0A
NULL = 0x14
NUMBER = 0x1E
STRING = 0x28
OBJECT = 0x32
ARRAY = 0x3C
BINARY = 0x46
OBJECTID = 0x50
BOOL = 0x5A
DATE = 0x64
TIMESTAMP = 0x6E
REGEX = 0x78
CODE = 0x8C
MAXKEY = 0xF0
END = b"\x00"
# Greater than any encoding's first byte: ``prefix + AFTER`` bounds every key
# that starts with ``prefix``.
AFTER = b"\xff"

_DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_EPOCH = datetime.datetime(1970, 1, 1)
_BIAS = 1 << 63


# The collation strength in effect: 3 (and up) compares strings by their bytes;
# 2 ignores case; 1 ignores case and accents. Locale-specific ICU ordering is
# not implemented.
_STRENGTH: ContextVar[int] = ContextVar("collation_strength", default=3)


@contextmanager
def collation(spec: Any) -> Iterator[None]:
    """Compares strings under a command's ``collation`` while inside."""
    strength = 3
    if isinstance(spec, dict) and spec.get("locale") not in (None, "simple"):
        strength = int(spec.get("strength", 3))
    token = _STRENGTH.set(strength)
    try:
        yield
    finally:
        _STRENGTH.reset(token)


def collating() -> bool:
    """Whether strings compare other than by their bytes just now."""
    return _STRENGTH.get() < 3


def _fold(text: str) -> str:
    strength = _STRENGTH.get()
    if strength >= 3:
        return text
    text = text.casefold()
    if strength == 1:
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text


class Missing:
    """The value of a path that a document does not have."""


MISSING = Missing()


def _sortable_double(value: float) -> bytes:
    if math.isnan(value):
        return b"\x00" * 8  # MongoDB sorts NaN below every other number
    if value == 0.0:
        value = 0.0  # -0.0 == 0.0
    (bits,) = _U64.unpack(_DOUBLE.pack(value))
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits & _BIAS else bits | _BIAS
    return _U64.pack(bits)


def _number(value: Any) -> bytes:
    if isinstance(value, Decimal128):
        as_float = float(value.to_decimal())
        return bytes([NUMBER]) + _sortable_double(as_float) + _U64.pack(_BIAS)
    if isinstance(value, float):
        return bytes([NUMBER]) + _sortable_double(value) + _U64.pack(_BIAS)
    # Integers: the double gives the order, the exact remainder breaks ties for
    # integers beyond 2**53 that share a double.
    as_float = float(value)
    remainder = value - int(as_float)
    return bytes([NUMBER]) + _sortable_double(as_float) + _U64.pack(remainder + _BIAS)


def _text(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return raw.replace(b"\x00", b"\x00\xff") + END


def _date_ms(value: datetime.datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def type_byte(value: Any) -> int:
    """The type bracket of a value."""
    if value is None or isinstance(value, Missing):
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float, Decimal128)):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, (dict, DBRef)):
        return OBJECT
    if isinstance(value, (list, tuple)):
        return ARRAY
    if isinstance(value, (bytes, Binary)):
        return BINARY
    if isinstance(value, ObjectId):
        return OBJECTID
    if isinstance(value, (datetime.datetime, DatetimeMS)):
        return DATE
    if isinstance(value, Timestamp):
        return TIMESTAMP
    if isinstance(value, Regex) or hasattr(value, "pattern"):
        return REGEX
    if isinstance(value, Code):
        return CODE
    if isinstance(value, MinKey):
        return MINKEY
    if isinstance(value, MaxKey):
        return MAXKEY
    raise MongoError(2, f"cannot compare a value of type {type(value).__name__}")


def encode(value: Any) -> bytes:
    """The order-preserving key of one value."""
    kind = type_byte(value)
    if kind == NULL:
        return b"\x14"
    if kind == NUMBER:
        return _number(value)
    if kind == STRING:
        return b"\x28" + _text(_fold(value))
    if kind == OBJECT:
        if isinstance(value, DBRef):
            value = value.as_doc()
        parts = [b"\x32"]
        for name, item in value.items():
            encoded = encode(item)
            parts.append(encoded[:1] + _text(name) + encoded[1:])
        parts.append(END)
        return b"".join(parts)
    if kind == ARRAY:
        return b"\x3c" + b"".join(encode(item) for item in value) + END
    if kind == BINARY:
        subtype = value.subtype if isinstance(value, Binary) else 0
        raw = bytes(value)
        return b"\x46" + struct.pack(">IB", len(raw), subtype) + raw
    if kind == OBJECTID:
        return b"\x50" + bytes(value.binary)
    if kind == BOOL:
        return b"\x5a\x01" if value else b"\x5a\x00"
    if kind == DATE:
        millis = int(value) if isinstance(value, DatetimeMS) else _date_ms(value)
        return b"\x64" + _U64.pack((millis + _BIAS) & 0xFFFFFFFFFFFFFFFF)
    if kind == TIMESTAMP:
        return b"\x6e" + struct.pack(">II", value.time, value.inc)
    if kind == REGEX:
        flags = value.flags if isinstance(value, Regex) else ""
        return b"\x78" + _text(value.pattern) + _text(str(flags))
    if kind == CODE:
        return b"\x8c" + _text(str(value))
    return bytes([kind])


def path_values(doc: Any, path: list[str]) -> Iterator[Any]:
    """Every value a dotted path reaches, expanding arrays on the way as MongoDB
    does (``a.b`` over ``{a: [{b: 1}, {b: 2}]}`` gives 1 and 2). A path that
    reaches nothing yields MISSING once."""
    found = False
    for value in _walk(doc, path):
        found = True
        yield value
    if not found:
        yield MISSING


def _walk(value: Any, path: list[str]) -> Iterator[Any]:
    if not path:
        yield value
        return
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        if head in value:
            yield from _walk(value[head], rest)
    elif isinstance(value, list):
        if head.isdigit() and int(head) < len(value):
            yield from _walk(value[int(head)], rest)
        for item in value:
            if isinstance(item, dict):
                yield from _walk(item, path)


def field_entries(doc: Any, path: list[str]) -> list[tuple[bytes, Any]]:
    """(key, value) pairs of one field in an index: arrays give one per element
    (multikey); an empty array and a missing field index as null."""
    entries: dict[bytes, Any] = {}
    for value in path_values(doc, path):
        if isinstance(value, list):
            if not value:
                entries.setdefault(b"\x14", None)
            for item in value:
                entries.setdefault(encode(item), item)
        else:
            entries.setdefault(encode(value), None if value is MISSING else value)
    return list(entries.items())


def index_entries(doc: dict[str, Any], paths: list[list[str]]) -> list[tuple[bytes, list[Any]]]:
    """Every key of ``doc`` in a (compound) index over ``paths``, each with the
    field values it was made of."""
    per_field = [field_entries(doc, path) for path in paths]
    multi = [i for i, entries in enumerate(per_field) if len(entries) > 1]
    if len(multi) > 1:
        raise MongoError(171, "cannot index parallel arrays")
    if not multi:
        return [(b"".join(e[0][0] for e in per_field), [e[0][1] for e in per_field])]
    position = multi[0]
    result = []
    for key, value in per_field[position]:
        chosen = [e[0] for e in per_field]
        chosen[position] = (key, value)
        result.append((b"".join(k for k, _ in chosen), [v for _, v in chosen]))
    return result


def sort_key(doc: dict[str, Any], path: list[str], ascending: bool) -> bytes:
    """The key MongoDB sorts a document by on one field: of an array's elements
    the smallest when ascending, the largest when descending."""
    candidates: list[bytes] = []
    for value in path_values(doc, path):
        if isinstance(value, list):
            candidates.extend(encode(item) for item in value)
            if not value:
                candidates.append(b"\x13")  # an empty array sorts before null
        else:
            candidates.append(encode(value))
    return min(candidates) if ascending else max(candidates)


def bracket_bounds(value: Any) -> tuple[bytes, bytes]:
    """The smallest and past-the-largest keys of ``value``'s type bracket."""
    kind = type_byte(value)
    return bytes([kind]), bytes([kind + 1])
