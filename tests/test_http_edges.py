"""The HTTP edge, tried with raw sockets: bodies over a route's limit (declared or
chunked) are 413 and requests Tornado cannot parse are 400, each in the envelope,
and the client reads the answer instead of a reset."""

from __future__ import annotations

import json
import re
import socket
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.http1connection import is_transfer_encoding_chunked, parse_int
from tornado.httputil import HTTPHeaders, HTTPInputError

from handlers.edge import content_length, is_chunked
from server.errors import ApiError

MIB = 1024 * 1024


def exchange(port: int, head: bytes, body: bytes | None = None, chunk: int = 256 * 1024) -> tuple[int, dict, dict]:
    """Sends ``head`` then all of ``body`` (as a naive client does: everything
    before reading), then reads the answer: (status, headers, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        for start in range(0, len(body or b""), chunk):
            sock.sendall((body or b"")[start:start + chunk])  # a reset here fails the test
        raw = b""
        while b"\r\n\r\n" not in raw:
            data = sock.recv(65536)
            assert data, f"the server closed without an answer: {raw!r}"
            raw += data
        head_part, _, rest = raw.partition(b"\r\n\r\n")
        lines = head_part.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = sock.recv(65536)
            assert data, "the answer was cut short"
            rest += data
    return status, headers, json.loads(rest[:length]) if length else {}


def assert_envelope(answer: tuple[int, dict, dict], status: int, code: str) -> None:
    got, headers, body = answer
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert headers.get("x-request-id")


def post_head(path: str, extra: str = "", length: int | None = None) -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}{extra}"
            "\r\n").encode()


def test_declared_body_over_a_json_routes_limit(live_server) -> None:
    """A 2 MiB JSON body, sent whole before reading, gets 413 payload_too_large in the envelope, not a reset."""
    body = b"[" + b"1," * MIB + b"1]"
    answer = exchange(live_server.port, post_head("/api/v1/auth/dev", length=len(body)), body)
    assert_envelope(answer, 413, "payload_too_large")
    assert str(1024 * 1024) in answer[2]["error"]["message"]  # names the route's limit


def test_declared_body_over_the_servers_maximum(live_server) -> None:
    """A 20 MiB upload (over FILE_MAX_BYTES and the server's maximum) is 413, read by the client."""
    body = b"x" * (20 * MIB)
    head = post_head("/api/v1/files", "Authorization: Bearer nope\r\n", length=len(body))
    assert_envelope(exchange(live_server.port, head, body, chunk=MIB), 413, "payload_too_large")


def test_chunked_body_over_the_limit(live_server) -> None:
    """A chunked JSON body that passes 1 MiB is 413 as soon as it does, and the client reads it."""
    piece = b"1," * 32768
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(40)) + b"0\r\n\r\n"
    answer = exchange(live_server.port, post_head("/api/v1/auth/dev"), chunks)
    assert_envelope(answer, 413, "payload_too_large")


def test_a_content_length_of_twenty_digits_is_too_large(live_server) -> None:
    """A Content-Length beyond any integer type is 413 (a number, just too large), not a parse failure."""
    answer = exchange(live_server.port, post_head("/api/v1/auth/dev", length=10**20))
    assert_envelope(answer, 413, "payload_too_large")


def test_expect_continue_over_the_limit_gets_no_go_ahead(live_server) -> None:
    """With Expect: 100-continue, a body over the limit is refused (413) before any of it is sent."""
    answer = exchange(live_server.port, post_head("/api/v1/auth/dev", "Expect: 100-continue\r\n", length=5 * MIB))
    assert_envelope(answer, 413, "payload_too_large")


def test_a_body_within_the_limit_still_works(live_server) -> None:
    """A chunked body within the limit reaches its handler (dev login answers 200)."""
    piece = b'{"name": "chunky"}'
    chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(piece), piece)
    status, _, body = exchange(live_server.port, post_head("/api/v1/auth/dev"), chunks)
    assert status == 200 and body["access_token"]


MALFORMED = {
    "NUL in Content-Type": b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\x00x\r\n\r\n",
    "NUL in X-Request-Id": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Request-Id: abcdefgh\x00\r\n\r\n",
    "bad request line": b"GET /healthz\r\nHost: a\r\n\r\n",
    "HTTP/2 request line": b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n",
    "header without colon": b"GET /healthz HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n",
    "folded header": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n",
    "bad header name": b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad Name: b\r\n\r\n",
    "missing Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "Content-Length not a number": b"POST /api/v1/auth/dev HTTP/1.1\r\nHost: a\r\nContent-Length: ten\r\n\r\n",
    "negative Content-Length": b"POST /api/v1/auth/dev HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "Content-Lengths differ": b"POST /api/v1/auth/dev HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\nx",
    "gzip Transfer-Encoding": b"POST /api/v1/auth/dev HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "both framings": (b"POST /api/v1/auth/dev HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n{}"),
    "bad query string": (b"GET /healthz?" + b"&".join(b"a=%d" % i for i in range(1200))
                         + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_requests_get_the_envelope(live_server, name: str) -> None:
    """A request Tornado cannot parse is 400 invalid_request in the envelope (Tornado's own is empty)."""
    assert_envelope(exchange(live_server.port, MALFORMED[name]), 400, "invalid_request")


@pytest.mark.parametrize("framing", [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"2\r\n{}\r\n0\r\nX\r\n"])
def test_a_broken_chunked_body_is_answered_in_the_envelope(live_server, framing: bytes) -> None:
    """A chunk size that is not hexadecimal, or a chunk not ended by CRLF: 400 invalid_request, not a bare 400."""
    assert_envelope(exchange(live_server.port, post_head("/api/v1/auth/dev") + framing), 400, "invalid_request")


HEADER_TEXT = st.text(st.characters(codec="latin-1"), max_size=40)


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(name=st.text(string.ascii_letters + string.digits + "-_ :\t\x00\x7f", min_size=1, max_size=20),
       value=HEADER_TEXT, method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "FOO"]),
       path=st.sampled_from(["/healthz", "/api/v1/me", "/api/v1/nothing", "/api/v1/auth/dev"]))
def test_any_header_gets_an_http_answer_in_the_envelope(live_server, name: str, value: str, method: str,
                                                         path: str) -> None:
    """Any header name and latin-1 value: the answer is a success or an error in the envelope, never bare."""
    if "\r" in value or "\n" in value:
        value = value.replace("\r", "").replace("\n", "")
    head = (f"{method} {path} HTTP/1.1\r\nHost: a\r\n{name}: {value}\r\nContent-Length: 0\r\n\r\n").encode("latin-1")
    status, headers, body = exchange(live_server.port, head)
    if status >= 400:
        assert_envelope((status, headers, body), status, body["error"]["code"])
    assert status < 500


def tornado_framing(headers: HTTPHeaders) -> tuple[int | None, bool]:
    """What Tornado's HTTP/1 reader makes of the framing headers (raises HTTPInputError when it refuses)."""
    length = None
    if "Content-Length" in headers:
        pieces = re.split(r",[ \t]*", headers["Content-Length"])
        if any(p != pieces[0] for p in pieces):
            raise HTTPInputError("unequal Content-Lengths")
        try:
            length = parse_int(pieces[0])
        except ValueError:
            raise HTTPInputError("not an integer") from None
    return length, is_transfer_encoding_chunked(headers)


FRAMING_VALUE = st.one_of(st.integers(0, 10**20).map(str), st.text("0123456789abcdef ,-+\t", max_size=12),
                          st.sampled_from(["chunked", "Chunked", "gzip", "chunked, chunked", "identity"]))


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(lengths=st.lists(FRAMING_VALUE, max_size=3), encodings=st.lists(FRAMING_VALUE, max_size=2))
def test_the_edge_reads_framing_headers_as_tornado_does(lengths: list[str], encodings: list[str]) -> None:
    """For any Content-Length and Transfer-Encoding headers, the edge accepts exactly what Tornado's reader
    accepts, with the same length; what either refuses is invalid_request, never another exception."""
    headers = HTTPHeaders()
    for value in lengths:
        headers.add("Content-Length", value.strip(" \t"))
    for value in encodings:
        headers.add("Transfer-Encoding", value.strip(" \t"))
    try:
        expected: tuple[int | None, bool] | None = tornado_framing(headers)
    except HTTPInputError:
        expected = None
    try:
        got: tuple[int | None, bool] | None = (content_length(headers), is_chunked(headers))
    except ApiError as error:
        assert error.code == "invalid_request"
        got = None
    assert got == expected


@settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=4))
def test_any_request_head_is_answered_in_the_envelope(live_server, lines: list[bytes]) -> None:
    """Any bytes as a request head get an answer: a success, or an error in the envelope (never Tornado's bare 400)."""
    status, headers, body = exchange(live_server.port, b"\r\n".join(lines) + b"\r\n\r\n")
    if status >= 400:
        assert_envelope((status, headers, body), status, body["error"]["code"])
    assert status < 500


def test_request_ids_differ_in_a_forked_worker() -> None:
    """Request ids are a per-process prefix and a counter: a forked process draws its own prefix, so two workers
    never hand out the same id."""
    import os

    from handlers.edge import _IDS

    ours = _IDS.next()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out at once
        os.write(write, _IDS.next().encode())
        os._exit(0)
    os.close(write)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(ours) == len(theirs) == 32 and ours[:16] != theirs[:16]
