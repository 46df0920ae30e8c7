"""Review of the WebSocket upgrade answered at the HTTP edge (handlers/socket.py
``Upgrades``, handlers/edge.py): clients that leave mid-handshake, methods and
bodies on /ws, frames sent with the upgrade request, shutdown, failures after the
stream left Tornado, the access line, and frames through the new delegate. Real
servers and raw sockets throughout."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from handlers.socket import WebSocket, _Protocol
from server.errors import CloseCode
from server.realtime.connection import Connection
from tests.ws_client import RawSocket

UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


def request(target: str = "/ws", method: str = "GET", token: str | None = None, extra: str = "",
            upgrade: bool = True) -> bytes:
    """An upgrade request's head (token in Authorization when given)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{UPGRADE if upgrade else ''}{auth}{extra}"
            "\r\n").encode("latin-1")


def masked(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """One client frame (masked, as RFC 6455 requires of clients)."""
    mask = os.urandom(4)
    size = len(payload)
    first = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        header = first + bytes([0x80 | size])
    elif size < 65536:
        header = first + bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = first + bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def send(port: int, data: bytes, linger: bool = False) -> socket.socket:
    """A connection to the server that has sent ``data``."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if linger:  # close() resets the connection instead of ending it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, data)
    return sock


async def read_head(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """The answer's head, and what came after it so far."""
    loop, data = asyncio.get_running_loop(), b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
        if not chunk:
            raise ConnectionError(f"closed before a whole head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def read_to_end(sock: socket.socket, timeout: float = 5.0) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout):
        data += chunk
    return data


def raw_socket(sock: socket.socket, rest: bytes) -> RawSocket:
    """The test client's frame reader over a socket whose 101 was read."""
    client = RawSocket(sock)
    client.buffer = rest
    return client


async def settled(services: Any, app: Any) -> None:
    """Waits (a guard, not a measure) until no socket is registered or pinged."""
    for _ in range(200):
        if services.realtime.hub.connection_count() == 0 and not app.pinger.sockets:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{services.realtime.hub.connection_count()} sockets still registered")


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def socket_tasks() -> list[str]:
    names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
    return [n for n in names if "_receive_frame_loop" in n or "_upgrade" in n]


class Gate:
    """Holds every token check until opened: a slow authentication."""

    def __init__(self, services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = asyncio.Event()  # a check is waiting
        self.open = asyncio.Event()  # checks may go on
        checking: Callable[..., Awaitable[Any]] = services.auth.authenticate

        async def slow(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            await self.open.wait()
            return await checking(*args, **kwargs)

        monkeypatch.setattr(services.auth, "authenticate", slow)


# -- clients that leave ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_leaves_while_its_token_is_checked_leaves_nothing_behind(
        login, http_port: int, services, app, monkeypatch, caplog, reset: bool) -> None:
    """A client that closes (or resets) its connection while its token is checked: once the check ends,
    no socket is registered or pinged, no task is left, nothing is logged as an error, the gauge reads 0."""
    caplog.set_level(logging.INFO)
    alice = await login("alice")
    gate = Gate(services, monkeypatch)
    sock = await send(http_port, request(token=alice["access_token"]), linger=reset)
    await asyncio.wait_for(gate.entered.wait(), 5)
    sock.close()
    await asyncio.sleep(0.1)
    gate.open.set()
    await settled(services, app)
    await asyncio.sleep(0.1)
    assert not socket_tasks() and not errors(caplog)
    services.refresh_gauges()
    assert services.metrics.ws_connections._value.get() == 0


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_leaves_right_after_the_101_leaves_nothing_behind(
        login, http_port: int, services, app, caplog, reset: bool) -> None:
    """A client that reads its 101 and at once closes (or resets) the connection: its socket leaves the
    hub and the Pinger, its frame loop ends, nothing is logged as an error."""
    caplog.set_level(logging.INFO)
    alice = await login("alice")
    for _ in range(5):
        sock = await send(http_port, request(token=alice["access_token"]), linger=reset)
        head, _ = await read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        sock.close()
    await settled(services, app)
    await asyncio.sleep(0.1)
    assert not socket_tasks() and not errors(caplog)


# -- methods and bodies -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_head_on_ws_is_answered_405_without_a_body(login, http_port: int) -> None:
    """HEAD /ws is 405 with Allow: GET and no body (RFC 9110: an answer to HEAD has none, whatever its
    Content-Length says)."""
    alice = await login("alice")
    sock = await send(http_port, request(method="HEAD", token=alice["access_token"]))
    answer = await read_to_end(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET" in head
    assert body == b""
    sock.close()


@pytest.mark.parametrize("extra, body", [
    ("Content-Length: 5\r\n", b"hello"),
    ("Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
])
@pytest.mark.gen_test(timeout=30)
async def test_an_upgrade_carrying_a_body_is_refused_not_read_as_frames(login, http_port: int, services, app,
                                                                        extra: str, body: bytes) -> None:
    """An upgrade request with a body is 400 invalid_request in the envelope: its body is not taken for
    WebSocket frames after a 101 (which then broke the connection)."""
    alice = await login("alice")
    sock = await send(http_port, request(token=alice["access_token"], extra=extra) + body)
    answer = await read_to_end(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert json.loads(payload)["error"]["code"] == "invalid_request"
    sock.close()
    await settled(services, app)


@pytest.mark.gen_test(timeout=30)
async def test_an_upgrade_with_an_empty_body_still_upgrades(login, http_port: int) -> None:
    """Content-Length: 0 on an upgrade is no body: it upgrades, and its socket answers."""
    alice = await login("alice")
    sock = await send(http_port, request(token=alice["access_token"], extra="Content-Length: 0\r\n"))
    head, rest = await read_head(sock)
    assert head.startswith(b"HTTP/1.1 101 ")
    raw = raw_socket(sock, rest)
    await raw.send(json.dumps({"id": 1, "op": "ping"}).encode())
    frame = await raw.frame()
    assert frame is not None and json.loads(frame[1])["id"] == 1
    raw.close()


@pytest.mark.gen_test(timeout=30)
async def test_other_methods_expect_continue_and_an_oversized_length_are_answered_at_once(login,
                                                                                         http_port: int) -> None:
    """POST with Expect: 100-continue is 405 at once (no 100, no wait for the body), OPTIONS and DELETE
    405, an upgrade declaring a body over the limit 413: each in the envelope, with the request's id."""
    alice = await login("alice")
    token = alice["access_token"]
    for method, extra, status, code in (
            ("POST", "Content-Length: 1000\r\nExpect: 100-continue\r\n", 405, "method_not_allowed"),
            ("OPTIONS", "", 405, "method_not_allowed"),
            ("DELETE", "", 405, "method_not_allowed"),
            ("GET", "Content-Length: 999999999\r\n", 413, "payload_too_large")):
        rid = "X-Request-Id: rid-12345678\r\n"
        sock = await send(http_port, request(method=method, token=token, extra=extra + rid))
        answer = await read_to_end(sock)
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), (method, head)
        assert b"\r\nX-Request-Id: rid-12345678\r\n" in head + b"\r\n"
        assert json.loads(payload)["error"]["code"] == code
        sock.close()


@pytest.mark.gen_test(timeout=30)
async def test_frames_sent_with_the_upgrade_request_are_read_after_the_101(login, http_port: int, services,
                                                                          monkeypatch) -> None:
    """Frames a client sends right behind its upgrade request, before the 101 arrives (and while its token is
    still being checked), are each read and answered after the 101, in order."""
    alice = await login("alice")
    gate = Gate(services, monkeypatch)
    frames = b"".join(masked(json.dumps({"id": n, "op": "ping"}).encode()) for n in range(1, 4))
    sock = await send(http_port, request(token=alice["access_token"]) + frames)
    await asyncio.wait_for(gate.entered.wait(), 5)
    await asyncio.sleep(0.1)
    gate.open.set()
    head, rest = await read_head(sock)
    assert head.startswith(b"HTTP/1.1 101 ")
    raw = raw_socket(sock, rest)
    replies = [await raw.frame() for _ in range(3)]
    assert [json.loads(f[1])["id"] for f in replies if f is not None] == [1, 2, 3]
    raw.close()


# -- shutdown ------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_shutdown_closes_sockets_with_1001_and_refuses_upgrades_in_flight(login, http_port: int, services,
                                                                               app, monkeypatch) -> None:
    """At shutdown, an open socket is closed with 1001; an upgrade whose token was being checked is then
    answered 503 unavailable in the envelope (no 101, nothing registered)."""
    alice = await login("alice")
    open_socket = await RawSocket.connect(http_port, alice["access_token"])
    gate = Gate(services, monkeypatch)
    sock = await send(http_port, request(token=alice["access_token"]))
    await asyncio.wait_for(gate.entered.wait(), 5)
    await services.shutdown()
    assert await open_socket.close_code() == CloseCode.GOING_AWAY
    gate.open.set()
    answer = await read_to_end(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), head
    assert json.loads(payload)["error"]["code"] == "unavailable"
    open_socket.close()
    sock.close()
    await settled(services, app)


# -- failures after the stream left Tornado -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_failure_opening_the_connection_is_logged_once_and_answered(login, http_port: int, services, app,
                                                                            monkeypatch, caplog) -> None:
    """realtime.open raising (after the stream was taken from Tornado) is logged once with its traceback and
    answered 500 internal in the envelope; the client is not left hanging on a 101 with nothing behind it."""
    caplog.set_level(logging.INFO)
    alice = await login("alice")

    def broken(*args: Any) -> Any:
        raise RuntimeError("the hub is broken")

    monkeypatch.setattr(services.realtime, "open", broken)
    sock = await send(http_port, request(token=alice["access_token"]))
    answer = await read_to_end(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 "), head
    assert json.loads(payload)["error"]["code"] == "internal"
    sock.close()
    traced = [r for r in errors(caplog) if r.exc_info and "the hub is broken" in str(r.exc_info[1])]
    assert len(traced) == 1, [r.getMessage() for r in errors(caplog)]
    assert not app.pinger.sockets and services.realtime.hub.connection_count() == 0


@pytest.mark.gen_test(timeout=30)
async def test_a_close_frame_whose_reason_is_not_utf8_fails_the_connection_without_an_error_logged(
        login, http_port: int, services, app, caplog) -> None:
    """A client's close frame whose reason is not UTF-8 fails the connection (RFC 6455 8.1: 1007, then the
    connection ends) and its socket leaves the hub; it is the client's fault, not logged as a server error
    with a traceback."""
    caplog.set_level(logging.INFO)
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"])
    await raw.send(b"\x03\xe8\xff\xfe", opcode=0x8)
    assert await raw.close_code() == CloseCode.INVALID_DATA
    assert await raw.frame() is None  # and the connection ends
    raw.close()
    await settled(services, app)
    assert not errors(caplog), [r.getMessage() for r in errors(caplog)]


# -- the access line ------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_the_101_and_refusals_echo_the_request_id_and_log_the_forwarded_client(login, http_port: int,
                                                                                    services, caplog) -> None:
    """The 101 and a refusal each echo the client's X-Request-Id; behind a proxy, the /ws access line names
    X-Forwarded-For's last hop, with the same request id, and no token."""
    caplog.set_level(logging.INFO, logger="server.access")
    object.__setattr__(services.settings, "behind_proxy", True)
    alice = await login("alice")
    token = alice["access_token"]
    forwarded = "X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n"
    for target, auth, status in ((f"/ws?token={token}", None, 101), ("/ws", "not-a-token", 401)):
        rid = f"rid-{status}-abcdefgh"
        sock = await send(http_port, request(target=target, token=auth, extra=forwarded + f"X-Request-Id: {rid}\r\n"))
        head, _ = await read_head(sock)
        assert head.startswith(f"HTTP/1.1 {status} ".encode()) and f"\r\nX-Request-Id: {rid}".encode() in head
        if status == 101:  # RFC 6455's sample key and its answer
            assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head + b"\r\n"
        sock.close()
        for _ in range(50):
            lines = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == rid]
            if lines:
                break
            await asyncio.sleep(0.02)
        assert len(lines) == 1
        line = lines[0].fields
        assert (line["route"], line["status"], line["ip"]) == ("/ws", status, "203.0.113.9")
        assert token not in json.dumps(line) and line["path"].startswith("/ws")


# -- frames through the new delegate -------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_fragmented_frames_with_a_ping_between_them_are_one_message(login, http_port: int) -> None:
    """A text message in three fragments with a ping frame between them is one command (its reply comes),
    the ping is answered with a pong carrying its data; a fragmented message that is not UTF-8 once whole
    closes with 1007."""
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"])
    text = json.dumps({"id": 7, "op": "ping"}).encode()
    parts = [text[:5], text[5:11], text[11:]]
    data = masked(parts[0], 0x1, fin=False) + masked(b"between", 0x9) + masked(parts[1], 0x0, fin=False)
    await asyncio.get_running_loop().sock_sendall(raw.sock, data + masked(parts[2], 0x0))
    frames = [await raw.frame(), await raw.frame()]
    assert (0xA, b"between") in frames
    reply = next(json.loads(f[1]) for f in frames if f is not None and f[0] == 0x1)
    assert reply["id"] == 7 and "result" in reply
    broken = '{"id": 8, "op": "ping", "x": "é"}'.encode()
    cut = broken.index("é".encode()) + 1  # the fragments split é's two bytes, then the second is lost
    await asyncio.get_running_loop().sock_sendall(raw.sock, masked(broken[:cut], 0x1, fin=False)
                                                  + masked(broken[cut + 1:], 0x0))
    assert await raw.close_code() == CloseCode.INVALID_DATA
    raw.close()


@pytest.mark.parametrize("extra_env", [{"WS_MAX_MESSAGE_BYTES": "1000"}])
@pytest.mark.gen_test(timeout=30)
async def test_fragments_adding_up_past_the_limit_close_with_1009(login, http_port: int, services, app,
                                                                  extra_env) -> None:
    """Fragments each under WS_MAX_MESSAGE_BYTES but together over it close the socket with 1009."""
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"])
    data = masked(b"x" * 600, 0x1, fin=False) + masked(b"y" * 600, 0x0)
    await asyncio.get_running_loop().sock_sendall(raw.sock, data)
    assert await raw.close_code() == CloseCode.TOO_BIG
    raw.close()
    await settled(services, app)


# -- memory ---------------------------------------------------------------------------------------------------


def _alive() -> dict[str, int]:
    gc.collect()
    counts = {"WebSocket": 0, "_Protocol": 0, "Connection": 0}
    for item in gc.get_objects():
        for name, kind in (("WebSocket", WebSocket), ("_Protocol", _Protocol), ("Connection", Connection)):
            if type(item) is kind:
                counts[name] += 1
    return counts


@pytest.mark.parametrize("extra_env", [{"WS_PING_INTERVAL": "1", "WS_MAX_PER_USER": "1000"}])
@pytest.mark.gen_test(timeout=120)
async def test_500_sockets_opened_and_closed_leave_no_socket_object_alive(login, http_port: int, services, app,
                                                                          extra_env) -> None:
    """500 sockets, opened 50 at a time and closed each way (a close frame, the connection ended, the
    connection reset, the server's disconnect), pinged meanwhile: after a collection no WebSocket, protocol
    or Connection object of theirs is alive."""
    users = [await login(f"mem{n}") for n in range(5)]
    before = _alive()
    loop = asyncio.get_running_loop()
    for batch in range(10):
        opened = []
        for n in range(50):
            token = users[n % 5]["access_token"]
            sock = await send(http_port, request(token=token), linger=n % 4 == 2)
            head, rest = await read_head(sock)
            assert head.startswith(b"HTTP/1.1 101 ")
            opened.append(raw_socket(sock, rest))
        while services.realtime.hub.connection_count() < 50:
            await asyncio.sleep(0.01)
        if batch == 0:  # a ping round reaches them; these raw sockets never answer one, so the pong's wait
            await asyncio.sleep(1.2)  # (as long as the interval) must outlast the batch: 0.2 s did not, on a busy VM
        for n, raw in enumerate(opened):
            if n % 4 == 0:
                await raw.send(b"\x03\xe8", opcode=0x8)
                assert await raw.close_code() == 1000
            elif n % 4 == 3:
                continue
            raw.close()
        for user in users:
            services.realtime.hub.close_user(_user_id(services, user), CloseCode.DISCONNECTED, "test")
        for n, raw in enumerate(opened):
            if n % 4 == 3:
                assert await raw.close_code() == CloseCode.DISCONNECTED
                await loop.sock_sendall(raw.sock, masked(b"\x0f\xa0", 0x8))
                raw.close()
        await settled(services, app)
    for _ in range(100):  # closes the server began wait for the client's close frame, then end
        counts = _alive()
        if counts == before:
            break
        await asyncio.sleep(0.05)
    assert counts == before


def _user_id(services: Any, tokens: dict[str, Any]) -> str:
    return services.auth.verify_access(tokens["access_token"]).user_id

