"""The WebSocket protocol, without I/O: frames in, commands out; replies and
pushes encoded to text frames.

A command is one JSON object ``{"id": int, "op": str, ...arguments}``. ``parse``
checks the frame against the value rules (``server.values``), then the op and
every argument's type and range, and raises ``ApiError`` (carrying the
command's id when it was readable) for anything else; the session answers that
error and goes on. Messages are encoded to their push frame once
(``encode_message_push``), whoever receives them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import ujson

from server import values
from server.channels import Channel
from server.errors import ApiError
from server.params import SEQ_MAX, optional_integer

MAX_DATA_BYTES = 16 * 1024  # a message's data, encoded as JSON
MAX_CID = 64  # characters of a client message id
MAX_TOKEN = 4096  # characters of an access token
MAX_ID = SEQ_MAX  # command ids are integers JavaScript can hold
HISTORY_LIMIT = 100  # the most messages a history call returns
OPS = ("ping", "subscribe", "unsubscribe", "publish", "history", "presence", "refresh")


@dataclass
class Command:
    """One parsed command."""

    id: int  # echoed in the reply
    op: str  # one of OPS
    args: dict[str, Any] = field(default_factory=dict)  # checked arguments


def check_data(data: Any) -> bytes:
    """A message's data: a JSON object (already within the value rules) of at
    most 16 KiB; returns its encoding."""
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "data must be a JSON object",
                       [{"path": "/data", "message": "must be an object"}])
    encoded: bytes = ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False).encode()
    if len(encoded) > MAX_DATA_BYTES:
        raise ApiError("payload_too_large", f"data is limited to {MAX_DATA_BYTES} bytes")
    return encoded


def check_cid(value: Any, name: str = "cid") -> str | None:
    """A client message id (or a server API idempotency key): 1 to MAX_CID characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_CID:
        raise ApiError("invalid_request", f"{name} must be a string of 1 to {MAX_CID} characters")
    return value


def _arguments(op: str, payload: dict[str, Any], recovery_max: int) -> dict[str, Any]:
    """The checked arguments of ``op``."""
    args: dict[str, Any] = {}
    if op in ("subscribe", "unsubscribe", "publish", "history", "presence"):
        args["channel"] = Channel.parse(payload.get("channel"))
    if op == "subscribe":
        args["since"] = optional_integer(payload.get("since"), "since", 0, SEQ_MAX)
        args["last"] = optional_integer(payload.get("last"), "last", 1, recovery_max)
        if args["since"] is not None and args["last"] is not None:
            raise ApiError("invalid_request", "give since or last, not both")
    elif op == "publish":
        args["data"] = payload.get("data")
        args["encoded"] = check_data(args["data"])
        args["cid"] = check_cid(payload.get("cid"))
    elif op == "history":
        args["before"] = optional_integer(payload.get("before"), "before", 1, SEQ_MAX)
        args["after"] = optional_integer(payload.get("after"), "after", 0, SEQ_MAX)
        if args["before"] is not None and args["after"] is not None:
            raise ApiError("invalid_request", "give before or after, not both")
        args["limit"] = optional_integer(payload.get("limit"), "limit", 1, HISTORY_LIMIT) or 50
    elif op == "refresh":
        token = payload.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            raise ApiError("invalid_request", "token must be an access token string")
        args["token"] = token
    return args


def parse(frame: str | bytes, recovery_max: int) -> Command:
    """The command in one text frame."""
    if isinstance(frame, bytes):
        raise ApiError("invalid_request", "frames must be text (one JSON object each)")
    try:
        payload = ujson.loads(frame)
    except (ValueError, OverflowError):  # ujson's JSONDecodeError is a ValueError
        raise ApiError("invalid_json", "the frame is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError("invalid_request", "a command is a JSON object")
    command_id = payload.get("id")
    if type(command_id) is not int or not 0 <= command_id <= MAX_ID:
        raise ApiError("invalid_request", f"id must be an integer from 0 to {MAX_ID}")
    try:
        values.check(payload, envelope=1, code="invalid_request")  # the frame is the object around data
        op = payload.get("op")
        if not isinstance(op, str):
            raise ApiError("invalid_request", "op must be a string")
        if op not in OPS:
            raise ApiError("invalid_request", f"unknown op {op[:32]!r}; ops are {', '.join(OPS)}")
        return Command(command_id, op, _arguments(op, payload, recovery_max))
    except ApiError as error:
        error.command_id = command_id
        raise


def _dumps(payload: Any) -> str:
    return str(ujson.dumps(payload, ensure_ascii=False, escape_forward_slashes=False))


def encode_result(command_id: int, result: dict[str, Any] | bytes) -> str | bytes:
    """A reply; ``result`` may be JSON already (a replay built from stored pushes)."""
    if isinstance(result, bytes):
        return b'{"id":%d,"result":%s}' % (command_id, result)
    return _dumps({"id": command_id, "result": result})


def encode_subscribe_result(channel: str, seq: int, messages: list[bytes]) -> bytes:
    """A complete subscribe result whose messages are JSON already: the same
    object ``subscribe`` returns from MongoDB, without decoding the messages."""
    return b'{"channel":%s,"seq":%d,"recovered":true,"messages":[%s]}' % (
        _dumps(channel).encode(), seq, b",".join(messages))


def encode_error(command_id: int | None, code: str, message: str) -> str:
    return _dumps({"id": command_id, "error": {"code": code, "message": message}})


def encode_message_push(message: dict[str, Any]) -> bytes:
    """The push frame of a message, as UTF-8 bytes: built once per message."""
    return _dumps({"push": "message", "message": message}).encode()


def text_frame(payload: bytes) -> bytes:
    """A whole, unmasked, uncompressed WebSocket text frame (RFC 6455) around
    ``payload``: built once per message and written as it is to every subscriber."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def encode_presence_push(kind: str, channel: str, user: str) -> bytes:
    return _dumps({"push": kind, "channel": channel, "user": user}).encode()
