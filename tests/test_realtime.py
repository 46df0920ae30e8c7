"""The real-time core over loopback: real servers, real WebSocket clients
(Tornado's websocket_connect, and the independent ``websockets`` library)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time

import pytest
import websockets
from bson import ObjectId
from tornado.httpclient import HTTPClientError

from server.errors import CloseCode
from tests.ws_client import Client


async def _publish(server_api, channel: str, count: int, start: int = 0) -> None:
    """Publishes {"n": start..start+count-1} to a channel through the server API."""
    for n in range(start, start + count):
        status, _ = await server_api("POST", "/api/v1/server/publish", {"channel": channel, "data": {"n": n}})
        assert status == 200


async def _room(api, token: str, name: str = "lobby", public: bool = True) -> str:
    status, room, _ = await api("POST", "/api/v1/rooms", {"name": name, "public": public}, token=token)
    assert status == 201, room
    return f"room:{room['id']}"


@pytest.mark.gen_test
async def test_socket_needs_a_valid_token_before_upgrade(base_url: str, login, http_server) -> None:
    """No token, a bad token: HTTP 401 before any upgrade; header and ?token= both authenticate."""
    for token in ("", "not-a-token"):
        with pytest.raises(HTTPClientError) as error:
            await Client.connect(base_url, token)
        assert error.value.code == 401
    tokens = await login("alice")
    for via in ("header", "query"):
        client = await Client.connect(base_url, tokens["access_token"], via)
        assert "ts" in (await client.call("ping"))["result"]
        client.close()


@pytest.mark.gen_test
async def test_two_users_chat_in_a_public_room(api, login, connect) -> None:
    """Both subscribe; each publish is stored, acknowledged {seq, id, ts} and pushed to both, in order."""
    alice, bob = await login("alice"), await login("bob")
    channel = await _room(api, alice["access_token"])
    a, b = await connect(alice["access_token"]), await connect(bob["access_token"])
    assert (await a.call("subscribe", channel=channel))["result"] == {"channel": channel, "seq": 0,
                                                                      "recovered": True, "messages": []}
    await b.call("subscribe", channel=channel)
    ack = (await b.call("publish", channel=channel, data={"text": "hi alice"}, cid="m1"))["result"]
    assert ack["seq"] == 1 and len(ack["id"]) == 24 and ack["ts"].endswith("Z")
    await a.call("publish", channel=channel, data={"text": "hi bob"})
    for client in (a, b):
        first, second = await client.messages(2)
        assert first == {"channel": channel, "seq": 1, "id": ack["id"], "from": bob["user"]["id"],
                         "data": {"text": "hi alice"}, "ts": ack["ts"], "cid": "m1"}
        assert second["seq"] == 2 and second["from"] == alice["user"]["id"] and "cid" not in second


@pytest.mark.gen_test
async def test_private_room_refuses_strangers(api, login, connect) -> None:
    """A private room refuses a non-member (forbidden) until its owner adds them."""
    alice, carol = await login("alice"), await login("carol")
    channel = await _room(api, alice["access_token"], "secret", public=False)
    c = await connect(carol["access_token"])
    for op, args in (("subscribe", {}), ("publish", {"data": {"t": 1}}), ("history", {})):
        assert (await c.call(op, channel=channel, **args))["error"]["code"] == "forbidden"
    room_id = channel.split(":")[1]
    status, _, _ = await api("POST", f"/api/v1/rooms/{room_id}/members", {"user_id": carol["user"]["id"]},
                             token=carol["access_token"])
    assert status == 404  # a stranger does not even see the room
    status, room, _ = await api("POST", f"/api/v1/rooms/{room_id}/members", {"user_id": carol["user"]["id"]},
                                token=alice["access_token"])
    assert status == 200 and carol["user"]["id"] in room["members"]
    assert "result" in await c.call("subscribe", channel=channel)
    status, _, _ = await api("DELETE", f"/api/v1/rooms/{room_id}/members/{carol['user']['id']}",
                             token=alice["access_token"])
    assert status == 200
    assert (await c.call("publish", channel=channel, data={"t": 2}))["error"]["code"] == "forbidden"


@pytest.mark.gen_test
async def test_feeds_and_user_channels_are_published_by_the_server_only(api, login, connect, server_api) -> None:
    """Anyone subscribes to a feed, nobody publishes to it; user:<id> is its owner's alone."""
    alice, bob = await login("alice"), await login("bob")
    a = await connect(alice["access_token"])
    assert "result" in await a.call("subscribe", channel="feed:news")
    assert (await a.call("publish", channel="feed:news", data={}))["error"]["code"] == "forbidden"
    mine, theirs = f"user:{alice['user']['id']}", f"user:{bob['user']['id']}"
    assert "result" in await a.call("subscribe", channel=mine)
    assert (await a.call("subscribe", channel=theirs))["error"]["code"] == "forbidden"
    assert (await a.call("publish", channel=mine, data={}))["error"]["code"] == "forbidden"
    status, ack = await server_api("POST", "/api/v1/server/publish", {"channel": mine, "data": {"note": "hello"}})
    assert status == 200
    push = await a.push()
    assert push["message"]["from"] == "server" and push["message"]["seq"] == ack["seq"] == 1


@pytest.mark.gen_test(timeout=60)
async def test_feed_reaches_200_subscribers(login, connect, server_api) -> None:
    """A feed published through the server API reaches each of 200 subscribed sockets once, in order."""
    users = [await login(f"fan{i}") for i in range(40)]
    clients = [await connect(u["access_token"]) for u in users for _ in range(5)]
    for client in clients:
        assert "result" in await client.call("subscribe", channel="feed:live")
    for n in range(3):
        status, _ = await server_api("POST", "/api/v1/server/publish", {"channel": "feed:live", "data": {"n": n}})
        assert status == 200
    for client in clients:
        assert [m["data"]["n"] for m in await client.messages(3)] == [0, 1, 2]
    status, stats = await server_api("GET", "/api/v1/server/stats")
    assert stats["connections"] == 200 and stats["users"] == 40 and stats["messages_delivered"] >= 600


@pytest.mark.gen_test
async def test_resubscribe_with_since_gets_exactly_what_was_missed(api, login, connect, server_api) -> None:
    """A client that left at seq 3 and comes back with since=3 gets 4..8 in order, then live ones."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    first = await connect(alice["access_token"])
    await first.call("subscribe", channel=channel)
    for n in range(3):
        await first.call("publish", channel=channel, data={"n": n})
    seen = [m["seq"] for m in await first.messages(3)]
    first.close()
    await _publish(server_api, channel, 5, start=3)
    again = await connect(alice["access_token"])
    result = (await again.call("subscribe", channel=channel, since=seen[-1]))["result"]
    assert result["recovered"] is True and result["seq"] == 8
    assert [m["seq"] for m in result["messages"]] == [4, 5, 6, 7, 8]
    assert [m["data"]["n"] for m in result["messages"]] == [3, 4, 5, 6, 7]
    await _publish(server_api, channel, 1, start=8)
    assert (await again.push())["message"]["seq"] == 9
    last = await connect(alice["access_token"])
    newest = (await last.call("subscribe", channel=channel, last=2))["result"]
    assert [m["seq"] for m in newest["messages"]] == [8, 9]


@pytest.mark.gen_test
async def test_recovery_beyond_the_limit_says_so(api, login, connect, server_api, services) -> None:
    """More missed messages than RECOVERY_MAX: the newest RECOVERY_MAX and recovered: false."""
    object.__setattr__(services.settings, "recovery_max", 5)
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    await _publish(server_api, channel, 12)
    client = await connect(alice["access_token"])
    result = (await client.call("subscribe", channel=channel, since=2))["result"]
    assert result["recovered"] is False and [m["seq"] for m in result["messages"]] == [8, 9, 10, 11, 12]


@pytest.mark.gen_test
async def test_replay_from_memory_matches_the_stored_messages(api, login, connect, server_api, services) -> None:
    """A resubscribe answered from the recent-messages cache is the reply MongoDB would give, byte for byte;
    one reaching back before what the cache holds is read from MongoDB."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    await _publish(server_api, channel, 6)
    messages = services.realtime.messages
    real_after = messages.after
    reads: list[int] = []

    async def counted_after(channel_name: str, since: int, limit: int):  # type: ignore[no-untyped-def]
        reads.append(since)
        return await real_after(channel_name, since, limit)

    messages.after = counted_after  # type: ignore[method-assign]
    try:
        client = await connect(alice["access_token"])
        client.conn.write_message(json.dumps({"id": 1, "op": "subscribe", "channel": channel, "since": 2}))
        from_memory = await client.conn.read_message()
        assert reads == []
        services.realtime.hub.recent.forget(channel)
        await client.call("unsubscribe", channel=channel)
        client.conn.write_message(json.dumps({"id": 1, "op": "subscribe", "channel": channel, "since": 2}))
        from_store = await client.conn.read_message()
        assert reads == [2]
        assert from_memory == from_store
        result = json.loads(from_memory)["result"]
        assert [m["seq"] for m in result["messages"]] == [3, 4, 5, 6] and result["seq"] == 6
        await _publish(server_api, channel, 2, start=6)  # the cache starts again at seq 7: since=2 is not in it
        again = await connect(alice["access_token"])
        result = (await again.call("subscribe", channel=channel, since=2))["result"]
        assert reads == [2, 2] and [m["seq"] for m in result["messages"]] == [3, 4, 5, 6, 7, 8]
        result = (await client.call("subscribe", channel=channel, since=7))["result"]  # from memory again
        assert reads == [2, 2] and [m["seq"] for m in result["messages"]] == [8]
    finally:
        messages.after = real_after  # type: ignore[method-assign]


@pytest.mark.gen_test
@pytest.mark.parametrize("when", ["before the replay is read", "after the replay is read"])
async def test_publish_during_replay_arrives_exactly_once(api, login, connect, server_api, services,
                                                          when: str) -> None:
    """A message published while a resubscribe's replay is being read arrives once: in the replay or as a push."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    await _publish(server_api, channel, 3)
    messages = services.realtime.messages
    real_after = messages.after

    async def racing_after(channel_name: str, since: int, limit: int):  # type: ignore[no-untyped-def]
        if when.startswith("before"):
            await services.realtime.publish(channel_name, "server", {"n": "race"}, None)
            return await real_after(channel_name, since, limit)
        result = await real_after(channel_name, since, limit)
        await services.realtime.publish(channel_name, "server", {"n": "race"}, None)
        return result

    messages.after = racing_after  # type: ignore[method-assign]
    services.realtime.hub.recent.forget(channel)  # the replay is read from MongoDB, not from memory
    client = await connect(alice["access_token"])
    result = (await client.call("subscribe", channel=channel, since=1))["result"]
    messages.after = real_after  # type: ignore[method-assign]
    await server_api("POST", "/api/v1/server/publish", {"channel": channel, "data": {"n": "after"}})
    replayed = [m["seq"] for m in result["messages"]]
    pushed = []
    while not pushed or pushed[-1] != 5:
        pushed.append((await client.push())["message"]["seq"])
    assert sorted(replayed + pushed) == [2, 3, 4, 5]  # each once, nothing lost
    assert replayed == sorted(replayed) and pushed == sorted(pushed)


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_publishers_get_seq_without_gaps(api, login, connect, client, environ) -> None:
    """20 clients publishing 50 messages each into one channel give seq 1..1000, each once."""
    owner = await login("owner")
    channel = await _room(api, owner["access_token"])
    users = [await login(f"writer{i}") for i in range(20)]
    clients = [await connect(u["access_token"]) for u in users]

    async def write(c: Client, index: int) -> list[int]:
        seqs = []
        for n in range(50):
            reply = await c.call("publish", channel=channel, data={"w": index, "n": n}, timeout=30)
            seqs.append(reply["result"]["seq"])
            await asyncio.sleep(0.03)  # within the rate limit (20/s, bursts of 40), however fast the server
        return seqs

    seqs = await asyncio.gather(*(write(c, i) for i, c in enumerate(clients)))
    assert sorted(s for per in seqs for s in per) == list(range(1, 1001))
    stored = [d["seq"] for d in client[environ["MONGO_DB"]].messages.find({"channel": channel}).sort("seq", 1)]
    assert stored == list(range(1, 1001))
    assert client[environ["MONGO_DB"]].channels.find_one({"_id": channel})["seq"] == 1000


@pytest.mark.gen_test
async def test_retried_cid_returns_the_first_answer_and_delivers_once(api, login, connect, client, environ) -> None:
    """The same cid from the same user in the same channel answers the first {seq, id, ts} and delivers nothing."""
    alice, bob = await login("alice"), await login("bob")
    channel = await _room(api, alice["access_token"])
    a, b = await connect(alice["access_token"]), await connect(bob["access_token"])
    await b.call("subscribe", channel=channel)
    first = (await a.call("publish", channel=channel, data={"t": "x"}, cid="c-1"))["result"]
    again = (await a.call("publish", channel=channel, data={"t": "x"}, cid="c-1"))["result"]
    assert again == first
    other = (await b.call("publish", channel=channel, data={"t": "y"}, cid="c-1"))["result"]
    assert other["seq"] == 2  # another user's cid is another message
    assert [m["seq"] for m in await b.messages(2)] == [1, 2]
    assert client[environ["MONGO_DB"]].messages.count_documents({"channel": channel}) == 2


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_does_not_read_is_closed_with_4009(api, login, connect, server_api, services,
                                                              http_port: int) -> None:
    """A socket that never reads is closed (4009) once its buffer passes the bound; others keep receiving."""
    alice = await login("alice")
    reader = await connect(alice["access_token"])
    await reader.call("subscribe", channel="feed:firehose")
    loop = asyncio.get_running_loop()
    sleeper = socket.socket()
    sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.setblocking(False)
    await loop.sock_connect(sleeper, ("127.0.0.1", http_port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sleeper, (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {alice['access_token']}\r\n\r\n").encode())
    assert b"101" in await asyncio.wait_for(loop.sock_recv(sleeper, 1024), 5)
    frame = json.dumps({"id": 1, "op": "subscribe", "channel": "feed:firehose"}).encode()
    mask = os.urandom(4)
    await loop.sock_sendall(sleeper, bytes([0x81, 0x80 | len(frame)]) + mask
                            + bytes(b ^ mask[i % 4] for i, b in enumerate(frame)))
    await asyncio.sleep(0.3)
    blob = "x" * 15000
    for n in range(400):
        await server_api("POST", "/api/v1/server/publish", {"channel": "feed:firehose", "data": {"n": n, "b": blob}})
        if services.realtime.hub.connection_count() == 1:
            break
    assert services.realtime.hub.connection_count() == 1  # the sleeper is gone
    text = services.metrics.render().decode()
    assert 'ws_closed_total{code="4009"} 1.0' in text
    received = [m["data"]["n"] for m in await reader.messages(n + 1, timeout=20)]
    assert received == list(range(n + 1))
    sleeper.close()


@pytest.mark.gen_test(timeout=30)
async def test_token_expiry_closes_with_4001_unless_refreshed(api, login, connect, services) -> None:
    """An expired access token closes its socket with 4001; a refresh before then keeps it open."""
    services.auth.access_ttl = 2
    short = await login("alice")
    services.auth.access_ttl = 7200
    expiring = await connect(short["access_token"])
    refreshed = await connect(short["access_token"])
    fresh = await login("alice")
    result = (await refreshed.call("refresh", token=fresh["access_token"]))["result"]
    assert 7100 < result["expires_in"] <= 7200
    assert await expiring.wait_closed(10) == CloseCode.TOKEN_INVALID
    assert "ts" in (await refreshed.call("ping"))["result"]
    bob = await login("bob")
    assert (await refreshed.call("refresh", token=bob["access_token"]))["error"]["code"] == "forbidden"


@pytest.mark.gen_test
async def test_sixth_socket_closes_the_first_with_4010(login, connect) -> None:
    """WS_MAX_PER_USER (5): a sixth socket of one user closes the oldest with 4010."""
    alice = await login("alice")
    sockets = [await connect(alice["access_token"]) for _ in range(6)]
    assert await sockets[0].wait_closed() == CloseCode.REPLACED
    for other in sockets[1:]:
        assert "result" in await other.call("ping")


@pytest.mark.gen_test
async def test_rate_limit_replies_then_closes_with_4008(login, connect) -> None:
    """Commands past the rate get rate_limited replies (answered at once, maybe before the admitted commands'
    replies); going on closes the socket with 4008."""
    alice = await login("alice")
    client = await connect(alice["access_token"])
    for n in range(200):
        await client.send_raw(json.dumps({"id": n, "op": "ping"}))
    codes = []
    while True:
        message = await client.read()
        if message is None:
            break
        codes.append(message.get("error", {}).get("code", "ok"))
    assert "rate_limited" in codes and codes.count("ok") <= 42  # a burst of 40, and what refilled meanwhile
    assert client.close_code == CloseCode.TOO_MANY_COMMANDS


@pytest.mark.gen_test
async def test_malformed_frames_get_errors_and_the_session_goes_on(login, connect) -> None:
    """Every malformed frame gets one error reply with the contract's code; the session keeps working."""
    from tests.test_protocol import MALFORMED

    alice = await login("alice")
    client = await connect(alice["access_token"])
    for index, (frame, code) in enumerate(MALFORMED):
        if index % 30 == 29:
            await asyncio.sleep(1.6)  # stay under the command rate
        await client.send_raw(frame)
        reply = await client.read()
        assert reply is not None and reply["error"]["code"] == code, frame
    assert "result" in await client.call("ping")


@pytest.mark.gen_test
async def test_oversized_frame_closes_with_1009(login, connect) -> None:
    """A frame over WS_MAX_MESSAGE_BYTES closes the socket with 1009."""
    alice = await login("alice")
    client = await connect(alice["access_token"])
    await client.send_raw(json.dumps({"id": 1, "op": "ping", "pad": "x" * 70000}))
    assert await client.wait_closed() == CloseCode.TOO_BIG


@pytest.mark.gen_test
async def test_presence_counts_a_user_once_with_join_and_leave(api, login, connect) -> None:
    """Presence lists each user once however many sockets; join and leave are pushed to the room."""
    alice, bob = await login("alice"), await login("bob")
    channel = await _room(api, alice["access_token"])
    a = await connect(alice["access_token"])
    await a.call("subscribe", channel=channel)
    b1, b2 = await connect(bob["access_token"]), await connect(bob["access_token"])
    await b1.call("subscribe", channel=channel)
    await b2.call("subscribe", channel=channel)
    join = await a.push(kind="join")
    assert join == {"push": "join", "channel": channel, "user": bob["user"]["id"]}
    presence = (await a.call("presence", channel=channel))["result"]
    assert presence == {"users": sorted([alice["user"]["id"], bob["user"]["id"]]), "count": 2}
    b1.close()
    await asyncio.sleep(0.2)
    assert (await a.call("presence", channel=channel))["result"]["count"] == 2
    await b2.call("unsubscribe", channel=channel)
    leave = await a.push(kind="leave")
    assert leave["user"] == bob["user"]["id"]
    assert (await a.call("presence", channel=channel))["result"]["users"] == [alice["user"]["id"]]


@pytest.mark.gen_test
async def test_history_pages_both_ways(api, login, connect, server_api) -> None:
    """history (WebSocket and HTTP) pages backwards with before and forwards with after, with has_more."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    await _publish(server_api, channel, 25)
    client = await connect(alice["access_token"])
    newest = (await client.call("history", channel=channel, limit=10))["result"]
    assert [m["seq"] for m in newest["messages"]] == list(range(16, 26)) and newest["has_more"]
    older = (await client.call("history", channel=channel, before=16, limit=10))["result"]
    assert [m["seq"] for m in older["messages"]] == list(range(6, 16)) and older["has_more"]
    oldest = (await client.call("history", channel=channel, before=6, limit=10))["result"]
    assert [m["seq"] for m in oldest["messages"]] == list(range(1, 6)) and not oldest["has_more"]
    forward = (await client.call("history", channel=channel, after=20, limit=10))["result"]
    assert [m["seq"] for m in forward["messages"]] == list(range(21, 26)) and not forward["has_more"]
    status, page, _ = await api("GET", f"/api/v1/channels/{channel}/messages?after=0&limit=3",
                                token=alice["access_token"])
    assert status == 200 and [m["seq"] for m in page["items"]] == [1, 2, 3] and page["has_more"]
    status, body, _ = await api("GET", f"/api/v1/channels/{channel}/messages?limit=500", token=alice["access_token"])
    assert (status, body["error"]["code"]) == (400, "invalid_request")


@pytest.mark.gen_test
async def test_direct_room_is_the_same_for_the_pair(api, login) -> None:
    """POST /rooms/direct answers the one private room of a pair, whoever asks, every time."""
    alice, bob = await login("alice"), await login("bob")
    status, first, _ = await api("POST", "/api/v1/rooms/direct", {"user_id": bob["user"]["id"]},
                                 token=alice["access_token"])
    status2, second, _ = await api("POST", "/api/v1/rooms/direct", {"user_id": alice["user"]["id"]},
                                   token=bob["access_token"])
    assert status == status2 == 200 and first == second and first["public"] is False
    assert sorted(first["members"]) == sorted([alice["user"]["id"], bob["user"]["id"]])
    status, mine, _ = await api("GET", "/api/v1/rooms?mine=1", token=alice["access_token"])
    assert [r["id"] for r in mine["items"]] == [first["id"]]
    status, body, _ = await api("POST", "/api/v1/rooms/direct", {"user_id": {"$gt": ""}}, token=alice["access_token"])
    assert (status, body["error"]["code"]) == (400, "invalid_request")


@pytest.mark.gen_test
async def test_server_api(api, login, connect, server_api) -> None:
    """X-API-Key is required; publish with idempotency_key, broadcast, presence, disconnect (4000) and stats."""
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "server-key-1x"}):
        status, body, _ = await api("POST", "/api/v1/server/publish", {"channel": "feed:a", "data": {}},
                                    headers=headers)
        assert (status, body["error"]["code"]) == (401, "unauthorized")
    alice = await login("alice")
    a = await connect(alice["access_token"])
    await a.call("subscribe", channel="feed:a")
    body = {"channel": "feed:a", "data": {"v": 1}, "idempotency_key": "job-7"}
    first, again = (await server_api("POST", "/api/v1/server/publish", body))[1], (
        await server_api("POST", "/api/v1/server/publish", body))[1]
    assert first == again == {"seq": 1, "id": first["id"]}
    status, result = await server_api("POST", "/api/v1/server/broadcast",
                                      {"channels": ["feed:a", "feed:b", "room:nope"], "data": {"v": 2}})
    assert status == 200 and [r.get("seq") for r in result["results"]] == [2, 1, 1]
    assert [m["seq"] for m in await a.messages(2)] == [1, 2]
    status, presence = await server_api("GET", "/api/v1/server/presence?channel=feed:a")
    assert presence == {"users": [alice["user"]["id"]], "count": 1}
    status, body = await server_api("POST", "/api/v1/server/publish", {"channel": "feed:a", "data": [1]})
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    status, body = await server_api("POST", "/api/v1/server/disconnect", {"user_id": alice["user"]["id"]})
    assert body == {"closed": 1}
    assert await a.wait_closed() == CloseCode.DISCONNECTED
    status, stats = await server_api("GET", "/api/v1/server/stats")
    assert set(stats) >= {"connections", "users", "subscriptions", "messages_published", "messages_delivered",
                          "uptime"}
    assert stats["messages_published"] == 4


@pytest.mark.gen_test
async def test_logout_closes_that_sessions_sockets(api, login, connect) -> None:
    """Logout closes the sockets of that session with 4001, not the user's other sessions."""
    phone, tablet = await login("alice"), await login("alice")
    p, t = await connect(phone["access_token"]), await connect(tablet["access_token"])
    await api("POST", "/api/v1/auth/logout", {"refresh_token": phone["refresh_token"]})
    assert await p.wait_closed() == CloseCode.TOKEN_INVALID
    assert "result" in await t.call("ping")


@pytest.mark.gen_test
async def test_shutdown_closes_sockets_with_1001(login, connect, services) -> None:
    """Shutdown closes every socket with 1001 (reconnect with backoff) and refuses new publishes."""
    alice = await login("alice")
    client = await connect(alice["access_token"])
    await services.shutdown()
    assert await client.wait_closed() == CloseCode.GOING_AWAY


@pytest.mark.gen_test
async def test_the_websockets_library_chats_with_a_tornado_client(api, login, connect, base_url: str) -> None:
    """An independent client library (websockets) speaks the protocol with a Tornado client in one room."""
    alice, bob = await login("alice"), await login("bob")
    channel = await _room(api, alice["access_token"])
    a = await connect(alice["access_token"])
    await a.call("subscribe", channel=channel)
    url = base_url.replace("http", "ws", 1) + "/ws"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {bob['access_token']}"}) as ws:
        await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": channel, "since": 0}))
        assert json.loads(await ws.recv())["result"]["channel"] == channel
        await ws.send(json.dumps({"id": 2, "op": "publish", "channel": channel, "data": {"text": "from websockets"}}))
        replies = [json.loads(await ws.recv()) for _ in range(2)]
        assert {r.get("id") for r in replies} == {2, None}
        await a.call("publish", channel=channel, data={"text": "from tornado"})
        push = json.loads(await ws.recv())
        assert push["message"]["data"] == {"text": "from tornado"}
    assert [m["data"]["text"] for m in await a.messages(2)] == ["from websockets", "from tornado"]




@pytest.mark.gen_test(timeout=60)
async def test_two_servers_on_one_database_keep_seq_gapless(environ, services, client) -> None:
    """Two independent servers (their own locks and seq hints, as two processes) publishing into one channel,
    with the same cids racing on both, store seq 1..N once each and each cid once."""
    import settings
    from handlers.app import make_app

    _, other = make_app(settings.load(environ))
    await other.start()
    try:
        async def writer(realtime, tag: str) -> None:  # type: ignore[no-untyped-def]
            for n in range(60):
                cid = f"c{n}" if n % 3 == 0 else None  # every third cid is sent by both servers at once
                await realtime.publish("feed:race", "server", {"by": tag, "n": n}, cid)

        await asyncio.gather(writer(services.realtime, "a"), writer(other.realtime, "b"),
                             writer(services.realtime, "c"), writer(other.realtime, "d"))
    finally:
        await other.close()
    stored = list(client[environ["MONGO_DB"]].messages.find({"channel": "feed:race"}).sort("seq", 1))
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
    cids = [m["cid"] for m in stored if "cid" in m]
    assert sorted(cids) == sorted({f"c{n}" for n in range(0, 60, 3)})  # each cid stored once
    assert len(stored) == 4 * 40 + 20


@pytest.mark.gen_test
async def test_a_signed_out_session_cannot_reopen_a_socket(api, login, connect) -> None:
    """Sockets skip the token's database lookups for a session seen seconds ago, but signing out ends that at once."""
    tokens = await login("alice")
    first = await connect(tokens["access_token"])
    await first.call("ping")
    first.close()
    status, _, _ = await api("POST", "/api/v1/auth/logout", {"refresh_token": tokens["refresh_token"]})
    assert status == 200
    with pytest.raises(HTTPClientError) as error:
        await connect(tokens["access_token"])
    assert error.value.code == 401


@pytest.mark.gen_test
async def test_a_deleted_user_is_refused_a_socket_once_the_vouch_lapses(api, login, connect, client, environ,
                                                                        monkeypatch) -> None:
    """A user deleted directly in MongoDB: HTTP refuses at once; a socket reconnecting within VOUCH_SECONDS is
    still let in (no lookup), and refused once that time has passed."""
    import server.auth

    monkeypatch.setattr(server.auth, "VOUCH_SECONDS", 0.5)
    tokens = await login("ghost")
    (await connect(tokens["access_token"])).close()
    client[environ["MONGO_DB"]].users.delete_one({"_id": ObjectId(tokens["user"]["id"])})
    status, _, _ = await api("GET", "/api/v1/me", token=tokens["access_token"])
    assert status == 401
    await (await connect(tokens["access_token"])).call("ping")
    await asyncio.sleep(0.6)
    with pytest.raises(HTTPClientError) as error:
        await connect(tokens["access_token"])
    assert error.value.code == 401


@pytest.mark.gen_test(timeout=60)
async def test_publishes_waiting_for_a_channel_are_stored_together(services, client, environ) -> None:
    """Publishes that arrive while a channel is being written are stored by one insert_many (group commit):
    seq 1..N without a gap, delivered in seq order, a cid repeated inside one batch stored once."""
    realtime = services.realtime
    channel = "feed:group"
    delivered: list[int] = []
    real_publish = realtime.hub.publish
    batches: list[int] = []
    real_insert = realtime.messages._insert_batch

    async def counted_insert(channel_name, batch):  # type: ignore[no-untyped-def]
        batches.append(len(batch))
        return await real_insert(channel_name, batch)

    def recording_publish(channel_name: str, frame: bytes, seq: int) -> None:
        delivered.append(seq)
        real_publish(channel_name, frame, seq)

    realtime.messages._insert_batch = counted_insert  # type: ignore[method-assign]
    realtime.hub.publish = recording_publish  # type: ignore[method-assign]
    try:
        cids = [f"c{n % 40}" for n in range(60)]  # 20 of them repeat an earlier cid
        results = await asyncio.gather(*(realtime.publish(channel, "server", {"n": n}, cid)
                                         for n, cid in enumerate(cids)))
    finally:
        realtime.messages._insert_batch = real_insert  # type: ignore[method-assign]
        realtime.hub.publish = real_publish  # type: ignore[method-assign]
    assert sum(r.new for r in results) == 40
    by_cid = {}
    for result, cid in zip(results, cids, strict=True):
        by_cid.setdefault(cid, set()).add(result.message["seq"])
    assert all(len(seqs) == 1 for seqs in by_cid.values())  # a repeated cid got the first answer
    assert delivered == list(range(1, 41))
    stored = list(client[environ["MONGO_DB"]].messages.find({"channel": channel}).sort("seq", 1))
    assert [d["seq"] for d in stored] == list(range(1, 41))
    assert max(batches) > 1 and len(batches) < 40  # stored in batches, not one at a time
    assert client[environ["MONGO_DB"]].channels.find_one({"_id": channel})["seq"] == 40


@pytest.mark.gen_test
async def test_a_member_removed_in_mongodb_loses_access_within_the_access_window(api, login, connect, client,
                                                                                 environ, monkeypatch) -> None:
    """Permission checks remember a room's readers briefly: a member removed directly in MongoDB (by an admin,
    or another process) may publish until ACCESS_SECONDS pass, and not after."""
    import server.rooms

    monkeypatch.setattr(server.rooms, "ACCESS_SECONDS", 0.5)
    alice, bob = await login("alice"), await login("bob")
    channel = await _room(api, alice["access_token"], "secret", public=False)
    room_id = channel.split(":")[1]
    status, _, _ = await api("POST", f"/api/v1/rooms/{room_id}/members", {"user_id": bob["user"]["id"]},
                             token=alice["access_token"])
    assert status == 200
    b = await connect(bob["access_token"])
    assert "result" in await b.call("publish", channel=channel, data={"t": 1})
    client[environ["MONGO_DB"]].rooms.update_one({"_id": room_id}, {"$pull": {"members": bob["user"]["id"]}})
    await asyncio.sleep(0.6)
    assert (await b.call("publish", channel=channel, data={"t": 2}))["error"]["code"] == "forbidden"


@pytest.mark.gen_test
async def test_a_connection_whose_write_fails_is_closed_and_the_others_still_receive(login, connect, server_api,
                                                                                     services) -> None:
    """A write that raises (a broken transport) closes that connection with 1011; the same fan-out still
    reaches every other subscriber, and later messages too."""
    alice, bob = await login("alice"), await login("bob")
    a, b = await connect(alice["access_token"]), await connect(bob["access_token"])
    for client in (a, b):
        await client.call("subscribe", channel="feed:writes")
    broken = next(s for s in services.realtime.hub.subscribers["feed:writes"] if s.user == alice["user"]["id"])

    def fail(frame: bytes) -> bool:
        raise RuntimeError("a broken transport")

    broken.transport.send_frame = fail  # type: ignore[method-assign]
    await _publish(server_api, "feed:writes", 2)
    assert [m["seq"] for m in await b.messages(2)] == [1, 2]
    assert broken.closed
    await _publish(server_api, "feed:writes", 1, start=2)
    assert (await b.push())["message"]["seq"] == 3


@pytest.mark.gen_test
async def test_a_publish_failing_inside_a_batch_fails_alone(services) -> None:
    """A publish of a group-committed batch that fails on its own path gets its error; the rest of the batch
    is stored, answered and delivered with seq unbroken."""
    messages = services.realtime.messages
    real_store = messages._store

    async def failing_store(channel, sender, data, cid):  # type: ignore[no-untyped-def]
        if data.get("fail"):
            raise RuntimeError("this one fails")
        return await real_store(channel, sender, data, cid)

    messages._store = failing_store  # type: ignore[method-assign]
    delivered: list[int] = []

    def deliver(message: dict) -> None:
        delivered.append(message["seq"])

    try:
        outcomes = await asyncio.gather(*(
            messages.publish("feed:isolated", "server", data, cid, deliver)
            for data, cid in (({"n": 0}, "a"), ({"n": 1}, "b"), ({"n": 2, "fail": True}, "b"), ({"n": 3}, "c"))),
            return_exceptions=True)
    finally:
        messages._store = real_store  # type: ignore[method-assign]
    assert isinstance(outcomes[2], RuntimeError)
    assert [o.message["seq"] for o in outcomes if not isinstance(o, BaseException)] == [1, 2, 3]
    assert delivered == [1, 2, 3]


@pytest.mark.gen_test(timeout=30)
async def test_after_a_long_flush_the_next_waits_as_long_and_carries_what_came_meanwhile(login, connect,
                                                                                        services) -> None:
    """A busy process batches: after a flush that took long (thousands of sockets' writes), the next waits
    about as long (FLUSH_SHARE, never less), so what is delivered meanwhile shares one write per socket;
    once that wait is over, a write goes at the end of the loop turn again (whether a flush counts as short
    depends on the machine, so that is not asserted)."""
    import server.realtime.hub as hub_module
    from server.protocol import encode_message_push

    hub = services.realtime.hub
    alice = await login("alice")
    a = await connect(alice["access_token"])
    await a.call("subscribe", channel="feed:pace")
    connection = next(iter(hub.subscribers["feed:pace"]))
    real_send = connection.transport.send_frame
    writes: list[tuple[float, float, bytes]] = []  # (loop time begun, loop time done, what was written)
    loop = asyncio.get_running_loop()

    def timed_send(frame: bytes) -> bool:
        begun = loop.time()
        if not writes:
            time.sleep(0.3)  # a long first flush, as thousands of sockets' writes would be
        writes.append((begun, loop.time(), frame))
        return real_send(frame)

    connection.transport.send_frame = timed_send  # type: ignore[method-assign]

    def push(seq: int) -> bytes:
        return encode_message_push({"channel": "feed:pace", "seq": seq})

    hub.deliver("feed:pace", 1, push(1))
    while not writes:
        await asyncio.sleep(0.001)
    hub.deliver("feed:pace", 2, push(2))  # a loop turn after the long flush: it waits for the next
    await asyncio.sleep(0)
    hub.deliver("feed:pace", 3, push(3))  # another turn, within the wait (of FLUSH_WAIT_MAX, 0.2 s)
    for seq in (1, 2, 3):
        assert (await a.push())["message"]["seq"] == seq
    assert len(writes) == 2, writes  # 2 and 3 went in one write
    assert writes[1][2].count(b'"seq"') == 2
    waited = writes[1][0] - writes[0][1]  # a lower bound (a timer never fires early), whatever the machine
    assert waited >= min(0.3 * (1 - hub_module.FLUSH_SHARE) / hub_module.FLUSH_SHARE, hub_module.FLUSH_WAIT_MAX) - 0.01
    while loop.time() < hub._flush_at:  # past the wait
        await asyncio.sleep(0.01)
    hub.deliver("feed:pace", 4, push(4))
    await asyncio.sleep(0)  # one loop turn: the flush queued with call_soon runs before this resumes
    assert len(writes) == 3 and writes[2][2].count(b'"seq"') == 1
    assert (await a.push())["message"]["seq"] == 4


@pytest.mark.gen_test(timeout=30)
async def test_large_messages_are_written_at_once_while_the_hubs_flush_waits(login, connect, services) -> None:
    """While the hub's flush waits after a long one, a connection whose queued frames pass OUTBOX_BYTES writes
    them at once: no one write grows towards the 4009 bound for a client that reads."""
    hub = services.realtime.hub
    alice = await login("alice")
    a = await connect(alice["access_token"])
    await a.call("subscribe", channel="feed:large")
    from server.protocol import encode_message_push

    hub._flush_at = asyncio.get_running_loop().time() + 20  # a flush waiting far longer than this test
    blob = "z" * 40_000
    for seq in (1, 2):
        hub.deliver("feed:large", seq, encode_message_push({"channel": "feed:large", "seq": seq, "b": blob}))
    for seq in (1, 2):
        assert (await a.push(timeout=5))["message"]["seq"] == seq  # not 20 s later
    hub._flush_at = 0.0


@pytest.mark.gen_test(timeout=60)
async def test_a_flush_written_in_slices_lets_the_loop_run_and_keeps_every_socket_in_order(
        login, connect, services, monkeypatch) -> None:
    """A flush writes its sockets a slice at a time, the loop running between slices: a message delivered
    meanwhile goes with the next flush, after the running one, on every socket; a socket closed mid-flush
    gets what waited for it (the running flush's frames, then the next one's) before its close frame."""
    import server.realtime.hub as hub_module
    from server.protocol import encode_message_push

    monkeypatch.setattr(hub_module, "FLUSH_STEP", 1)  # a pause after every socket,
    monkeypatch.setattr(hub_module, "FLUSH_SLICE", 0.0)  # and a loop turn at every pause
    hub = services.realtime.hub
    users = [await login(f"slice{i}") for i in range(12)]
    clients = [await connect(u["access_token"]) for u in users]
    for client in clients:
        await client.call("subscribe", channel="feed:slices")
    connections = list(hub.subscribers["feed:slices"])
    closing = connections[-1]  # the last the flush reaches

    def push(seq: int) -> bytes:
        return encode_message_push({"channel": "feed:slices", "seq": seq})

    for seq in (1, 2, 3):
        hub.deliver("feed:slices", seq, push(seq))
    turns = 0
    while hub._steps is None:  # the flush starts at the end of this turn
        await asyncio.sleep(0)
    while hub._steps is not None:
        turns += 1
        if turns == 2:
            hub.deliver("feed:slices", 4, push(4))  # while the flush runs: the next window
        if turns == 4:
            closing.close(CloseCode.GOING_AWAY, "test")  # its writes are still ahead in this flush
        await asyncio.sleep(0)
    assert turns >= len(connections) - 1  # the loop ran between the sockets' writes
    for client in clients:
        assert [m["seq"] for m in await client.messages(4)] == [1, 2, 3, 4]
    assert await clients[-1].wait_closed() == CloseCode.GOING_AWAY
