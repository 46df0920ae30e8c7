"""The value rules: what a message's data, a record, and any JSON the server
reads may hold, so that whatever it accepts it can store in MongoDB (BSON) and
serve back as JSON that ``JSON.parse`` reads.

- numbers: integers from -2**63 to 2**63-1 (BSON's int64); other numbers
  finite doubles. ujson reads the literals ``NaN``, ``Infinity`` and
  ``-Infinity``, and an overflowing ``1e400`` as infinity; none is JSON.
- strings and keys: Unicode text that has a UTF-8 form: a lone surrogate
  (what the escape ``"\\ud800"`` decodes to) has none.
- keys: no NUL (BSON keys are C strings) and no leading ``$`` (MongoDB's
  operators; such a key is refused as ``invalid_request``, an attempt to
  smuggle a query operator, never a value, and the path names the object
  holding it).
- nesting: at most ``MAX_DEPTH`` (32) levels of objects and arrays, the data
  (or the record) itself counted as level 1. ujson alone stops at 1,024, deeper
  than BSON encoders and MongoDB (100) go.

``check`` applies them once, as JSON is parsed (``protocol.parse``,
``validation.parse_json``), to the whole frame or body; ``envelope`` says how
many levels wrap the data (a frame or a server API body: 1, around ``data``;
a record: 0, or 2 in a batch's ``{"items": [...]}``). A refusal names the first
offending place as a JSON Pointer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from server.errors import ApiError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32  # levels of objects and arrays in a message's data or a record
MAX_POINTER = 200  # characters of a path quoted back in an error
_SURROGATE = re.compile("[\ud800-\udfff]")
OPERATOR = "an operator object is not a value"  # a key starting with $; the path names its object

Envelope = int | Callable[[Any], int]  # levels around the data, or how to tell them from the document


def _text_problem(text: str) -> str | None:
    # isprintable is a quick pass for most text: a surrogate is never printable.
    if text.isascii() or text.isprintable() or _SURROGATE.search(text) is None:
        return None
    return "a lone surrogate (such as \\ud800) is not text; strings must be valid UTF-8"


def _key_problem(key: Any) -> str | None:
    if type(key) is not str:
        return "keys must be strings"
    if key[:1] == "$":
        return OPERATOR
    if "\x00" in key:
        return "keys must not contain NUL"
    return _text_problem(key)


def _scalar_problem(value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        return _text_problem(value)
    if kind is int:
        return None if INT64_MIN <= value <= INT64_MAX else "integers must be within -2^63..2^63-1 (int64)"
    if kind is float:
        if value - value == 0.0:  # NaN and ±infinity give NaN
            return None
        return "numbers must be finite: NaN, Infinity and overflowing literals (1e400) are not JSON"
    return None if value is None or kind is bool else "not a JSON value"


def _problem(value: Any, levels: int) -> tuple[list[Any], str] | None:
    """The first rule ``value`` breaks: the path to it (innermost first) and
    what is wrong; None when it keeps them all. ``levels``: the levels of
    objects and arrays still allowed.

    The common scalars pass inline, without a call each: most of a message
    is scalars. Whatever fails that quick pass is looked at closely."""
    kind = type(value)
    if kind is not dict and kind is not list:
        wrong = _scalar_problem(value)
        return None if wrong is None else ([], wrong)
    if levels <= 0:
        return [], f"nests deeper than {MAX_DEPTH} levels of objects and arrays"
    key: Any
    for key, item in value.items() if kind is dict else enumerate(value):
        if kind is dict and not ((key.isascii() or key.isprintable()) and key[:1] != "$" and "\x00" not in key):
            wrong = _key_problem(key)
            if wrong is not None:
                return ([] if wrong is OPERATOR else [key]), wrong
        kind_of_item = type(item)
        if (kind_of_item is str and (item.isascii() or item.isprintable())) or item is None or (
                kind_of_item is int and INT64_MIN <= item <= INT64_MAX) or (
                kind_of_item is float and item - item == 0.0) or kind_of_item is bool:
            continue
        found = _problem(item, levels - 1)
        if found is not None:
            found[0].append(key)
            return found
    return None


def pointer(path: list[Any]) -> str:
    """A JSON Pointer (``/data/items/0``) of a path, outermost first, printable
    (a lone surrogate in a key shows as U+FFFD) and at most MAX_POINTER characters."""
    if not path:
        return "/"
    text = "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)
    text = _SURROGATE.sub("\ufffd", text)
    return text if len(text) <= MAX_POINTER else text[: MAX_POINTER - 1] + "…"


def problem(value: Any, envelope: int = 0) -> tuple[str, str] | None:
    """The first rule ``value`` breaks, as (JSON Pointer, message); None if none."""
    found = _problem(value, MAX_DEPTH + envelope)
    if found is None:
        return None
    path, message = found
    path.reverse()
    return pointer(path), message


def check(value: Any, envelope: Envelope = 0, code: str = "validation_failed",
          command_id: int | None = None) -> None:
    """Raises ``code`` (``invalid_request`` for a ``$`` key) naming the first
    place ``value`` breaks the rules, ``envelope`` levels above the data not
    counted against MAX_DEPTH."""
    found = problem(value, envelope if isinstance(envelope, int) else envelope(value))
    if found is None:
        return
    path, message = found
    if message is OPERATOR:
        raise ApiError("invalid_request", f"{path}: query operators are not accepted as values",
                       [{"path": path, "message": message}], command_id=command_id)
    raise ApiError(code, f"{path}: {message}", [{"path": path, "message": message}], command_id=command_id)
