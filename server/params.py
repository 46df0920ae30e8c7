"""Numeric arguments, over HTTP and WebSocket, through one function with
explicit bounds.

A WebSocket argument is a JSON integer (``true`` and ``1.0`` are not); a query
string's is ASCII decimal digits only: ``str.isdigit`` also passes ``²`` and
``٣``, and ``int`` turns some of those into numbers and fails on others. A seq
(and anything a JavaScript client counts) stays within SEQ_MAX, the largest
integer a JavaScript number holds exactly.
"""

from __future__ import annotations

from typing import Any

from server.errors import ApiError

SEQ_MAX = 2**53 - 1  # seqs, command ids, history bounds


def integer(value: Any, name: str, low: int, high: int) -> int:
    """``value`` if it is an integer from ``low`` to ``high``; ``invalid_request`` otherwise."""
    if type(value) is not int or not low <= value <= high:
        raise ApiError("invalid_request", f"{name} must be an integer from {low} to {high}",
                       [{"path": name, "message": f"must be an integer from {low} to {high}"}])
    return value


def optional_integer(value: Any, name: str, low: int, high: int) -> int | None:
    """A JSON argument that may be absent (``None``)."""
    return None if value is None else integer(value, name, low, high)


def integer_from_text(raw: str | None, name: str, low: int, high: int) -> int | None:
    """A query-string argument: absent or empty is None; otherwise ASCII digits
    within the bounds. (More digits than ``high`` has are out of range unread:
    ``int`` of thousands of digits is slow, then refused.)"""
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > len(str(high)):
        return integer(None, name, low, high)
    return integer(int(raw), name, low, high)
