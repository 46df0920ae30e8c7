"""Review finding: a request whose Authorization (or X-API-Key) header holds a
character HTTP does not allow was refused with Tornado's message, which quotes
the whole header value, and that message went into the log: the token with it."""

from __future__ import annotations

import logging

import pytest

from tests.test_http_edges import assert_envelope, exchange

SECRET = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyZXZpZXcifQ.c2VjcmV0LXNpZ25hdHVyZS1yZXZpZXc"


@pytest.mark.parametrize("header", [f"Authorization: Bearer {SECRET}\x01", f"X-API-Key: {SECRET}\x7f"])
def test_a_malformed_header_value_never_logs_it(live_server, caplog: pytest.LogCaptureFixture, header: str) -> None:
    """The refusal is 400 invalid_request, and no log line holds the header's value."""
    head = f"GET /api/v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n\r\n".encode("latin-1")
    with caplog.at_level(logging.INFO):
        assert_envelope(exchange(live_server.port, head), 400, "invalid_request")
    logged = [f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records]
    assert logged, "the refusal is logged"
    assert not [line for line in logged if SECRET in line], logged
