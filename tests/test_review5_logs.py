"""Review of the faster JsonFormatter (server/logs.py): its cached timestamp and
remembered field names give what the uncached code gave, for every input."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import logs
from server.logs import REDACTED, SECRET_FIELDS, JsonFormatter, redact


def _redacted_as_before(value: Any, name: str = "") -> Any:
    """The redaction before the names were remembered: the patterns searched every time."""
    if name and SECRET_FIELDS.search(name):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redacted_as_before(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted_as_before(v) for v in value]
    if isinstance(value, str):
        return logs._QUERY_SECRETS.sub(lambda m: f"{m.group(1)}={REDACTED}", value)
    return value


_names = st.one_of(st.sampled_from(["token", "Access_Token", "code", "js_code", "x_code", "secretive", "user",
                                    "session_key", "AUTHORIZATION", "apikey", "api_key", "id"]), st.text(max_size=12))
_keys = st.one_of(_names, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
_texts = st.one_of(st.text(max_size=40), st.sampled_from(["a?token=abc&x=1", "code=9 key=v", "Key=1", "k= token=",
                                                          "refresh_token=r\tsecret=s", "x=1"]))
_values = st.recursive(st.one_of(_texts, st.integers(), st.none(), st.binary(max_size=8)),
                       lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)),
                       max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_remembered_names_redact_nested_fields_as_the_patterns_do(fields: dict[Any, Any]) -> None:
    """Nested dicts and lists, keys that are not text, values with ``=``: the redaction with remembered names
    equals searching the patterns each time, asked twice (the second from memory)."""
    expected = _redacted_as_before(fields)
    assert redact(fields) == expected
    assert redact(fields) == expected


def test_past_the_remembered_names_a_secret_name_is_still_redacted() -> None:
    """Once ``MAX_NAMES`` names are remembered, a new secret-looking name is still redacted (searched again)."""
    for n in range(logs.MAX_NAMES + 10):
        redact({f"field_{n}": 1})
    assert len(logs._secret_names) <= logs.MAX_NAMES
    assert redact({"my_new_token_name": "t", "plain_after_the_cap": "p"}) == {
        "my_new_token_name": REDACTED, "plain_after_the_cap": "p"}


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-2_208_988_800, max_value=4_102_444_800, allow_nan=False))
def test_the_timestamp_is_the_records_utc_millisecond_for_any_time(created: float) -> None:
    """For any time, before 1970 included (a clock set back), the timestamp reads as the record's UTC time
    truncated to the millisecond: never a negative millisecond field, never a second off."""
    formatter = JsonFormatter()
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "event", None, None)
    record.created = created
    ts = json.loads(formatter.format(record))["ts"]
    assert len(ts) == 24 and ts.endswith("Z"), ts
    parsed = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    expected = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=created)
    assert datetime.timedelta(0) <= expected - parsed < datetime.timedelta(milliseconds=1, microseconds=1), ts


_SECRET_PARAMS = ["token", "access_token", "refresh_token", "js_code", "code", "secret", "key"]


@st.composite
def _sent_names(draw: st.DrawFn) -> tuple[str, str]:
    """A secret query parameter's name as a client may send it: any letter's case changed, any character
    percent-encoded (upper or lower hex): the server decodes names, so each is the same parameter."""
    name = draw(st.sampled_from(_SECRET_PARAMS))
    sent = ""
    for char in name:
        char = draw(st.sampled_from([char, char.upper()]))
        if draw(st.booleans()):
            code = f"{ord(char):02x}"
            char = "%" + draw(st.sampled_from([code, code.upper()]))
        sent += char
    return name, sent


@settings(max_examples=300, deadline=None)
@given(_sent_names(), st.from_regex(r"[A-Za-z0-9._-]{8,40}", fullmatch=True),
       st.sampled_from(["/ws?", "/ws?x=1&", "GET /api/v1/auth?a=b&"]))
def test_a_secret_parameter_is_redacted_however_its_name_is_encoded(sent: tuple[str, str], value: str,
                                                                    prefix: str) -> None:
    """``?t%6Fken=<jwt>`` is ``?token=<jwt>`` to the server (parse_qs decodes names; Tornado authenticates
    with it): its value is redacted however the name's characters are percent-encoded or cased."""
    from urllib.parse import parse_qs, unquote

    name, as_sent = sent
    text = f"{prefix}{as_sent}={value}"
    assert parse_qs(text.split("?", 1)[1])[as_sent_decoded := unquote(as_sent)] == [value]
    assert as_sent_decoded.lower() == name
    assert value not in logs.redact_text(text), text


@pytest.mark.gen_test
async def test_a_token_sent_with_an_encoded_name_authenticates_and_stays_out_of_the_access_log(
        base_url: str, login, caplog) -> None:
    """A socket opened with ``?t%6Fken=<access token>`` is authenticated by it, and the access line of the
    upgrade, as the formatter writes it, does not hold the token."""
    from tornado.websocket import websocket_connect

    caplog.set_level(logging.INFO, logger="server.access")
    alice = await login("alice")
    url = base_url.replace("http", "ws", 1) + "/ws?t%6Fken=" + alice["access_token"]
    socket = await websocket_connect(url)
    socket.close()
    record = next(r for r in caplog.records if getattr(r, "fields", {}).get("route") == "/ws")
    line = JsonFormatter().format(record)
    assert json.loads(line)["status"] == 101
    assert alice["access_token"] not in line, line
