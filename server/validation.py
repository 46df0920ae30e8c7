"""Request bodies: parsed with ujson, checked against a JSON Schema.

``parse_json`` gives ``invalid_json`` for anything that is not JSON;
``validate`` gives ``validation_failed`` listing every failing path, except that
an object of ``$``-operators where a scalar belongs is ``invalid_request`` (it
is an attempt to smuggle a query operator, never a value).
"""

from __future__ import annotations

from typing import Any

import ujson
from jsonschema import Draft202012Validator

from server.errors import ApiError


def parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError("invalid_json", "the request body is empty; it must be a JSON object")
    try:
        return ujson.loads(body)
    except (ValueError, OverflowError) as exc:
        raise ApiError("invalid_json", f"the request body is not valid JSON: {exc}") from None


def pointer(path: Any) -> str:
    """A JSON Pointer (``/items/0/name``) of a path in an instance."""
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path) if path else "/"


def is_operator_object(value: Any) -> bool:
    return isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value)


def compile_schema(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(validator: Draft202012Validator, instance: Any) -> Any:
    """``instance`` if it matches; otherwise every failure, by path."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return instance
    injected = [e for e in errors if e.validator == "type" and is_operator_object(e.instance)]
    if injected:
        raise ApiError("invalid_request", "query operators are not accepted as values",
                       [{"path": pointer(e.absolute_path), "message": "an operator object is not a value"}
                        for e in injected])
    details = [{"path": pointer(e.absolute_path), "message": e.message} for e in errors]
    raise ApiError("validation_failed", "the request body does not have the expected shape", details)


def body_schema(properties: dict[str, Any], required: list[str]) -> Draft202012Validator:
    """A validator for a JSON object with these properties and no others."""
    return compile_schema({"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False})
