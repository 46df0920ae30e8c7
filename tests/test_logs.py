"""Logs are JSON lines and never hold tokens, secrets or session_key."""

from __future__ import annotations

import errno
import io
import json
import logging
import math
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.logs import JsonFormatter, RateLimit, configure, redact
from tests.fake_wechat import SESSION_KEY


def test_redaction_of_fields_and_query_strings() -> None:
    """Secret-looking fields and query-string tokens are replaced; other fields stay."""
    assert redact({"access_token": "a", "nested": {"session_key": "s", "api_key": "k"}, "user": "u1"}) == {
        "access_token": "[redacted]", "nested": {"session_key": "[redacted]", "api_key": "[redacted]"}, "user": "u1"}
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "GET /ws?token=eyJabc&x=1", None, None)
    record.fields = {"refresh_token": "r", "status": 200}
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "GET /ws?token=[redacted]&x=1"
    assert line["refresh_token"] == "[redacted]" and line["status"] == 200 and line["level"] == "info"


@pytest.mark.gen_test
async def test_no_secret_reaches_the_logs_in_a_whole_session(api, caplog, wechat) -> None:
    """Across WeChat sign-in, refresh, a failed retry, /me and logout, no token or session_key is logged."""
    caplog.set_level(logging.DEBUG)
    status, tokens, _ = await api("POST", "/api/v1/auth/wechat", {"code": "busy-once-eve"})
    assert status == 200
    _, refreshed, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    await api("GET", "/api/v1/me?token=" + refreshed["access_token"], token=refreshed["access_token"])
    await api("POST", "/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})  # reuse
    await api("POST", "/api/v1/auth/logout", {"refresh_token": refreshed["refresh_token"]})
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "request" in text and "wechat call failed" in text  # the logs were captured
    for secret in (tokens["access_token"], tokens["refresh_token"], refreshed["access_token"],
                   refreshed["refresh_token"], SESSION_KEY, wechat.secret, "busy-once-eve"):
        assert secret not in text


@pytest.mark.gen_test
async def test_access_log_uses_forwarded_for_only_behind_proxy(api, caplog, services) -> None:
    """X-Forwarded-For is ignored by default; with BEHIND_PROXY, the proxy's (loopback) last hop is the client."""
    caplog.set_level(logging.INFO, logger="server.access")
    await api("GET", "/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
    assert caplog.records[-1].fields["ip"] == "127.0.0.1"
    object.__setattr__(services.settings, "behind_proxy", True)
    await api("GET", "/healthz", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"})
    assert caplog.records[-1].fields["ip"] == "203.0.113.9"


class _Clock:
    now = 0.0  # seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def configured() -> Iterator[tuple[io.StringIO, RateLimit]]:
    """configure() writing to a buffer; the root logger's handlers and level are put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    limit = configure(stream=stream)
    yield stream, limit
    root.handlers[:] = handlers
    root.setLevel(level)


def _emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


def test_repeated_errors_of_any_logger_are_rate_limited(configured) -> None:
    """2,000 identical errors in an instant from asyncio's, Tornado's and our loggers come out as 20 lines each, then
    one summary line counting the rest; access lines (info) are never held back."""
    stream, limit = configured
    clock = _Clock()
    limit.clock = clock
    for name in ("asyncio", "tornado.application", "server.listener"):
        for _ in range(2_000):
            logging.getLogger(name).error("Exception in callback %s", "handle", exc_info=_emfile())
    for n in range(100):
        logging.getLogger("server.access").info("request", extra={"fields": {"n": n}})
    clock.now = 10.0
    limit.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    for name in ("asyncio", "tornado.application", "server.listener"):
        errors = [line for line in lines if line["logger"] == name]
        assert len(errors) == 21
        assert errors[-1]["event"] == "suppressed similar log lines" and errors[-1]["suppressed"] == 1_980
        assert errors[-1]["like"] == "Exception in callback %s" and errors[-1]["error"] == "OSError"
    assert len([line for line in lines if line["logger"] == "server.access"]) == 100


def test_a_new_interval_lets_lines_through_again_and_kinds_are_apart() -> None:
    """Each kind (logger, level, template, error) has its own allowance, renewed every interval; a pending
    summary is written before the next interval's first line."""
    out: list[logging.LogRecord] = []
    clock = _Clock()
    limit = RateLimit(burst=2, interval=5.0, clock=clock)
    handler = logging.Handler()
    handler.emit = out.append  # type: ignore[method-assign]
    handler.addFilter(limit)
    limit.handler = handler

    def record(msg: str, level: int = logging.WARNING, exc: BaseException | None = None) -> logging.LogRecord:
        return logging.LogRecord("x", level, __file__, 1, msg, None, (type(exc), exc, None) if exc else None)

    for _ in range(5):
        handler.handle(record("a"))
        handler.handle(record("b"))
        handler.handle(record("a", exc=_emfile()))
        handler.handle(record("a", logging.ERROR))
    assert len(out) == 8
    clock.now = 5.0
    handler.handle(record("a"))
    summaries = [r for r in out if r.getMessage() == "suppressed similar log lines"]
    assert len(summaries) == 4 and all(r.fields["suppressed"] == 3 for r in summaries)  # type: ignore[attr-defined]
    assert out[-1].getMessage() == "a"
    limit.flush(math.inf)
    assert len(out) == 13



_EVENTS = st.lists(st.tuples(st.integers(0, 3), st.sampled_from([logging.INFO, logging.WARNING, logging.ERROR]),
                             st.sampled_from([0.0, 0.0, 0.01, 0.5, 2.0, 6.0])), max_size=300)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(events=_EVENTS)
def test_the_rate_limit_loses_no_count_and_holds_its_allowance(events: list[tuple[int, int, float]]) -> None:
    """Whatever the order and timing of lines: info lines all pass; of each kind of warning or error at most
    twice the allowance passes within any one interval; every line held back is counted in a summary."""
    out: list[tuple[float, logging.LogRecord]] = []
    clock = _Clock()
    limit = RateLimit(burst=3, interval=5.0, clock=clock)
    handler = logging.Handler()
    handler.emit = lambda record: out.append((clock.now, record))  # type: ignore[method-assign]
    handler.addFilter(limit)
    limit.handler = handler
    sent: dict[tuple[int, int], int] = {}
    for kind, level, step in events:
        clock.now += step
        handler.handle(logging.LogRecord("x", level, __file__, 1, f"kind {kind}", None, None))
        sent[(kind, level)] = sent.get((kind, level), 0) + 1
    limit.flush(math.inf)
    for (kind, level), count in sent.items():
        passed = [at for at, r in out if r.msg == f"kind {kind}" and r.levelno == level]
        summaries = [getattr(r, "fields", {}) for _, r in out if r.levelno == level]
        held = sum(s["suppressed"] for s in summaries if s.get("like") == f"kind {kind}")
        if level == logging.INFO:
            assert len(passed) == count and held == 0
            continue
        assert len(passed) + held == count
        for start in passed:
            assert sum(1 for at in passed if start <= at < start + 5.0) <= 6


@pytest.mark.gen_test
async def test_the_upgrade_has_a_request_id_and_a_duration(base_url: str, login, caplog) -> None:
    """The 101 answer carries X-Request-Id (the client's when well formed) and no Server header; the access line
    of the upgrade logs that id and how long the upgrade took."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    caplog.set_level(logging.INFO, logger="server.access")
    alice = await login("alice")
    url = base_url.replace("http", "ws", 1) + "/ws"
    socket = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"Bearer {alice['access_token']}",
                                                               "X-Request-Id": "upgrade-id-12345"}))
    headers = socket.headers
    socket.close()
    assert headers["X-Request-Id"] == "upgrade-id-12345" and "Server" not in headers
    line = next(r.fields for r in caplog.records if getattr(r, "fields", {}).get("route") == "/ws")
    assert line["request_id"] == "upgrade-id-12345" and line["status"] == 101 and line["duration_ms"] > 0


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_cached_timestamp_is_the_iso_utc_millisecond_of_the_record(created: float) -> None:
    """The formatter's timestamp (the second's text cached) is the record's UTC time to the millisecond, as
    ``datetime.isoformat`` writes it (at most a millisecond apart where that rounds microseconds up)."""
    import datetime

    record = logging.LogRecord("t", logging.INFO, __file__, 1, "event", None, None)
    record.created = created + 1.5
    formatter = JsonFormatter()
    formatter.format(record)  # another second cached first
    record.created = created
    ts = json.loads(formatter.format(record))["ts"]
    expected = datetime.datetime.fromtimestamp(created, datetime.UTC)
    parsed = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    assert ts.endswith("Z") and len(ts) == 24
    assert abs((parsed - expected).total_seconds()) < 0.001 + 1e-6


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.text(max_size=60))
def test_a_remembered_field_name_is_redacted_as_the_pattern_says(name: str, value: str) -> None:
    """Whether a field is secret is remembered by name: the same answer as searching the pattern each time,
    asked once or twice; and a value with no ``=`` is never changed by the query-string redaction."""
    from server.logs import REDACTED, SECRET_FIELDS, redact_text

    for _ in range(2):
        redacted = redact({name: value})[name]
        if SECRET_FIELDS.search(name):
            assert redacted == REDACTED
        else:
            assert redacted == redact_text(value)
    if "=" not in value:
        assert redact_text(value) == value
