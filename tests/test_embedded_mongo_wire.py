"""The wire protocol: the pure parser without sockets, then bad bytes over a real socket."""

from __future__ import annotations

import socket
import struct

import bson
import pymongo
import pytest

from embedded_mongo import wire
from embedded_mongo.errors import ProtocolError
from tests.mongo_process import StoreProcess


def op_msg(body: dict, sequences: dict | None = None, flags: int = 0, request_id: int = 7,
           checksum: bool = False) -> bytes:
    payload = struct.pack("<I", flags | (wire.CHECKSUM_PRESENT if checksum else 0))
    payload += b"\x00" + bson.encode(body)
    for name, docs in (sequences or {}).items():
        section = name.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", len(section) + 4) + section
    size = 16 + len(payload) + (4 if checksum else 0)
    message = struct.pack("<iiii", size, request_id, 0, wire.OP_MSG) + payload
    if checksum:
        message += struct.pack("<I", wire.crc32c(message))
    return message


def op_query(namespace: str, query: dict, request_id: int = 3) -> bytes:
    payload = struct.pack("<i", 0) + namespace.encode() + b"\x00" + struct.pack("<ii", 0, -1) + bson.encode(query)
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, wire.OP_QUERY) + payload


def test_parse_op_msg_with_document_sequences() -> None:
    """A body and a kind-1 sequence become the command and its documents."""
    request = wire.parse_message(op_msg({"insert": "c", "$db": "d"}, {"documents": [{"a": 1}, {"a": 2}]}))
    assert request.body["insert"] == "c" and request.db == "d"
    assert request.sequences == {"documents": [{"a": 1}, {"a": 2}]}
    assert request.request_id == 7 and not request.more_to_come


def test_more_to_come_and_checksum() -> None:
    """moreToCome is seen, a good checksum accepted and a bad one refused."""
    request = wire.parse_message(op_msg({"ping": 1, "$db": "a"}, flags=wire.MORE_TO_COME, checksum=True))
    assert request.more_to_come
    corrupted = bytearray(op_msg({"ping": 1, "$db": "a"}, checksum=True))
    corrupted[-8] ^= 0xFF
    with pytest.raises(ProtocolError, match="checksum"):
        wire.parse_message(bytes(corrupted))


def test_crc32c_known_value() -> None:
    """CRC-32C of "123456789" is the standard check value 0xE3069283."""
    assert wire.crc32c(b"123456789") == 0xE3069283


def test_parse_legacy_op_query_handshake() -> None:
    """OP_QUERY on admin.$cmd is a command; on a collection it is refused."""
    request = wire.parse_message(op_query("admin.$cmd", {"isMaster": 1}))
    assert request.body == {"isMaster": 1} and request.db == "admin" and request.op_code == wire.OP_QUERY
    reply = wire.encode_reply(request, {"ok": 1.0}, 9)
    length, _, response_to, op_code = struct.unpack_from("<iiii", reply)
    assert (length, response_to, op_code) == (len(reply), 3, wire.OP_REPLY)
    assert bson.decode(reply[36:]) == {"ok": 1.0}
    with pytest.raises(ProtocolError):
        wire.parse_message(op_query("db.coll", {"a": 1}))


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: m[:-3], "length"),
    (lambda m: struct.pack("<i", 10) + m[4:], "out of bounds"),
    (lambda m: m[:16] + struct.pack("<I", 1 << 5) + m[20:], "flag"),
    (lambda m: m[:20] + b"\x07" + m[21:], "section kind"),
    (lambda m: m[:21] + struct.pack("<i", 9999) + m[25:], "document length"),
    (lambda m: m[:12] + struct.pack("<i", 2012) + m[16:], "compression"),
    (lambda m: m[:12] + struct.pack("<i", 2010) + m[16:], "opCode"),
])
def test_malformed_messages_are_refused(mutate, reason: str) -> None:
    """Truncated, oversized, badly flagged or badly sectioned messages raise ProtocolError."""
    with pytest.raises(ProtocolError, match=reason):
        wire.parse_message(mutate(op_msg({"ping": 1, "$db": "admin"})))


def test_body_without_db_is_refused() -> None:
    """An OP_MSG whose body has no $db is refused."""
    with pytest.raises(ProtocolError, match=r"\$db"):
        wire.parse_message(op_msg({"ping": 1}))


def _exchange(store: StoreProcess, data: bytes) -> bytes | None:
    """Sends raw bytes; returns the reply, or None when the store closed the connection."""
    try:
        return _exchange_raw(store, data)
    except ConnectionResetError:
        return None


def _exchange_raw(store: StoreProcess, data: bytes) -> bytes | None:
    with socket.create_connection(("127.0.0.1", store.port), timeout=10) as sock:
        sock.sendall(data)
        header = b""
        while len(header) < 16:
            chunk = sock.recv(16 - len(header))
            if not chunk:
                return None
            header += chunk
        length = struct.unpack_from("<i", header)[0]
        body = b""
        while len(body) < length - 16:
            chunk = sock.recv(length - 16 - len(body))
            if not chunk:
                return None
            body += chunk
        return header + body


def _reply_doc(reply: bytes) -> dict:
    return bson.decode(reply[21:])


def test_raw_socket_ping_and_legacy_handshake(store: StoreProcess) -> None:
    """A hand-built OP_MSG ping and a legacy OP_QUERY isMaster both get ok: 1."""
    reply = _exchange(store, op_msg({"ping": 1, "$db": "admin"}))
    assert reply is not None and _reply_doc(reply)["ok"] == 1.0
    legacy = _exchange(store, op_query("admin.$cmd", {"isMaster": 1, "helloOk": True}))
    assert legacy is not None
    doc = bson.decode(legacy[36:])
    assert doc["ismaster"] is True and doc["helloOk"] is True


def test_invalid_bson_gets_an_error_and_the_store_keeps_serving(store: StoreProcess, client) -> None:
    """A message whose BSON is corrupt gets InvalidBSON (22); other clients are unaffected."""
    good = op_msg({"ping": 1, "$db": "admin"})
    bad = bytearray(good)
    bad[25] = 0x7F  # an element type that does not exist
    reply = _exchange(store, bytes(bad))
    assert reply is not None and _reply_doc(reply)["code"] == 22
    assert client.admin.command("ping")["ok"] == 1.0


@pytest.mark.parametrize("data", [
    b"\x00" * 16,
    struct.pack("<iiii", 48_000_001 + 16, 1, 0, wire.OP_MSG),
    struct.pack("<iiii", 20, 1, 0, 1234) + b"\x00\x00\x00\x00",
    op_query("db.coll", {"find": "x"}),
])
def test_bad_frames_close_the_connection(store: StoreProcess, client, data: bytes) -> None:
    """Frames that cannot be answered close that connection only; the store keeps serving."""
    assert _exchange(store, data) is None
    assert client.admin.command("ping")["ok"] == 1.0


def test_message_over_48_mb_is_refused_before_it_is_read(store: StoreProcess, client) -> None:
    """A 49 MB message is refused on its header: the connection closes without the store reading 49 MB."""
    header = struct.pack("<iiii", 49_000_000, 1, 0, wire.OP_MSG)
    with socket.create_connection(("127.0.0.1", store.port), timeout=10) as sock:
        sock.sendall(header + b"\x00" * 4096)
        try:
            assert sock.recv(16) == b""
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset is a close too
    assert client.admin.command("ping")["ok"] == 1.0


def test_more_to_come_write_is_applied_without_reply(store: StoreProcess, client, db) -> None:
    """An unacknowledged (moreToCome) insert gets no reply and is stored."""
    with socket.create_connection(("127.0.0.1", store.port), timeout=10) as sock:
        sock.sendall(op_msg({"insert": "c", "$db": db.name}, {"documents": [{"_id": "w0"}]}, flags=wire.MORE_TO_COME))
        sock.sendall(op_msg({"ping": 1, "$db": "admin"}, request_id=99))
        reply = sock.recv(1024)
        assert struct.unpack_from("<i", reply, 8)[0] == 99  # the first reply answers the ping
    assert db.c.find_one({"_id": "w0"}) is not None


def test_unacknowledged_writes_through_pymongo(db) -> None:
    """pymongo's w=0 writes (moreToCome) land."""
    unacked = db.get_collection("c", write_concern=pymongo.WriteConcern(w=0))
    for i in range(20):
        unacked.insert_one({"i": i})
    assert db.c.count_documents({}) == 20
