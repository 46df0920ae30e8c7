"""Review: every shape of a /ws handshake (method, upgrade headers, a body, the
token) is answered as the checks say, in the envelope when refused, never 5xx."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.servers import sign_in

ABSENT = None  # the header is not sent
BODIES = {"none": "", "empty": "Content-Length: 0\r\n\r\n", "sized": "Content-Length: 3\r\n\r\nabc",
          "chunked": "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"}


@pytest.fixture(scope="module")
def token(live_server: Any) -> str:
    """An access token of the live server (dev sign-in)."""
    return str(sign_in(live_server.url, "hs")["access_token"])


def expected(method: str, upgrade: str | None, connection: str | None, version: str | None, key: str | None,
             body: str, auth: str) -> int:
    """The status RFC 6455 4.2.1 and the contract give this handshake."""
    if method != "GET":
        return 405
    if (upgrade or "").lower() != "websocket":
        return 400
    if "upgrade" not in (p.strip().lower() for p in (connection or "").split(",")):
        return 400
    if (version or "").strip() != "13" or not key or body in ("sized", "chunked"):
        return 400
    return 101 if auth == "valid" else 401


@settings(max_examples=120, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "OPTIONS", "get"]),
       upgrade=st.sampled_from([ABSENT, "websocket", "WebSocket", "websocket2", "", "h2c"]),
       connection=st.sampled_from([ABSENT, "Upgrade", "keep-alive, Upgrade", "upgrade,close", "keep-alive",
                                   "Upgraded"]),
       version=st.sampled_from([ABSENT, "13", "8", " 13", "13, 8", ""]),
       key=st.sampled_from([ABSENT, "", "dGhlIHNhbXBsZSBub25jZQ=="]),
       body=st.sampled_from(sorted(BODIES)), auth=st.sampled_from(["valid", "invalid", "none"]))
def test_each_handshake_shape_gets_the_answer_the_checks_give(live_server: Any, token: str, method: str,
                                                              upgrade: str | None, connection: str | None,
                                                              version: str | None, key: str | None, body: str,
                                                              auth: str) -> None:
    """The status is the one RFC 6455's checks and the token give; a refusal is the envelope (no body for
    HEAD), a 101 carries the RFC's accept key; nothing is 5xx."""
    headers = {"Upgrade": upgrade, "Connection": connection, "Sec-WebSocket-Version": version,
               "Sec-WebSocket-Key": key, "Authorization": {"valid": f"Bearer {token}", "invalid": "Bearer x.y.z",
                                                           "none": None}[auth]}
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items() if value is not None)
    data = f"{method} /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}" + (BODIES[body] or "\r\n")
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=5) as sock:
        sock.sendall(data.encode("latin-1"))
        answer = b""
        while (chunk := sock.recv(65536)) and not _whole(answer := answer + chunk, method):
            pass
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status == expected(method, upgrade, connection, version, key, body, auth), head
    if status == 101:
        assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head + b"\r\n"
    elif method == "HEAD":
        assert payload == b""
    else:
        assert set(json.loads(payload)["error"]) == {"code", "message", "details"}


def _whole(answer: bytes, method: str) -> bool:
    """Whether ``answer`` is a whole answer: a 101's head, or a head and its Content-Length's body."""
    head, found, payload = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    if head.startswith(b"HTTP/1.1 101 ") or method == "HEAD":
        return True
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return len(payload) >= length
