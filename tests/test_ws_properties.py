"""Any frames over a real socket (hypothesis): each gets exactly one reply, in the
protocol's shape, valid UTF-8 JSON with a documented code, never ``internal``, and
the socket stays open."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ws_client import Client, RawSocket

CODES = {"invalid_json", "invalid_request", "payload_too_large", "forbidden", "rate_limited", "validation_failed",
         "unauthorized", "token_expired", "not_found"}

# Text of any code point, lone surrogates included (they travel as JSON escapes), and strings known to
# trouble JSON, BSON or MongoDB, which a uniform draw seldom reaches.
TRICKY = ["\ud800", "x\udfff", "\x00", "a\x00b", "$gt", "a.b", "", "\u2028", "\ufeff", "\U0001f600"]
any_text = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(TRICKY)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8)
ROOM = "room:props"  # replaced by a real public room's channel once the server runs
channels = st.one_of(st.just(ROOM), st.sampled_from(["feed:news", "user:nobody", "room:", "feed:news\n"]), any_text)
numbers = st.integers(-1, 2**64) | json_values
ids = st.integers(0, 2**53 - 1)


def command(op: str, **arguments: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A command of ``op``: id, op and channel always, each other argument maybe."""
    return st.fixed_dictionaries({"id": ids, "op": st.just(op), "channel": channels}, optional=arguments)


commands = st.one_of(
    command("publish", data=st.dictionaries(any_text, json_values, max_size=3) | json_values, cid=any_text | numbers),
    command("subscribe", since=numbers, last=numbers),
    command("history", before=numbers, after=numbers, limit=numbers),
    command("refresh", token=any_text | json_values),
    command("presence"), command("unsubscribe"), command("ping"),
    st.fixed_dictionaries({"id": ids | json_values, "op": any_text | json_values}))
frames = st.one_of(
    commands.map(lambda c: json.dumps(c, ensure_ascii=True)),  # lone surrogates as \\ud800 escapes
    json_values.map(lambda v: json.dumps(v, ensure_ascii=True)),
    st.text(max_size=40))

SETUP: dict[int, tuple[str, str]] = {}  # server port -> (a token, a public room's channel): made once per server


async def _setup(api: Any, login: Any) -> tuple[str, str]:
    user = await login("prop")
    status, room, _ = await api("POST", "/api/v1/rooms", {"name": "props", "public": True},
                                token=user["access_token"])
    assert status == 201, room
    return user["access_token"], f"room:{room['id']}"


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sent=st.lists(frames, min_size=1, max_size=4))
def test_any_frame_gets_one_reply_in_the_protocols_shape(io_loop, http_port: int, api, login, sent: list[str]) -> None:
    """Whatever text frames a client sends (a few, within the rate), each is answered once with a result or
    an error of a documented code, never internal, and the socket stays open."""
    if http_port not in SETUP:
        SETUP[http_port] = io_loop.run_sync(lambda: _setup(api, login))
    token, room = SETUP[http_port]

    async def exchange() -> None:
        raw = await RawSocket.connect(http_port, token)
        try:
            for frame in sent:
                await raw.send(frame.replace(ROOM, room).encode())  # st.text() has no lone surrogate: valid UTF-8
            replies = []
            while len(replies) < len(sent):
                received = await raw.frame(5)
                assert received is not None and received[0] == 0x1, received  # a text frame, not a close
                reply = json.loads(received[1].decode("utf-8"))  # strict UTF-8, then JSON
                if "push" not in reply:
                    replies.append(reply)
            for reply in replies:
                assert set(reply) in ({"id", "result"}, {"id", "error"}), reply
                if "error" in reply:
                    assert reply["error"]["code"] in CODES, reply
            await raw.send(json.dumps({"id": 0, "op": "ping"}).encode())
            while (received := await raw.frame(5)) is not None and b'"push"' in received[1]:
                pass
            assert received is not None and "result" in json.loads(received[1])  # still open, still answering
        finally:
            raw.close()

    io_loop.run_sync(exchange, timeout=30)


ROOMS: dict[int, tuple[str, str, list[str]]] = {}  # server port -> (a token, another's token, two rooms)


async def _rooms(api: Any, login: Any) -> tuple[str, str, list[str]]:
    alice, bob = await login("order-a"), await login("order-b")
    rooms = []
    for name in ("first", "second"):
        status, room, _ = await api("POST", "/api/v1/rooms", {"name": name, "public": True},
                                    token=alice["access_token"])
        assert status == 201, room
        rooms.append(f"room:{room['id']}")
    return alice["access_token"], bob["access_token"], rooms


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.sampled_from(["subscribe", "unsubscribe", "publish"]), st.integers(0, 1)),
                      min_size=1, max_size=20))
def test_concurrent_commands_keep_the_order_of_each_channel(io_loop, http_port: int, api, login,
                                                            steps: list[tuple[str, int]]) -> None:
    """Subscribes, unsubscribes and publishes sent back to back on one socket (they run concurrently) end as
    if run in the order sent: one reply each, a channel's publishes get rising seqs, pushes arrive in seq
    order once each, and the socket ends subscribed exactly where the last command said so."""
    if http_port not in ROOMS:
        ROOMS[http_port] = io_loop.run_sync(lambda: _rooms(api, login))
    token, other_token, rooms = ROOMS[http_port]
    base_url = f"http://127.0.0.1:{http_port}"

    async def exchange() -> None:
        client, other = await Client.connect(base_url, token), await Client.connect(base_url, other_token)
        try:
            for number, (op, room) in enumerate(steps, 1):
                extra = {"publish": {"data": {"n": number}}, "subscribe": {"last": 3}}.get(op, {})  # last: a read
                await client.send_raw(json.dumps({"id": number, "op": op, "channel": rooms[room], **extra}))
            replies = {}
            while len(replies) < len(steps):
                reply = await client.read(10)
                assert reply is not None, "closed"
                if "push" in reply:
                    client.pushes.append(reply)
                else:
                    assert reply["id"] not in replies, reply
                    replies[reply["id"]] = reply
            assert all("result" in reply for reply in replies.values()), replies
            for room in (0, 1):
                seqs = [replies[n]["result"]["seq"] for n, (op, r) in enumerate(steps, 1)
                        if op == "publish" and r == room]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
            subscribed = {room: False for room in (0, 1)}
            for op, room in steps:
                if op != "publish":
                    subscribed[room] = op == "subscribe"
            probes = [(await other.call("publish", channel=channel, data={"probe": True}))["result"]["seq"]
                      for channel in rooms]
            await client.call("ping")  # the probes' pushes, if any, were queued before this reply
            for room, channel in enumerate(rooms):
                seqs = [p["message"]["seq"] for p in client.pushes
                        if p["push"] == "message" and p["message"]["channel"] == channel]
                assert seqs == sorted(set(seqs)), seqs  # in order, once each
                assert (probes[room] in seqs) == subscribed[room], (steps, room, seqs, probes)
        finally:
            client.close()
            other.close()

    io_loop.run_sync(exchange, timeout=60)
