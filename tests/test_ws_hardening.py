"""The WebSocket runtime under hostile input and a stalled database: real servers,
real sockets, and an embedded store of this module's own (stopped with SIGSTOP,
or failing commands through its failpoint) so that no other test is stalled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pymongo
import pytest
import websockets
from tornado.httpclient import HTTPClientError

import server.realtime.commands
from server.errors import CloseCode
from tests.mongo_process import StoreProcess
from tests.ws_client import RawSocket

BAD_DATA = {"big": 2**64}  # JSON the protocol may take but BSON cannot hold (beyond int64)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    """An embedded store for this module alone: its tests stall it."""
    process = StoreProcess(str(tmp_path_factory.mktemp("stalled")), "--enable-test-commands").start()
    yield process
    if process.proc is not None:
        os.kill(process.proc.pid, signal.SIGCONT)
    process.stop()


@pytest.fixture(scope="module")
def client(store: StoreProcess) -> Iterator[pymongo.MongoClient]:
    """A pymongo client of this module's store."""
    mongo: pymongo.MongoClient = pymongo.MongoClient(store.uri, serverSelectionTimeoutMS=5000)
    yield mongo
    mongo.close()


@asynccontextmanager
async def stalled(store: StoreProcess) -> AsyncIterator[None]:
    """The store stopped (SIGSTOP) for the block: connections stay open, nothing answers."""
    assert store.proc is not None
    os.kill(store.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(store.proc.pid, signal.SIGCONT)


@asynccontextmanager
async def failing(client: pymongo.MongoClient, data: dict) -> AsyncIterator[None]:
    """The store's failCommand failpoint on for the block."""
    client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": data})
    try:
        yield
    finally:
        client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


async def _room(api, token: str) -> str:
    status, room, _ = await api("POST", "/api/v1/rooms", {"name": "hardening", "public": True}, token=token)
    assert status == 201, room
    return f"room:{room['id']}"


# -- a bad message among others ---------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_an_unstorable_message_fails_alone_among_concurrent_publishes(api, login, connect) -> None:
    """Three sockets publish into one room at once, one with data BSON cannot hold: the valid ones are
    stored and acknowledged in every round, the bad one gets a client error, never internal."""
    users = [await login(f"user{i}") for i in range(3)]
    channel = await _room(api, users[0]["access_token"])
    sockets = [await connect(u["access_token"]) for u in users]
    for round_number in range(6):
        bad = round_number % 3
        replies = await asyncio.gather(*(
            s.call("publish", channel=channel, data=BAD_DATA if i == bad else {"round": round_number, "i": i})
            for i, s in enumerate(sockets)))
        for i, reply in enumerate(replies):
            if i == bad:
                assert reply["error"]["code"] in ("invalid_request", "validation_failed"), reply
            else:
                assert "result" in reply, reply


@pytest.mark.gen_test(timeout=30)
async def test_a_batch_with_an_unstorable_message_stores_the_others(services, client, environ) -> None:
    """Publishes stored together (group commit) with one that the driver refuses: each valid one is stored
    once, answered and delivered with seq unbroken; only the bad one fails."""
    messages = services.realtime.messages
    delivered: list[int] = []
    datas = [{"n": 0}, {"n": 1}, BAD_DATA, {"n": 3}, {"bad\x00key": 1}, {"n": 5}]
    outcomes = await asyncio.gather(
        *(messages.publish("feed:batch", "server", data, None, lambda m: delivered.append(m["seq"])) for data in datas),
        return_exceptions=True)
    assert [type(o).__name__ for o in outcomes] == ["Published", "Published", "ApiError", "Published", "ApiError",
                                                    "Published"]
    assert [o.message["seq"] for o in outcomes if not isinstance(o, BaseException)] == [1, 2, 3, 4]
    assert delivered == [1, 2, 3, 4]
    stored = list(client[environ["MONGO_DB"]].messages.find({"channel": "feed:batch"}).sort("seq", 1))
    assert [(d["seq"], d["data"]["n"]) for d in stored] == [(1, 0), (2, 1), (3, 3), (4, 5)]


# -- frames are read while commands wait ------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_stalled_database_does_not_stop_a_connections_frames(api, login, connect, store, base_url) -> None:
    """While a publish waits on a stopped store, the same socket's pings are answered (control frames and
    the ping op), and a client sending 16 frames a second is not closed for a burst (4008) once the store
    comes back: frames are judged when they arrive."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    url = base_url.replace("http", "ws", 1) + "/ws"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {alice['access_token']}"},
                                  ping_interval=None) as ws:
        replies: dict[int, dict] = {}

        async def read() -> None:
            async for frame in ws:
                reply = json.loads(frame)
                replies[reply["id"]] = reply

        reader = asyncio.ensure_future(read())
        async with stalled(store):
            await ws.send(json.dumps({"id": 1, "op": "publish", "channel": channel, "data": {"t": "stalled"}}))
            await asyncio.sleep(0.2)
            pong = await ws.ping()
            await asyncio.wait_for(pong, 3)  # a pong while the publish waits
            for n in range(2, 66):  # 16 frames a second for 4 s: within the rate (20/s, bursts of 40)
                await ws.send(json.dumps({"id": n, "op": "ping"}))
                await asyncio.sleep(1 / 16)
            for _ in range(40):  # a guard (the store stays stopped meanwhile), not a deadline being measured
                if all(n in replies for n in range(2, 66)):
                    break
                await asyncio.sleep(0.1)
            assert 1 not in replies and all("result" in replies[n] for n in range(2, 66))  # answered meanwhile
        for _ in range(100):
            if len(replies) == 65:
                break
            await asyncio.sleep(0.1)
        assert replies[1]["result"]["seq"] == 1
        assert all("result" in replies[n] for n in range(2, 66))
        reader.cancel()
        assert ws.close_code is None  # still open


@pytest.mark.gen_test(timeout=30)
async def test_a_command_on_a_stalled_database_answers_unavailable(api, login, connect, store, client, environ,
                                                                  monkeypatch) -> None:
    """A command the stopped store cannot answer replies unavailable after COMMAND_SECONDS; once the store
    is back, a retry with the same cid stores the message once."""
    monkeypatch.setattr(server.realtime.commands, "COMMAND_SECONDS", 1.0, raising=False)
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    a = await connect(alice["access_token"])
    await a.call("publish", channel=channel, data={"t": "before"})
    async with stalled(store):
        reply = await a.call("publish", channel=channel, data={"t": "during"}, cid="c-1", timeout=5)
        assert reply["error"]["code"] == "unavailable", reply
        assert (await a.call("history", channel=channel, timeout=5))["error"]["code"] == "unavailable"
        assert "result" in await a.call("ping")
    retried = await a.call("publish", channel=channel, data={"t": "during"}, cid="c-1", timeout=10)
    assert retried["result"]["seq"] == 2
    assert client[environ["MONGO_DB"]].messages.count_documents({"channel": channel}) == 2


@pytest.mark.gen_test(timeout=30)
async def test_a_database_outage_is_unavailable_not_internal(api, login, connect, client) -> None:
    """Connections the store drops, and an operation past its time (MaxTimeMSExpired), answer unavailable
    over the socket, as over HTTP; the socket stays usable."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    a = await connect(alice["access_token"])
    await a.call("subscribe", channel=channel)
    for failure in ({"closeConnection": True}, {"errorCode": 50}):
        async with failing(client, {"failCommands": ["insert", "find"], **failure}):
            for op, args in (("publish", {"data": {"t": 1}}), ("history", {}), ("subscribe", {"last": 5})):
                reply = await a.call(op, channel=channel, timeout=10, **args)
                assert reply["error"]["code"] == "unavailable", (failure, op, reply)
    assert "result" in await a.call("publish", channel=channel, data={"t": "after"})


# -- rate limit and concurrency ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_invalid_frames_count_against_the_rate_limit(login, connect) -> None:
    """300 invalid frames back to back are refused like commands: rate_limited replies, then 4008."""
    alice = await login("alice")
    client = await connect(alice["access_token"])
    for _ in range(300):
        await client.send_raw("not json")
    codes = []
    while (message := await client.read()) is not None:
        codes.append(message["error"]["code"])
    assert codes[:40] == ["invalid_json"] * 40 and "rate_limited" in codes and len(codes) < 300
    assert client.close_code == CloseCode.TOO_MANY_COMMANDS


@pytest.mark.gen_test(timeout=30)
async def test_commands_in_flight_are_bounded_and_each_gets_one_reply(api, login, connect, store) -> None:
    """With the store stopped, commands past MAX_IN_FLIGHT are answered rate_limited at once; once it is back,
    every command has had exactly one reply."""
    alice = await login("alice")
    channel = await _room(api, alice["access_token"])
    a = await connect(alice["access_token"])
    count = getattr(server.realtime.commands, "MAX_IN_FLIGHT", 32) + 4
    async with stalled(store):
        for n in range(1, count + 1):
            await a.send_raw(json.dumps({"id": n, "op": "history", "channel": channel}))
        refused = [await a.read() for _ in range(4)]
        assert [r["error"]["code"] for r in refused] == ["rate_limited"] * 4
    replies = refused + [await a.read(10) for _ in range(count - 4)]
    assert sorted(r["id"] for r in replies) == list(range(1, count + 1))
    assert sum("result" in r for r in replies) == count - 4


@pytest.mark.gen_test(timeout=30)
async def test_commands_naming_one_channel_run_in_the_order_sent(api, login, connect) -> None:
    """Publishes sent back to back on one socket are stored in the order sent, and a subscribe followed at
    once by an unsubscribe leaves the socket unsubscribed."""
    alice, bob = await login("alice"), await login("bob")
    channel = await _room(api, alice["access_token"])
    a, b = await connect(alice["access_token"]), await connect(bob["access_token"])
    await b.call("subscribe", channel=channel)
    for n in range(1, 21):
        await a.send_raw(json.dumps({"id": n, "op": "publish", "channel": channel, "data": {"n": n}}))
    await a.send_raw(json.dumps({"id": 21, "op": "subscribe", "channel": channel, "last": 5}))  # reads MongoDB
    await a.send_raw(json.dumps({"id": 22, "op": "unsubscribe", "channel": channel}))
    replies = {r["id"]: r for r in [await a.read() for _ in range(22)]}
    assert [replies[n]["result"]["seq"] for n in range(1, 21)] == list(range(1, 21))
    assert [m["data"]["n"] for m in await b.messages(20)] == list(range(1, 21))
    await b.call("publish", channel=channel, data={"n": "after"})
    assert (await b.push())["message"]["data"] == {"n": "after"}
    with pytest.raises(TimeoutError):
        await a.read(0.5)  # unsubscribed: nothing arrives


@pytest.mark.parametrize("extra_env", [{"CONTENT_CHECK": "on"}])
@pytest.mark.gen_test(timeout=30)
async def test_publishes_whose_checks_finish_out_of_order_are_stored_in_the_order_sent(api, connect,
                                                                                      extra_env) -> None:
    """With CONTENT_CHECK=on, a publish whose check answers late and one sent after it whose check answers at
    once, on one socket: stored in the order sent."""
    status, tokens, _ = await api("POST", "/api/v1/auth/wechat", {"code": "ok-ordered"})
    assert status == 200, tokens
    channel = await _room(api, tokens["access_token"])
    a = await connect(tokens["access_token"])
    for n, text in enumerate(("wechat-slow first", "second at once"), 1):
        await a.send_raw(json.dumps({"id": n, "op": "publish", "channel": channel, "data": {"text": text}}))
    replies = {r["id"]: r for r in [await a.read(), await a.read()]}
    assert [replies[n]["result"]["seq"] for n in (1, 2)] == [1, 2], replies


# -- since, UTF-8, 4009, the upgrade ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_since_beyond_the_newest_seq_does_not_stop_live_pushes(api, login, connect, server_api) -> None:
    """A subscribe with since far beyond the channel's newest seq answers the real newest seq, and later
    messages are pushed."""
    alice = await login("alice")
    a = await connect(alice["access_token"])
    for n in range(2):
        status, _ = await server_api("POST", "/api/v1/server/publish", {"channel": "feed:since", "data": {"n": n}})
        assert status == 200
    reply = (await a.call("subscribe", channel="feed:since", since=2**53 - 1))["result"]
    assert reply == {"channel": "feed:since", "seq": 2, "recovered": True, "messages": []}
    await server_api("POST", "/api/v1/server/publish", {"channel": "feed:since", "data": {"n": 2}})
    assert (await a.push())["message"]["seq"] == 3


@pytest.mark.gen_test(timeout=30)
async def test_invalid_utf8_in_a_text_frame_closes_with_1007(login, connect, http_port: int, services) -> None:
    """A text frame that is not UTF-8 closes the socket with 1007 (RFC 6455), not a dropped connection."""
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"])
    await raw.send(b'{"id": 1, "op": "ping", "x": "\xff\xfe"}')
    assert await raw.close_code() == 1007
    raw.close()
    for _ in range(50):
        if services.realtime.hub.connection_count() == 0:
            break
        await asyncio.sleep(0.1)
    assert services.realtime.hub.connection_count() == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_4009_close_reaches_a_client_that_stopped_reading(login, server_api, http_port: int,
                                                                 services) -> None:
    """A client that stops reading is closed with 4009 once its backlog passes the bound; when it reads
    again, past the server's close timeout, the close frame with 4009 is there: it replaced the backlog."""
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"], receive_buffer=4096)
    await raw.send(json.dumps({"id": 1, "op": "subscribe", "channel": "feed:flood"}).encode())
    await asyncio.sleep(0.3)
    session = next(iter(services.realtime.hub.subscribers["feed:flood"]))
    blob = "x" * 15000
    for n in range(400):
        await server_api("POST", "/api/v1/server/publish", {"channel": "feed:flood", "data": {"n": n, "b": blob}})
        if services.realtime.hub.connection_count() == 0:
            break
    assert services.realtime.hub.connection_count() == 0
    assert session.transport.pending() < 16 * 1024  # at most the frame being written, and the close frame
    await asyncio.sleep(6)  # past Tornado's 5 s wait for the client's close
    while (frame := await raw.frame(10)) is not None and frame[0] != 0x8:
        pass  # what the kernel's buffers held
    assert frame is not None and int.from_bytes(frame[1][:2], "big") == CloseCode.TOO_SLOW
    raw.close()


@pytest.mark.gen_test(timeout=60)
async def test_frames_for_a_full_socket_wait_in_one_buffer_and_arrive_whole_in_order(login, server_api,
                                                                                   http_port: int,
                                                                                   services) -> None:
    """While a client's socket is full, pushes join the stream's buffer without a Future each (thousands of
    them, alive until written, were work for the garbage collector under fan-out); when the client reads
    again every push arrives whole, in seq order."""
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"], receive_buffer=4096)
    await raw.send(json.dumps({"id": 1, "op": "subscribe", "channel": "feed:full"}).encode())
    assert (await raw.frame())[0] == 0x1  # the subscribe's reply
    session = next(iter(services.realtime.hub.subscribers["feed:full"]))
    stream = session.transport._stream
    session.transport._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel holds little
    blob = "y" * 3000
    count = 120  # about 360 KB: far more than the socket buffers hold, well under the 4009 bound
    for n in range(count):
        status, _ = await server_api("POST", "/api/v1/server/publish", {"channel": "feed:full",
                                                                        "data": {"n": n, "b": blob}})
        assert status == 200
    await asyncio.sleep(0.2)
    assert session.transport.pending() > 100_000  # the socket is full: most of it waits in the stream
    assert len(stream._write_futures) <= 2  # not one per push
    seqs = []
    while len(seqs) < count:
        frame = await raw.frame(10)
        assert frame is not None and frame[0] == 0x1
        push = json.loads(frame[1])
        assert push["message"]["data"] == {"n": len(seqs), "b": blob}
        seqs.append(push["message"]["seq"])
    assert seqs == list(range(1, count + 1))
    assert session.transport.pending() == 0
    raw.close()


@pytest.mark.gen_test
async def test_get_ws_without_an_upgrade_answers_json(base_url: str, login, http_client) -> None:
    """A plain GET /ws (no upgrade, a wrong version, a missing key) is answered 400 invalid_request in the
    contract's error shape; an upgrade without a token is 401, a POST 405, in the same shape."""
    alice = await login("alice")
    auth = {"Authorization": f"Bearer {alice['access_token']}"}
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for headers, status, code in (
            (auth, 400, "invalid_request"),
            ({**auth, **upgrade, "Sec-WebSocket-Version": "8"}, 400, "invalid_request"),
            ({**auth, **{k: v for k, v in upgrade.items() if k != "Sec-WebSocket-Key"}}, 400, "invalid_request"),
            ({**auth, **upgrade, "Connection": "keep-alive"}, 400, "invalid_request"),
            ({}, 400, "invalid_request"),
            (upgrade, 401, "unauthorized")):
        with pytest.raises(HTTPClientError) as error:
            await http_client.fetch(base_url + "/ws", headers=headers)
        response = error.value.response
        assert response is not None and response.code == status, headers
        assert response.headers["Content-Type"].startswith("application/json")
        body = json.loads(response.body)
        assert body["error"]["code"] == code and set(body["error"]) == {"code", "message", "details"}, body
    for method in ("POST", "PROPFIND"):
        with pytest.raises(HTTPClientError) as error:
            await http_client.fetch(base_url + "/ws", method=method, body=b"{}", headers=auth,
                                    allow_nonstandard_methods=True)
        assert error.value.code == 405, method
        assert json.loads(error.value.response.body)["error"]["code"] == "method_not_allowed"


@pytest.mark.gen_test(timeout=60)
async def test_a_slow_reader_closed_with_windows_still_waiting_is_closed_once(login, http_port: int, services,
                                                                             monkeypatch) -> None:
    """A client that does not read, with many full flush windows of its channel waiting: the write that passes
    the bound closes it with 4009 once (one close logged and counted), and nothing of what still waited is
    written after the close frame replaced the backlog."""
    from server.protocol import encode_message_push

    hub = services.realtime.hub
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"], receive_buffer=4096)
    await raw.send(json.dumps({"id": 1, "op": "subscribe", "channel": "feed:pile"}).encode())
    await asyncio.sleep(0.3)
    session = next(iter(hub.subscribers["feed:pile"]))
    closes: list[int] = []
    real_log_close = hub.log_close
    monkeypatch.setattr(hub, "log_close", lambda c, code, reason: (closes.append(code), real_log_close(c, code,
                                                                                                        reason)))
    blob = "y" * 15000
    for seq in range(1, 401):  # 6 MB in one loop turn (the kernel takes a few MB): full windows pile up
        hub.deliver("feed:pile", seq, encode_message_push({"channel": "feed:pile", "seq": seq, "b": blob}))
    for _ in range(100):
        if session.closed:
            break
        await asyncio.sleep(0.05)
    assert session.closed and closes == [CloseCode.TOO_SLOW]
    assert session.transport.pending() < 80 * 1024  # at most a window being written (64 KiB), and the close frame
    raw.close()
