"""Request bodies: parsed with ujson, held to the value rules, checked against
a JSON Schema.

``parse_json`` gives ``invalid_json`` for anything that is not JSON and, for
JSON that breaks the value rules (``server.values``: finite numbers within
int64/double, bounded nesting, valid UTF-8, keys without NUL or a leading
``$``), ``validation_failed`` naming the path (``invalid_request`` for a ``$``
key: a smuggled query operator, never a value). ``validate`` gives
``validation_failed`` listing every failing path.

Schemas follow JSON Schema's regular expressions (ECMA-262), where ``$`` ends
the text: Python's ``$`` also matches before a final newline, so every ``$``
anchor is read as ``\\Z`` (``^[a-z]+$`` refuses ``"abc\\n"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import ujson
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from server import values
from server.errors import ApiError


def parse_json(body: bytes, envelope: values.Envelope = 1) -> Any:
    """The JSON of a request body, within the value rules; ``envelope``: the
    levels around the data (a body object around ``data``: 1)."""
    if not body:
        raise ApiError("invalid_json", "the request body is empty; it must be a JSON object")
    try:
        document = ujson.loads(body)
    except (ValueError, OverflowError) as exc:  # ujson's JSONDecodeError is a ValueError
        raise ApiError("invalid_json", f"the request body is not valid JSON: {exc}") from None
    values.check(document, envelope)
    return document


def pointer(path: Any) -> str:
    """A JSON Pointer (``/items/0/name``) of a path in an instance."""
    return values.pointer(list(path))


def ecma_anchors(pattern: str) -> str:
    """``pattern`` with every ``$`` anchor (not escaped, not in a class) made ``\\Z``."""
    out: list[str] = []
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            out.append(r"\Z")
            continue
        out.append(char)
    return "".join(out)


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(ecma_anchors(pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and _compiled(pattern).search(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})  # 2020-12, ECMA-262 anchors


def compile_schema(schema: dict[str, Any]) -> Any:
    Validator.check_schema(schema)
    return Validator(schema)


def validate(validator: Draft202012Validator, instance: Any) -> Any:
    """``instance`` if it matches; otherwise every failure, by path."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return instance
    details = [{"path": pointer(e.absolute_path), "message": e.message} for e in errors]
    raise ApiError("validation_failed", "the request body does not have the expected shape", details)


def body_schema(properties: dict[str, Any], required: list[str]) -> Any:
    """A validator for a JSON object with these properties and no others."""
    return compile_schema({"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False})
