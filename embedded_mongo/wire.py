"""The MongoDB wire protocol, without I/O: bytes in, requests out, replies to bytes.

Only what drivers and shells send to a standalone server: OP_MSG (with document
sequences, ``moreToCome`` and the CRC-32C checksum) and the legacy OP_QUERY used for
the first handshake, answered with OP_REPLY.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

from .errors import ProtocolError

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1
_KNOWN_REQUIRED_FLAGS = CHECKSUM_PRESENT | MORE_TO_COME

HEADER = struct.Struct("<iiii")
MAX_MESSAGE_BYTES = 48_000_000
MAX_BSON_BYTES = 16 * 1024 * 1024

# Documents keep their exact BSON types: no timezone conversion, UUIDs left as
# Binary, dates outside Python's range kept as DatetimeMS.
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=False,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)


@dataclass
class Request:
    """One decoded request: a command document plus its document sequences."""

    request_id: int  # the client's requestID, echoed as responseTo
    op_code: int  # OP_MSG or OP_QUERY
    flags: int = 0  # OP_MSG flag bits
    body: dict[str, Any] = field(default_factory=dict)  # the command document
    sequences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # kind-1 sections
    db: str = ""  # target database, from $db or the OP_QUERY namespace

    @property
    def more_to_come(self) -> bool:
        return bool(self.flags & MORE_TO_COME)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as OP_MSG checksums use."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def parse_header(data: bytes) -> tuple[int, int, int, int]:
    """Returns (messageLength, requestID, responseTo, opCode); checks the length."""
    length, request_id, response_to, op_code = HEADER.unpack(data)
    if length < HEADER.size + 1 or length > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message length {length} is out of bounds")
    return length, request_id, response_to, op_code


def _decode(data: bytes | memoryview) -> dict[str, Any]:
    try:
        return bson.decode(bytes(data), CODEC)
    except Exception as exc:  # bson raises InvalidBSON and a few others
        raise ProtocolError(f"invalid BSON: {exc}") from exc


def _read_cstring(data: memoryview, pos: int) -> tuple[str, int]:
    end = bytes(data[pos:]).find(b"\x00")
    if end < 0:
        raise ProtocolError("unterminated cstring")
    return bytes(data[pos : pos + end]).decode("utf-8", "strict"), pos + end + 1


def _doc_length(data: memoryview, pos: int) -> int:
    if pos + 5 > len(data):
        raise ProtocolError("truncated document")
    (size,) = struct.unpack_from("<i", data, pos)
    if size < 5 or pos + size > len(data):
        raise ProtocolError("document length out of bounds")
    return int(size)


def parse_message(message: bytes) -> Request:
    """Parses one whole message (header included) into a Request."""
    length, request_id, _, op_code = parse_header(message[: HEADER.size])
    if length != len(message):
        raise ProtocolError("message length does not match its header")
    if op_code == OP_MSG:
        return _parse_op_msg(request_id, memoryview(message))
    if op_code == OP_QUERY:
        return _parse_op_query(request_id, memoryview(message))
    if op_code == OP_COMPRESSED:
        raise ProtocolError("compression was not negotiated")
    raise ProtocolError(f"unsupported opCode {op_code}")


def _parse_op_msg(request_id: int, data: memoryview) -> Request:
    pos = HEADER.size
    (flags,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if flags & 0xFFFF & ~_KNOWN_REQUIRED_FLAGS:
        raise ProtocolError(f"unknown required OP_MSG flag bits {flags:#x}")
    end = len(data)
    if flags & CHECKSUM_PRESENT:
        end -= 4
        if end < pos:
            raise ProtocolError("message too short for its checksum")
        (expected,) = struct.unpack_from("<I", data, end)
        if crc32c(bytes(data[:end])) != expected:
            raise ProtocolError("OP_MSG checksum mismatch")
    request = Request(request_id=request_id, op_code=OP_MSG, flags=flags)
    body_seen = False
    while pos < end:
        kind = data[pos]
        pos += 1
        if kind == 0:
            if body_seen:
                raise ProtocolError("OP_MSG has more than one body section")
            size = _doc_length(data, pos)
            request.body = _decode(data[pos : pos + size])
            body_seen = True
            pos += size
        elif kind == 1:
            if pos + 4 > end:
                raise ProtocolError("truncated document sequence")
            (size,) = struct.unpack_from("<i", data, pos)
            section_end = pos + size
            if size < 5 or section_end > end:
                raise ProtocolError("document sequence length out of bounds")
            name, cur = _read_cstring(data[:section_end], pos + 4)
            docs = []
            while cur < section_end:
                doc_size = _doc_length(data[:section_end], cur)
                docs.append(_decode(data[cur : cur + doc_size]))
                cur += doc_size
            request.sequences.setdefault(name, []).extend(docs)
            pos = section_end
        else:
            raise ProtocolError(f"unknown OP_MSG section kind {kind}")
    if not body_seen:
        raise ProtocolError("OP_MSG has no body section")
    db = request.body.get("$db")
    if not isinstance(db, str) or not db:
        raise ProtocolError("OP_MSG body has no $db")
    request.db = db
    return request


def _parse_op_query(request_id: int, data: memoryview) -> Request:
    pos = HEADER.size + 4  # flags
    namespace, pos = _read_cstring(data, pos)
    pos += 8  # numberToSkip, numberToReturn
    size = _doc_length(data, pos)
    query = _decode(data[pos : pos + size])
    db, _, coll = namespace.partition(".")
    if coll != "$cmd":
        raise ProtocolError("OP_QUERY is only accepted for commands")
    if "$query" in query and isinstance(query["$query"], dict):
        query = query["$query"]
    return Request(request_id=request_id, op_code=OP_QUERY, body=query, db=db)


def encode_reply(request: Request, reply: dict[str, Any], response_id: int) -> bytes:
    """Encodes a reply to ``request`` in the same protocol it came in."""
    if request.op_code == OP_QUERY:
        doc = bson.encode(reply, codec_options=CODEC)
        payload = struct.pack("<iqii", 0, 0, 0, 1) + doc
        op_code = OP_REPLY
    else:
        payload = struct.pack("<I", 0) + b"\x00" + bson.encode(reply, codec_options=CODEC)
        op_code = OP_MSG
    return HEADER.pack(HEADER.size + len(payload), response_id, request.request_id, op_code) + payload
