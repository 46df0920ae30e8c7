"""The WebSocket protocol, without I/O: frames in, commands out; replies and
pushes encoded to text frames.

A command is one JSON object ``{"id": int, "op": str, ...arguments}``. ``parse``
checks the frame, the op and every argument's type and range, and raises
``FrameError`` (carrying the command's id when it was readable) for anything
else; the session answers that error and goes on. Messages are encoded to their
push frame once (``encode_message_push``), whoever receives them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any

import ujson

CHANNEL = re.compile(r"^(room|feed|user):[A-Za-z0-9_-]{1,64}$")
MAX_DATA_BYTES = 16 * 1024  # a message's data, encoded as JSON
MAX_CID = 64  # characters of a client message id
MAX_ID = 2**53 - 1  # command ids are integers JavaScript can hold
HISTORY_LIMIT = 100  # the most messages a history call returns
OPS = ("ping", "subscribe", "unsubscribe", "publish", "history", "presence", "refresh")


class FrameError(Exception):
    """A frame that is not a valid command: answered with an error, the session goes on."""

    def __init__(self, code: str, message: str, command_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # contract error code
        self.message = message  # human text
        self.command_id = command_id  # the command's id, when it could be read


@dataclass
class Command:
    """One parsed command."""

    id: int  # echoed in the reply
    op: str  # one of OPS
    args: dict[str, Any] = field(default_factory=dict)  # checked arguments


def _int(args: dict[str, Any], name: str, command_id: int, low: int, high: int) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FrameError("invalid_request", f"{name} must be an integer from {low} to {high}", command_id)
    return int(value)


def _channel(args: dict[str, Any], command_id: int) -> str:
    value = args.get("channel")
    if not isinstance(value, str) or not CHANNEL.match(value):
        raise FrameError("invalid_request", "channel must match (room|feed|user):[A-Za-z0-9_-]{1,64}", command_id)
    return value


def check_data(data: Any, command_id: int | None = None) -> bytes:
    """A message's data: a JSON object of at most 16 KiB; returns its encoding."""
    if not isinstance(data, dict):
        raise FrameError("invalid_request", "data must be a JSON object", command_id)
    encoded: bytes = ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False).encode()
    if len(encoded) > MAX_DATA_BYTES:
        raise FrameError("payload_too_large", f"data is limited to {MAX_DATA_BYTES} bytes", command_id)
    return encoded


def check_cid(value: Any, command_id: int | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_CID:
        raise FrameError("invalid_request", f"cid must be a string of 1 to {MAX_CID} characters", command_id)
    return value


def parse(frame: str | bytes, recovery_max: int) -> Command:
    """The command in one text frame."""
    if isinstance(frame, bytes):
        raise FrameError("invalid_request", "frames must be text (one JSON object each)")
    try:
        payload = ujson.loads(frame)
    except (ValueError, OverflowError):
        raise FrameError("invalid_json", "the frame is not valid JSON") from None
    if not isinstance(payload, dict):
        raise FrameError("invalid_request", "a command is a JSON object")
    command_id = payload.get("id")
    if isinstance(command_id, bool) or not isinstance(command_id, int) or not 0 <= command_id <= MAX_ID:
        raise FrameError("invalid_request", "id must be a non-negative integer")
    op = payload.get("op")
    if not isinstance(op, str):
        raise FrameError("invalid_request", "op must be a string", command_id)
    if op not in OPS:
        raise FrameError("invalid_request", f"unknown op {op[:32]!r}; ops are {', '.join(OPS)}", command_id)
    args: dict[str, Any] = {}
    if op in ("subscribe", "unsubscribe", "publish", "history", "presence"):
        args["channel"] = _channel(payload, command_id)
    if op == "subscribe":
        args["since"] = _int(payload, "since", command_id, 0, MAX_ID)
        args["last"] = _int(payload, "last", command_id, 1, recovery_max)
        if args["since"] is not None and args["last"] is not None:
            raise FrameError("invalid_request", "give since or last, not both", command_id)
    elif op == "publish":
        args["data"] = payload.get("data")
        args["encoded"] = check_data(args["data"], command_id)
        args["cid"] = check_cid(payload.get("cid"), command_id)
    elif op == "history":
        args["before"] = _int(payload, "before", command_id, 1, MAX_ID)
        args["after"] = _int(payload, "after", command_id, 0, MAX_ID)
        if args["before"] is not None and args["after"] is not None:
            raise FrameError("invalid_request", "give before or after, not both", command_id)
        args["limit"] = _int(payload, "limit", command_id, 1, HISTORY_LIMIT) or 50
    elif op == "refresh":
        token = payload.get("token")
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise FrameError("invalid_request", "token must be an access token string", command_id)
        args["token"] = token
    return Command(command_id, op, args)


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
