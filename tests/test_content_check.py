"""CONTENT_CHECK=on: room messages' text goes through WeChat's msgSecCheck (v2)
with a cached stable_token (tested against the fake WeChat API)."""

from __future__ import annotations

import pytest


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {"CONTENT_CHECK": "on"}


async def _setup(api, connect, wechat_login):  # type: ignore[no-untyped-def]
    tokens = await wechat_login()
    _, room, _ = await api("POST", "/api/v1/rooms", {"name": "checked"}, token=tokens["access_token"])
    client = await connect(tokens["access_token"])
    return client, f"room:{room['id']}"


@pytest.fixture
def wechat_login(api):
    async def sign_in() -> dict:
        status, tokens, _ = await api("POST", "/api/v1/auth/wechat", {"code": "ok-checked"})
        assert status == 200
        return tokens

    return sign_in


@pytest.mark.gen_test
async def test_pass_review_and_risky(api, connect, wechat, wechat_login) -> None:
    """pass and review are published; risky is refused with content_rejected and stored nowhere."""
    client, channel = await _setup(api, connect, wechat_login)
    ok = await client.call("publish", channel=channel, data={"text": "hello there", "meta": {"caption": "nice"}})
    assert ok["result"]["seq"] == 1
    assert "review" not in str(await client.call("publish", channel=channel, data={"text": "please review"}))
    refused = await client.call("publish", channel=channel, data={"text": "something risky"})
    assert refused["error"]["code"] == "content_rejected"
    checked = wechat.checked
    assert checked[0] == {"content": "hello there\nnice", "version": 2, "scene": 2, "openid": "openid-checked"}
    history = (await client.call("history", channel=channel))["result"]["messages"]
    assert [m["seq"] for m in history] == [1, 2]
    assert wechat.token_count == 1  # one stable_token for all three checks


@pytest.mark.gen_test
async def test_unreachable_check_refuses_the_message(api, connect, wechat, wechat_login) -> None:
    """When WeChat's check fails, the message is refused with content_check_unavailable, not published unchecked."""
    client, channel = await _setup(api, connect, wechat_login)
    refused = await client.call("publish", channel=channel, data={"text": "wechat-down now"})
    assert refused["error"]["code"] == "content_check_unavailable"
    wechat.stop()
    wechat.server = None
    refused = await client.call("publish", channel=channel, data={"text": "anything"})
    assert refused["error"]["code"] == "content_check_unavailable"
    assert (await client.call("history", channel=channel))["result"]["messages"] == []


@pytest.mark.gen_test
async def test_an_invalid_token_is_fetched_again_once(api, connect, wechat, wechat_login) -> None:
    """WeChat answering 40001 (invalid token) makes the server fetch a new token and retry."""
    client, channel = await _setup(api, connect, wechat_login)
    assert "result" in await client.call("publish", channel=channel, data={"text": "first"})
    wechat.reject_tokens = 1
    assert "result" in await client.call("publish", channel=channel, data={"text": "second"})
    assert wechat.token_count == 2


@pytest.mark.gen_test
async def test_feeds_and_the_server_api_are_not_checked(server_api, wechat) -> None:
    """Only room messages from users are checked: the server API's messages are not."""
    status, _ = await server_api("POST", "/api/v1/server/publish", {"channel": "feed:x", "data": {"t": "risky"}})
    assert status == 200 and wechat.checked == []
