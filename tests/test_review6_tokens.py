"""Review: no token reaches a log line from a /ws upgrade, wherever and however
the query carries it (names percent-encoded, blanks around the value that the
server strips, other arguments around it), upgraded or refused."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.logs import JsonFormatter
from tests.helpers.servers import sign_in

UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


class Lines(logging.Handler):
    """Every record, formatted as the server writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []  # formatted records, in order
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def token(live_server: Any) -> str:
    """An access token of the live server (dev sign-in)."""
    return str(sign_in(live_server.url, "tok")["access_token"])


@pytest.fixture
def lines() -> Iterator[Lines]:
    root = logging.getLogger()
    handler, level = Lines(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def _name() -> st.SearchStrategy[str]:
    """``token`` with each letter as sent: itself, or percent-encoded in either case of hex."""
    return st.tuples(*(st.sampled_from([c, f"%{ord(c):02x}", f"%{ord(c):02X}"]) for c in "token")).map("".join)


BLANKS = ["", "\xa0", "\x85", "\xc2\xa0", "\xc2\x85", "%20", "+", "%C2%A0"]  # as latin-1 request bytes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_name(), before=st.sampled_from(["", "a=1&", "token=&", "&&", "x=token%3D&"]),
       blank=st.sampled_from(BLANKS), after=st.sampled_from(["", "&b=2", "\xa0", "\xc2\xa0&c", "#frag"]),
       upgrade=st.booleans(), n=st.integers(0, 10**9))
def test_no_token_in_any_log_line_wherever_the_query_puts_it(live_server: Any, token: str, lines: Lines,
                                                             name: str, before: str, blank: str, after: str,
                                                             upgrade: bool, n: int) -> None:
    """An upgrade (or a plain GET /ws) carrying a valid token in the query, in any of these shapes, writes
    no line holding the token's payload or signature, whatever it is answered."""
    rid = f"tokens-{n:012d}"
    target = f"/ws?{before}{name}={blank}{token}{after}"
    head = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{UPGRADE if upgrade else ''}X-Request-Id: {rid}\r\n"
            "\r\n").encode("latin-1")
    start = len(lines.lines)
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=5) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 "), answer
    deadline = time.monotonic() + 5
    while not any(rid in line for line in lines.lines[start:]) and time.monotonic() < deadline:
        time.sleep(0.01)  # the access line of a 101 may follow it
    written = "\n".join(lines.lines[start:])
    assert rid in written
    _, payload, signature = token.split(".")
    for secret in (payload, signature):
        for text in (written, written.encode().decode("unicode_escape", "ignore")):
            assert secret not in text, written
