"""Logs are JSON lines and never hold tokens, secrets or session_key."""

from __future__ import annotations

import json
import logging

import pytest

from server.logs import JsonFormatter, redact
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


