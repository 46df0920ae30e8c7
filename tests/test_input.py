"""Input the server cannot store or serve is refused where it enters, naming
its path, through the real server: WebSocket frames, server API bodies,
records, query parameters, channel names and tokens."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.test_uploads import PNG, wx_upload_body

# (the data as JSON text, the path the refusal names); each was stored, served
# back as non-JSON, answered `internal` or dropped the socket before.
BAD_DATA = [
    ('{"n": 9223372036854775808}', "/n"),
    ('{"n": -9223372036854775809}', "/n"),
    ('{"n": [1, 123456789012345678901234567890]}', "/n/1"),
    ('{"x": NaN}', "/x"),
    ('{"x": {"y": Infinity}}', "/x/y"),
    ('{"x": -Infinity}', "/x"),
    ('{"x": 1e400}', "/x"),
    ('{"a\\u0000b": 1}', "/a\x00b"),
    ('{"t": "\\ud800"}', "/t"),
    ('{"t": ["ok", "\\udc00 and text"]}', "/t/1"),
    ('{"\\ud800": 1}', "/\ufffd"),
    ('{"a": ' * 32 + "{}" + "}" * 32, "/a" * 32),  # 33 levels
    ('{"a": ' * 1000 + "1" + "}" * 1000, "/a" * 32),
    ("[" * 1000 + "]" * 1000, None),  # not an object: refused either way
]
DEEPEST = '{"a": ' * 31 + "{}" + "}" * 31  # 32 levels: the most data may nest
GOOD = '{"max": 9223372036854775807, "min": -9223372036854775808, "big": 1.5e308, "tiny": 5e-324, "z": -0.0}'


def _strict(text: str | bytes) -> Any:
    """JSON as JSON.parse reads it: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


async def _room(api, token: str) -> str:
    status, room, _ = await api("POST", "/api/v1/rooms", {"name": "lobby"}, token=token)
    assert status == 201, room
    return f"room:{room['id']}"


@pytest.mark.gen_test(timeout=30)
async def test_websocket_publish_refuses_what_cannot_be_stored(api, login, connect) -> None:
    """Each unstorable data is invalid_request naming /data/...; the socket goes on, nothing is stored,
    and what is accepted (int64 and double extremes, 32 levels) is served back as strict JSON."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    client = await connect(alice["access_token"])
    for index, (data, path) in enumerate(BAD_DATA):
        await client.send_raw(f'{{"id": {index + 1}, "op": "publish", "channel": "{channel}", "data": {data}}}')
        reply = await client.reply(index + 1)
        assert reply["error"]["code"] == "invalid_request", (data[:40], reply)
        if path is not None:
            assert reply["error"]["message"].startswith(f"/data{path}:"), reply
    for index, data in enumerate((GOOD, DEEPEST)):
        await client.send_raw(f'{{"id": {100 + index}, "op": "publish", "channel": "{channel}", "data": {data}}}')
        assert (await client.reply(100 + index))["result"]["seq"] == index + 1
    _, history, _ = await api("GET", f"/api/v1/channels/{channel}/messages", token=alice["access_token"])
    assert [m["seq"] for m in history["items"]] == [1, 2] and history["items"][0]["data"] == _strict(GOOD)
    replay = await client.call("history", channel=channel)
    assert replay["result"]["messages"][1]["data"] == _strict(DEEPEST)


@pytest.mark.gen_test(timeout=30)
async def test_websocket_refuses_lone_surrogates_in_cid_and_token(api, login, connect) -> None:
    """A lone surrogate in cid, token or channel is invalid_request with the command's id; NUL in a
    token is unauthorized; the socket stays open."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    client = await connect(alice["access_token"])
    frames = [
        f'{{"id": 1, "op": "publish", "channel": "{channel}", "data": {{}}, "cid": "c-\\ud800"}}',
        '{"id": 2, "op": "refresh", "token": "eyJh.eyJz.\\udfff"}',
        '{"id": 3, "op": "subscribe", "channel": "room:\\ud800"}',
    ]
    for index, frame in enumerate(frames, 1):
        await client.send_raw(frame)
        assert (await client.reply(index))["error"]["code"] == "invalid_request"
    for index, token in enumerate(("a.b.c\u0000", "a.b\u0000.c", "\u0000"), 4):
        await client.send_raw(json.dumps({"id": index, "op": "refresh", "token": token}))
        assert (await client.reply(index))["error"]["code"] == "unauthorized"
    assert (await client.call("publish", channel=channel, data={"ok": True}, cid="c-1"))["result"]["seq"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_server_api_refuses_what_cannot_be_stored(server_api, api) -> None:
    """Over the server API each unstorable data is 422 validation_failed naming /data/..., in publish
    and broadcast alike; nothing reaches the channel."""
    for data, path in BAD_DATA:
        for route, envelope in (("publish", '"channel": "feed:news"'), ("broadcast", '"channels": ["feed:news"]')):
            body = f'{{{envelope}, "data": {data}}}'.encode()
            status, answer, _ = await api("POST", f"/api/v1/server/{route}", raw=body,
                                          headers={"X-API-Key": "server-key-1"})
            assert (status, answer["error"]["code"]) == (422, "validation_failed"), (route, data[:40], answer)
            if path is not None:
                assert answer["error"]["details"][0]["path"] == f"/data{path}", answer
    status, answer, _ = await api("POST", "/api/v1/server/publish", headers={"X-API-Key": "server-key-1"},
                                  raw=b'{"channel": "feed:news", "data": {"q": {"$where": "1"}}}')
    assert (status, answer["error"]["code"], answer["error"]["details"][0]["path"]) == (400, "invalid_request",
                                                                                       "/data/q")
    status, answer = await server_api("POST", "/api/v1/server/publish", {"channel": "feed:news", "data": {"ok": 1}})
    assert (status, answer["seq"]) == (200, 1)


@pytest.fixture
def extra_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A records kind that takes any object, and one whose pattern ends with $."""
    directory = tmp_path_factory.mktemp("schemas")
    (directory / "any.json").write_text(json.dumps({"type": "object"}))
    (directory / "device.json").write_text(json.dumps(
        {"type": "object", "properties": {"device": {"type": "string", "pattern": "^[a-z0-9]{1,8}$"}}}))
    return {"SCHEMAS_DIR": str(directory)}


@pytest.mark.gen_test(timeout=30)
async def test_records_refuse_what_cannot_be_stored(api, login, client, environ) -> None:
    """A record, alone or in a batch, that breaks the value rules is 422 naming the path; 32 levels are
    accepted alone and in a batch, 33 in neither; nothing unstorable is stored."""
    token = (await login("alice"))["access_token"]
    for data, path in BAD_DATA:
        if path is None:
            continue
        for body, prefix in ((f'{{"v": {data}}}', "/v"), (f'{{"items": [{{}}, {{"v": {data}}}]}}', "/items/1/v")):
            status, answer, _ = await api("POST", "/api/v1/records/any", raw=body.encode(), token=token)
            assert (status, answer["error"]["code"]) == (422, "validation_failed"), (data[:40], answer)
            deep = path.startswith("/a/a")  # the record itself is level 1: under /v, 31 levels are left
            assert answer["error"]["details"][0]["path"] == prefix + ("/a" * 31 if deep else path), answer
    deepest, deeper = DEEPEST, f'{{"a": {DEEPEST}}}'
    for record in (deepest, f'{{"items": [{deepest}, {deepest}]}}'):
        status, answer, _ = await api("POST", "/api/v1/records/any", raw=record.encode(), token=token)
        assert status == 201, answer
    for record in (deeper, f'{{"items": [{deepest}, {deeper}]}}'):
        status, answer, _ = await api("POST", "/api/v1/records/any", raw=record.encode(), token=token)
        assert (status, answer["error"]["code"]) == (422, "validation_failed"), answer
    assert client[environ["MONGO_DB"]].records.count_documents({}) == 3
    status, page, _ = await api("GET", "/api/v1/records/any", token=token)
    assert status == 200 and len(page["items"]) == 3


@pytest.mark.gen_test(timeout=30)
async def test_a_pattern_ending_in_dollar_refuses_a_final_newline(api, login) -> None:
    """JSON Schema's $ ends the text (ECMA-262): "d1\\n" does not match ^[a-z0-9]{1,8}$, in records and
    in the server's own bodies; nor is a WeChat code with a final newline one."""
    token = (await login("alice"))["access_token"]
    assert (await api("POST", "/api/v1/records/device", {"device": "d1"}, token=token))[0] == 201
    status, answer, _ = await api("POST", "/api/v1/records/device", {"device": "d1\n"}, token=token)
    assert (status, answer["error"]["details"][0]["path"]) == (422, "/device")
    status, answer, _ = await api("POST", "/api/v1/auth/dev", {"name": "alice\n"})
    assert (status, answer["error"]["code"]) == (422, "validation_failed")
    status, answer, _ = await api("POST", "/api/v1/auth/wechat", {"code": "081aBc\n"})
    assert (status, answer["error"]["code"]) == (400, "invalid_request")  # never sent on to WeChat


@pytest.mark.gen_test(timeout=30)
async def test_http_bodies_with_lone_surrogates_are_refused(api, login) -> None:
    """A room name or refresh token with a lone surrogate is 422 naming it, not a 500."""
    token = (await login("alice"))["access_token"]
    status, answer, _ = await api("POST", "/api/v1/rooms", raw=b'{"name": "lobby \\ud800"}', token=token)
    assert (status, answer["error"]["details"][0]["path"]) == (422, "/name")
    status, answer, _ = await api("POST", "/api/v1/auth/refresh", raw=b'{"refresh_token": "\\udfff"}')
    assert (status, answer["error"]["details"][0]["path"]) == (422, "/refresh_token")
    status, answer, _ = await api("POST", "/api/v1/rooms", raw=b'{"name": "lobby \xed\xa0\x80"}', token=token)
    assert status == 422  # a surrogate encoded in UTF-8 bytes is the same lone surrogate


@pytest.mark.gen_test(timeout=30)
async def test_numeric_parameters_are_ascii_digits_within_bounds(api, login, server_api, http_client,
                                                                 base_url: str) -> None:
    """limit=² (a Unicode digit), before/after beyond 2^53-1, a Range of Unicode digits: 400 or 416,
    never 500; within bounds they work."""
    token = (await login("alice"))["access_token"]
    await server_api("POST", "/api/v1/server/publish", {"channel": "feed:news", "data": {"n": 1}})
    history = "/api/v1/channels/feed:news/messages"
    for query in ("limit=%C2%B2", "limit=%D9%A3", "limit=101", "limit=0", "limit=-1", "limit=1e1",
                  "before=%C2%B2", "before=99999999999999999999999999", "after=9223372036854775808",
                  "after=9007199254740992", "before=" + "9" * 5000):
        status, answer, _ = await api("GET", f"{history}?{query}", token=token)
        assert (status, answer["error"]["code"]) == (400, "invalid_request"), (query, answer)
    for query in ("limit=%C2%B2", "limit=%D9%A3", "limit=101", "limit=" + "1" * 5000):
        status, answer, _ = await api("GET", f"/api/v1/records/feedback?{query}", token=token)
        assert (status, answer["error"]["code"]) == (400, "invalid_request"), (query, answer)
    status, answer, _ = await api("GET", f"{history}?after=9007199254740991&limit=0100", token=token)
    assert (status, answer) == (200, {"items": [], "has_more": False})
    body, headers = wx_upload_body(PNG + b"payload")
    uploaded = await http_client.fetch(base_url + "/api/v1/files", method="POST", body=body,
                                       headers={**headers, "Authorization": f"Bearer {token}"})
    url = base_url + json.loads(uploaded.body)["url"]
    for header in ("bytes=\u00b2-", "bytes=0-\u00b9", "bytes=" + "9" * 40 + "-"):
        response = await http_client.fetch(url, headers={"Authorization": f"Bearer {token}", "Range": header},
                                           raise_error=False)
        assert response.code == 416, (header, response.code)
    response = await http_client.fetch(url, headers={"Authorization": f"Bearer {token}", "Range": "bytes=0-3"})
    assert (response.code, response.body) == (206, PNG[:4])


@pytest.mark.gen_test(timeout=30)
async def test_a_channel_name_with_a_final_newline_is_refused(api, login, connect, server_api, client,
                                                              environ) -> None:
    """feed:news\\n is no channel: refused over HTTP history, the server API and WebSocket, and no
    second channel is created beside feed:news."""
    token = (await login("alice"))["access_token"]
    status, answer, _ = await api("GET", "/api/v1/channels/feed:news%0A/messages", token=token)
    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    status, answer = await server_api("POST", "/api/v1/server/publish", {"channel": "feed:news\n", "data": {}})
    assert (status, answer["error"]["code"]) == (422, "validation_failed")
    status, answer = await server_api("POST", "/api/v1/server/broadcast", {"channels": ["feed:news\n"], "data": {}})
    assert (status, answer["error"]["code"]) == (422, "validation_failed")
    status, answer, _ = await api("GET", "/api/v1/server/presence?channel=feed:news%0A",
                                  headers={"X-API-Key": "server-key-1"})
    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    socket = await connect(token)
    for op in ("subscribe", "history", "unsubscribe"):
        assert (await socket.call(op, channel="feed:news\n"))["error"]["code"] == "invalid_request"
    assert client[environ["MONGO_DB"]].channels.count_documents({}) == 0
    assert client[environ["MONGO_DB"]].messages.count_documents({}) == 0
