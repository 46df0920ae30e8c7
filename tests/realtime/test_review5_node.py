"""Review of Node.published with Redis (server/realtime/node.py): this process's
own messages reach its sockets one loop turn later; a publisher that resubscribes
with the seq its ack gave gets each message exactly once."""

from __future__ import annotations

import json

import pytest

from tests.helpers.redis_process import RedisProcess
from tests.ws_client import RawSocket


@pytest.fixture
def extra_env(redis: RedisProcess) -> dict[str, str]:
    return {"REDIS_URL": redis.url}


@pytest.mark.gen_test(timeout=60)
async def test_publish_then_resubscribe_since_its_seq_in_one_write_gets_each_message_once(
        login, api, http_port: int, services) -> None:
    """With Redis, a publish and a resubscribe ``since`` the seq it will get, sent in one write (the
    subscribe runs as soon as the publish is answered), 15 times: each message reaches the publisher once
    (live, as a subscriber: never again in a replay), and every replay is empty; another socket gets them
    all in order."""
    assert not services.realtime.node.delivers_all
    alice, bob = await login("alice"), await login("bob")
    status, room, _ = await api("POST", "/api/v1/rooms", {"name": "own", "public": True},
                                token=alice["access_token"])
    assert status == 201, room
    channel = f"room:{room['id']}"
    watcher = await RawSocket.connect(http_port, bob["access_token"])
    await watcher.send(json.dumps({"id": 1, "op": "subscribe", "channel": channel}).encode())
    assert (await watcher.frame())[0] == 0x1
    raw = await RawSocket.connect(http_port, alice["access_token"])
    seen: list[int] = []
    for k in range(1, 16):
        await raw.send(json.dumps({"id": 2 * k, "op": "publish", "channel": channel, "data": {"k": k}}).encode())
        await raw.send(json.dumps({"id": 2 * k + 1, "op": "subscribe", "channel": channel, "since": k}).encode())
        replies: dict[int, dict] = {}
        while 2 * k + 1 not in replies:
            frame = await raw.frame()
            assert frame is not None and frame[0] == 0x1
            body = json.loads(frame[1])
            if body.get("push") == "message":
                seen.append(body["message"]["seq"])
            elif "push" not in body:
                replies[body["id"]] = body
        assert replies[2 * k].get("result", {}).get("seq") == k, replies
        result = replies[2 * k + 1]["result"]
        assert result["seq"] == k and result["messages"] == [], result
        seen.extend(m["seq"] for m in result["messages"])
    await raw.send(json.dumps({"id": 99, "op": "ping"}).encode())
    while True:  # what was queued before the last reply's ping answer
        body = json.loads((await raw.frame())[1])
        if body.get("id") == 99:
            break
        if body.get("push") == "message":
            seen.append(body["message"]["seq"])
    assert seen == list(range(2, 16))  # the first went before the socket subscribed; since=k excludes it
    watched = []
    while len(watched) < 15:
        frame = await watcher.frame()
        assert frame is not None
        if (body := json.loads(frame[1])).get("push") == "message":
            watched.append(body["message"]["seq"])
    assert watched == list(range(1, 16))
    raw.close()
    watcher.close()
