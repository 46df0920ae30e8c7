"""The WebSocket protocol module, without sockets: parsing, checking, encoding."""

from __future__ import annotations

import json

import pytest

from server.errors import ApiError
from server.protocol import (
    encode_error,
    encode_message_push,
    encode_presence_push,
    encode_result,
    parse,
)

MALFORMED = [
    ("", "invalid_json"), ("{", "invalid_json"), ("not json", "invalid_json"), ("{'id': 1}", "invalid_json"),
    ("[1, 2]", "invalid_request"), ("42", "invalid_request"), ('"ping"', "invalid_request"),
    ("null", "invalid_request"),
    ('{"op": "ping"}', "invalid_request"), ('{"id": "1", "op": "ping"}', "invalid_request"),
    ('{"id": -1, "op": "ping"}', "invalid_request"), ('{"id": 1.5, "op": "ping"}', "invalid_request"),
    ('{"id": true, "op": "ping"}', "invalid_request"), ('{"id": 9007199254740993, "op": "ping"}', "invalid_request"),
    ('{"id": 1}', "invalid_request"), ('{"id": 1, "op": 7}', "invalid_request"),
    ('{"id": 1, "op": "fly"}', "invalid_request"), ('{"id": 1, "op": "subscribe"}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "chat:x"}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:"}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:a b"}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:' + "x" * 65 + '"}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": {"$gt": ""}}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:a", "since": -1}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:a", "since": "3"}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:a", "last": 0}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:a", "last": 301}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:a", "since": 1, "last": 2}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a"}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": "text"}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": [1]}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {}, "cid": 5}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {}, "cid": ""}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {}, "cid": "' + "c" * 65 + '"}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {"t": "' + "x" * 16400 + '"}}', "payload_too_large"),
    ('{"id": 1, "op": "history", "channel": "room:a", "limit": 0}', "invalid_request"),
    ('{"id": 1, "op": "history", "channel": "room:a", "limit": 101}', "invalid_request"),
    ('{"id": 1, "op": "history", "channel": "room:a", "before": 0}', "invalid_request"),
    ('{"id": 1, "op": "history", "channel": "room:a", "before": 5, "after": 1}', "invalid_request"),
    ('{"id": 1, "op": "refresh"}', "invalid_request"), ('{"id": 1, "op": "refresh", "token": 1}', "invalid_request"),
    ('{"id": 1, "op": "presence", "channel": 5}', "invalid_request"),
    # Input the server could not store or serve (issue 10): refused where it enters.
    ('{"id": 1, "op": "subscribe", "channel": "feed:news\\n"}', "invalid_request"),
    ('{"id": 1, "op": "subscribe", "channel": "room:a", "since": 9007199254740992}', "invalid_request"),
    ('{"id": 1, "op": "history", "channel": "room:a", "before": 99999999999999999999999}', "invalid_request"),
    ('{"id": 1, "op": "history", "channel": "room:a", "limit": 5.0}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {"n": 18446744073709551616}}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {"x": NaN}}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {"x": -1e400}}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {"k\\u0000": 1}}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {"t": "\\udbff"}}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": {}, "cid": "\\ud800"}', "invalid_request"),
    ('{"id": 1, "op": "publish", "channel": "room:a", "data": ' + '{"a": ' * 40 + "0" + "}" * 41,
     "invalid_request"),
    ('{"id": 1, "op": "refresh", "token": "x.y.\\udc00"}', "invalid_request"),
    ('{"id": 1, "op": "ping", "$where": "1"}', "invalid_request"),
]


@pytest.mark.parametrize("frame, code", MALFORMED)
def test_malformed_frames(frame: str, code: str) -> None:
    """Each malformed frame raises ApiError with the contract's code (and the id when readable)."""
    with pytest.raises(ApiError) as error:
        parse(frame, 300)
    assert error.value.code == code
    payload = None
    try:
        payload = json.loads(frame)
    except ValueError:
        pass
    readable_id = isinstance(payload, dict) and type(payload.get("id")) is int and payload["id"] == 1
    assert error.value.command_id == (1 if readable_id else None)


def test_binary_frames_are_refused() -> None:
    """A binary frame is not a command."""
    with pytest.raises(ApiError):
        parse(b'{"id": 1, "op": "ping"}', 300)


def test_a_refusal_names_the_path_and_the_command() -> None:
    """A value-rule refusal says where the value is, and answers the command by its id."""
    with pytest.raises(ApiError) as error:
        parse('{"id": 4, "op": "publish", "channel": "room:a", "data": {"list": [1, {"x": Infinity}]}}', 300)
    assert error.value.command_id == 4 and error.value.message.startswith("/data/list/1/x: numbers must be finite")
    assert error.value.details == [{"path": "/data/list/1/x", "message": error.value.details[0]["message"]}]


def test_data_of_32_levels_is_accepted_and_int64_extremes_kept() -> None:
    """The bounds are inclusive: 32 levels of data, -2^63 and 2^63-1, the largest double."""
    deepest = '{"a": ' * 31 + "{}" + "}" * 31
    command = parse('{"id": 1, "op": "publish", "channel": "room:a", "data": ' + deepest + "}", 300)
    assert command.args["data"]["a"]["a"] is not None
    extremes = '{"lo": -9223372036854775808, "hi": 9223372036854775807, "max": 1.7976931348623157e308}'
    command = parse('{"id": 1, "op": "publish", "channel": "room:a", "data": ' + extremes + "}", 300)
    assert command.args["data"] == {"lo": -(2**63), "hi": 2**63 - 1, "max": 1.7976931348623157e308}
    assert command.args["channel"].kind == "room" and command.args["channel"].name == "a"


def test_valid_commands() -> None:
    """Valid commands parse into op and checked arguments, defaults filled."""
    command = parse('{"id": 7, "op": "subscribe", "channel": "room:abc", "since": 12}', 300)
    assert (command.id, command.op, command.args) == (7, "subscribe", {"channel": "room:abc", "since": 12,
                                                                       "last": None})
    publish = parse('{"id": 8, "op": "publish", "channel": "room:abc", "data": {"text": "你好"}, "cid": "c-1"}', 300)
    assert publish.args["data"] == {"text": "你好"} and publish.args["cid"] == "c-1"
    assert publish.args["encoded"] == '{"text":"你好"}'.encode()
    assert parse('{"id": 9, "op": "history", "channel": "feed:news"}', 300).args["limit"] == 50


def test_encodings() -> None:
    """Replies, errors and pushes are the contract's JSON shapes; a push is bytes built once."""
    assert json.loads(encode_result(3, {"ts": 1})) == {"id": 3, "result": {"ts": 1}}
    assert json.loads(encode_error(None, "invalid_json", "x")) == {"id": None, "error": {"code": "invalid_json",
                                                                                          "message": "x"}}
    message = {"channel": "room:a", "seq": 1, "id": "0" * 24, "from": "server", "data": {"a": "/"}, "ts": "t"}
    frame = encode_message_push(message)
    assert isinstance(frame, bytes) and json.loads(frame) == {"push": "message", "message": message}
    assert json.loads(encode_presence_push("join", "room:a", "u1")) == {"push": "join", "channel": "room:a",
                                                                        "user": "u1"}
