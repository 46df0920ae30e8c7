"""The HTTP edge: what the server answers before any handler runs.

Tornado answers a request it cannot parse (a bad request line, a header with a
NUL, a bad ``Content-Length``, an unknown ``Transfer-Encoding``) and a body over
its limit with a bare ``400`` and no body, and closes the connection while the
client may still be sending, so the client reads a reset instead of an answer.
``Edge`` wraps each request's delegate and answers these in the contract's
envelope instead: ``invalid_request`` (400) for what cannot be parsed,
``payload_too_large`` (413) for a body over its route's limit, decided from the
headers before any of the body is read (and, for a chunked body, as soon as the
bytes read pass the limit). After such an answer the connection closes
gracefully: the server stops writing, reads and drops what the client still
sends (bounded in bytes and time), then closes, so the client reads the answer.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import os
import re
from collections.abc import Awaitable, Callable, Mapping

import ujson
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream, StreamClosedError

from server.errors import ApiError
from server.timeouts import within

LINGER_BYTES = 64 * 1024 * 1024  # at most this much of a refused body is read and dropped
LINGER_SECONDS = 10.0  # for at most this long
LINGER_IDLE_SECONDS = 2.0  # or until the client sends nothing for this long
_READ_CHUNK = 64 * 1024
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")  # an X-Request-Id the server echoes (else it makes one)
_DIGITS = re.compile(r"[0-9]+")
_SYNTHETIC = "GET / HTTP/1.1"  # stands for a request Tornado could not parse, which Edge refuses
_REFUSING: set[asyncio.Task[None]] = set()  # graceful closes under way, kept until done

Upgrade = Callable[["Edge", httputil.RequestStartLine, httputil.HTTPHeaders], Awaitable[None] | None]


class _Ids:
    """Request ids unique over processes and restarts: 16 random hex digits drawn
    per process (again in a forked worker), then a counter (a uuid4 per request
    cost a getrandom call on every handshake of a reconnect storm)."""

    def __init__(self) -> None:
        self.prefix = ""  # 16 random hex digits
        self.counter = itertools.count()  # this process's requests
        self.draw()
        os.register_at_fork(after_in_child=self.draw)

    def draw(self) -> None:
        self.prefix, self.counter = os.urandom(8).hex(), itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_IDS = _Ids()


def request_id(headers: httputil.HTTPHeaders) -> str:
    """The client's X-Request-Id when it is well formed, else a new one."""
    incoming = headers.get("X-Request-Id", "")
    return incoming if REQUEST_ID.fullmatch(incoming) else _IDS.next()


def answer_bytes(error: ApiError, rid: str, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` in the envelope, closing the
    connection; without the body when ``head_only`` (the answer to a HEAD)."""
    body = ujson.dumps(error.body(), ensure_ascii=False, escape_forward_slashes=False).encode()
    reason = http.HTTPStatus(error.status).phrase
    head = [f"HTTP/1.1 {error.status} {reason}", "Content-Type: application/json; charset=UTF-8",
            f"Content-Length: {len(body)}", "Cache-Control: no-store", f"X-Request-Id: {rid}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in error.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


async def close_gracefully(stream: IOStream, answer: bytes, expected: int | None) -> None:
    """Writes ``answer``, then reads and drops what the client still sends (at most
    ``expected`` bytes, LINGER_BYTES, LINGER_SECONDS, or until it is idle for
    LINGER_IDLE_SECONDS), then closes: a client that sends its whole body before
    reading reads the answer, not a reset."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    budget = min(LINGER_BYTES, expected if expected is not None else LINGER_BYTES)
    try:
        await stream.write(answer)
        while budget > 0:
            wait = min(LINGER_IDLE_SECONDS, deadline - loop.time())
            if wait <= 0:
                break
            chunk = await within(stream.read_bytes(min(_READ_CHUNK, budget), partial=True), wait)
            budget -= len(chunk)
    except (StreamClosedError, TimeoutError, OSError):
        pass
    finally:
        stream.close()


def without_values(message: str) -> str:
    """Tornado's message about a request it cannot parse, without what it quotes
    (``Invalid header value 'Bearer eyJ...'``): it is logged, and a header's
    value may be a token or an API key."""
    return re.split("[\"']", message, maxsplit=1)[0].rstrip(": ") or "malformed"


def content_length(headers: httputil.HTTPHeaders) -> int | None:
    """The declared body length; ApiError(invalid_request) for one Tornado would refuse."""
    values = {v.strip() for v in headers.get_list("Content-Length") for v in v.split(",")}
    if not values:
        return None
    if "Transfer-Encoding" in headers:
        raise ApiError("invalid_request", "a request may not carry both Content-Length and Transfer-Encoding")
    if len(values) != 1:
        raise ApiError("invalid_request", "Content-Length values differ")
    value = values.pop()
    if not _DIGITS.fullmatch(value):
        raise ApiError("invalid_request", "Content-Length must be a decimal number of bytes")
    return int(value)


def is_chunked(headers: httputil.HTTPHeaders) -> bool:
    """True for ``Transfer-Encoding: chunked``; ApiError(invalid_request) for any other."""
    if "Transfer-Encoding" not in headers:
        return False
    if headers["Transfer-Encoding"].strip().lower() != "chunked":
        raise ApiError("invalid_request", "the only Transfer-Encoding accepted is chunked")
    return True


class Edge(httputil.HTTPMessageDelegate):
    """Wraps one request's delegate: refuses in the envelope what Tornado would
    refuse bare, and bodies over the route's limit; passes the rest through."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, connection: HTTP1Connection,
                 body_limit: Callable[[str], tuple[int, bool]],
                 on_refused: Callable[[str, str, ApiError], None], upgrades: Mapping[str, Upgrade] | None = None
                 ) -> None:
        self.inner = inner  # the application's delegate (routing, then the handler)
        self.upgrades = upgrades or {}  # paths answered here instead of by a handler: path -> its upgrade
        self.connection = connection  # the request's HTTP/1 connection
        self.body_limit = body_limit  # a path's largest body, and whether its handler judges a streamed body itself
        self.on_refused = on_refused  # logs and counts a refusal: (method, path, error)
        self.malformed: str | None = None  # why Tornado could not parse the request head, if it could not
        self.start_line = httputil.RequestStartLine("", "", "")  # the request's method, path and version
        self.request_id = ""  # the X-Request-Id of the answer, if the edge answers
        self.limit = 0  # the largest body this request may send
        self.count_body = False  # whether the edge counts a chunked body against the limit
        self.chunked = False  # whether the body is chunked: broken framing is answered in the envelope
        self.received = 0  # body bytes read so far
        self.refused = False  # answered by the edge: the rest of the body is dropped
        self.answer_finished = False  # the edge's answer is finished on Tornado's connection
        self.upgrading = False  # the request is an upgrade's: the application's delegate never sees it
        self._watch(connection)

    def _watch(self, connection: HTTP1Connection) -> None:
        """Tornado writes a bare 400 for what it cannot parse, out of any delegate's
        reach: a request head (``HTTP1Connection._parse_headers``) and a chunked body's
        framing (``_read_body``). These two, and ``_response_start_line`` (whether an
        answer was begun), are the only places this module reaches into Tornado. A head
        that fails is remembered and replaced by a synthetic one, which
        ``headers_received`` refuses in the envelope; a chunked body whose framing
        breaks before anything was answered is answered in the envelope, whether the
        edge counts it or its handler streams it (an upload)."""
        parse, read_body = connection._parse_headers, connection._read_body

        def parse_or_remember(data: bytes) -> tuple[str, httputil.HTTPHeaders]:
            try:
                start_line, headers = parse(data)
                httputil.parse_request_start_line(start_line)
                return start_line, headers
            except httputil.HTTPInputError as exc:
                self.malformed = without_values(str(exc))
                return _SYNTHETIC, httputil.HTTPHeaders({"Host": "malformed"})

        def read_or_answer(code: int, headers: httputil.HTTPHeaders,
                           delegate: httputil.HTTPMessageDelegate) -> Awaitable[None] | None:
            self._unwatch("_read_body")  # called once, right after headers_received
            reading = read_body(code, headers, delegate)
            return self._answer_bad_framing(reading) if reading is not None and self.chunked else reading

        connection._parse_headers = parse_or_remember  # type: ignore[method-assign]
        connection._read_body = read_or_answer  # type: ignore[method-assign]

    def _unwatch(self, *names: str) -> None:
        """Gives the connection back Tornado's own methods once they have run: the
        wrappers refer to this edge, which refers to the connection, a cycle only the
        garbage collector would free (with the connection's stream, task and
        coroutines: a reconnect storm made thousands a second)."""
        for name in names:
            self.connection.__dict__.pop(name, None)

    async def _answer_bad_framing(self, reading: Awaitable[None]) -> None:
        """Reads a chunked body; if its framing breaks (or a counted one runs past
        the limit plus LINGER_BYTES), answers invalid_request unless the edge or the
        handler already answered (the handler is told its connection closed: an
        upload drops what it stored), and closes the connection once the answer is
        written."""
        try:
            await reading
        except httputil.HTTPInputError as exc:
            if not self.refused and self.connection._response_start_line is None:  # nothing answered yet: a
                # handler streaming its body (an upload) answers only once the body has ended
                self.refused = True
                error = ApiError("invalid_request", f"malformed chunked body: {exc}")
                self.on_refused(self.start_line.method, self.start_line.path, error)
                self.inner.on_connection_close()
                self._answer_in_place(error)
            self._finish_answer()  # the body was not read to its end: Tornado closes once this is written

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self._unwatch("_parse_headers")  # the head is parsed
        self.start_line = start_line
        self.request_id = request_id(headers)
        try:
            if self.malformed is not None:
                raise ApiError("invalid_request", f"malformed HTTP request: {self.malformed}")
            self.limit, handler_streams = self.body_limit(start_line.path.partition("?")[0])
            length = content_length(headers)
            chunked = is_chunked(headers)
            if length is not None and length > self.limit:
                raise ApiError("payload_too_large", f"this endpoint takes bodies of at most {self.limit} bytes")
            self.count_body = chunked and not handler_streams
            self.chunked = chunked
            # Tornado's own check would answer a bare 400: the edge counts instead,
            # and lets a chunked body run past the limit only to drop the rest.
            self.connection.set_max_body_size(self.limit + LINGER_BYTES if chunked else self.limit)
            upgrade = self.upgrades.get(start_line.path.partition("?")[0])
            if upgrade is not None:  # it answers, or takes the stream, before its awaitable is done
                self.upgrading = True
                self._unwatch("_read_body")  # no body is read: the stream is answered or taken
                return upgrade(self, start_line, headers)
            return self.inner.headers_received(start_line, headers)
        except ApiError as error:
            self._refuse_now(headers, error)
        except httputil.HTTPInputError as exc:  # a bad Host header, a bad query string
            reason = without_values(str(exc))
            self._refuse_now(headers, ApiError("invalid_request", f"malformed HTTP request: {reason}"))
        return None

    def _refuse_now(self, headers: httputil.HTTPHeaders, error: ApiError) -> None:
        self.on_refused(self.start_line.method, self.start_line.path, error)
        self.answer(headers, error)

    def answer(self, headers: httputil.HTTPHeaders, error: ApiError, stream: IOStream | None = None) -> None:
        """Answers ``error`` before any of the body is read: the stream is taken from
        Tornado (unless given, taken already), the answer written, and the connection
        closed gracefully."""
        self.refused = True
        self._unwatch("_read_body")  # the stream is taken: no body is read through the connection
        if stream is None:
            stream = self.connection.detach()
        expected = None if self.malformed else _length_or_none(headers)
        if headers.get("Expect", "").lower() == "100-continue":
            expected = 0  # the client waits for a go-ahead it will not get: nothing to drop
        answer = answer_bytes(error, self.request_id, self.start_line.method == "HEAD")
        task = asyncio.ensure_future(close_gracefully(stream, answer, expected))
        _REFUSING.add(task)
        task.add_done_callback(_REFUSING.discard)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.refused:
            return None
        self.received += len(chunk)
        if self.count_body and self.received > self.limit:
            self.refused = True
            error = ApiError("payload_too_large", f"this endpoint takes bodies of at most {self.limit} bytes")
            self.on_refused(self.start_line.method, self.start_line.path, error)
            self.inner.on_connection_close()  # the body the handler would have read is gone
            self._answer_in_place(error)
            return None
        return self.inner.data_received(chunk)

    def _answer_in_place(self, error: ApiError) -> None:
        """Writes the answer at once on Tornado's connection; Tornado goes on reading
        (the edge drops it) up to the limit plus LINGER_BYTES, and the answer is
        finished when the body ends or after LINGER_SECONDS."""
        body = ujson.dumps(error.body(), ensure_ascii=False, escape_forward_slashes=False).encode()
        headers = httputil.HTTPHeaders({"Content-Type": "application/json; charset=UTF-8",
                                        "Content-Length": str(len(body)), "Cache-Control": "no-store",
                                        "X-Request-Id": self.request_id})
        start = httputil.ResponseStartLine("HTTP/1.1", error.status, http.HTTPStatus(error.status).phrase)
        self.connection.write_headers(start, headers, body)
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self._finish_answer)

    def _finish_answer(self) -> None:
        if self.answer_finished:
            return
        self.answer_finished = True
        try:
            self.connection.finish()
        except (StreamClosedError, OSError):
            pass

    def finish(self) -> None:
        if self.upgrading and not self.refused:
            return  # the upgrade took the stream
        if self.refused:
            self._finish_answer()
            return
        self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused and not self.upgrading:
            self.inner.on_connection_close()


def _length_or_none(headers: httputil.HTTPHeaders) -> int | None:
    try:
        return content_length(headers)
    except ApiError:
        return None
