"""Several server processes on one real Redis and one embedded store, as
several machines would run: real ``run.py`` processes, real WebSocket clients."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClosedError

from server.errors import CloseCode
from server.realtime.brokers.redis import shard_of
from tests.helpers.redis_process import RedisProcess, require_redis
from tests.helpers.servers import ServerProcess, call, environment, sign_in
from tests.mongo_process import StoreProcess
from tests.ws_client import Client


def deployment(store: StoreProcess, database: str, redis: RedisProcess | None, count: int,
               **extra: str) -> list[ServerProcess]:
    """``count`` run.py processes of one deployment, started together."""
    started = [ServerProcess(environment(store.uri, database, redis.url if redis else None, **extra))
               for _ in range(count)]
    return [server.start() for server in started]


def stop(servers: list[ServerProcess]) -> None:
    for server in servers:
        server.stop()


async def _call(*args: Any, **kwargs: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(call, *args, **kwargs)


async def _signed_in(url: str, name: str) -> dict[str, Any]:
    return await asyncio.to_thread(sign_in, url, name)


async def alice_and_bob_in_a_room(a: ServerProcess, b: ServerProcess) -> tuple[dict[str, Any], dict[str, Any],
                                                                             str, Client, Client]:
    """Alice (signed in on A) makes a public room; her socket on A and Bob's on B subscribe to it:
    (alice, bob, channel, alice's socket, bob's socket)."""
    alice, bob = await _signed_in(a.url, "alice"), await _signed_in(b.url, "bob")
    _, room = await _call(a.url, "POST", "/api/v1/rooms", {"name": "r", "public": True}, token=alice["access_token"])
    channel = f"room:{room['id']}"
    alice_a = await Client.connect(a.url, alice["access_token"])
    await alice_a.call("subscribe", channel=channel)
    bob_b = await Client.connect(b.url, bob["access_token"])
    await bob_b.call("subscribe", channel=channel)
    return alice, bob, channel, alice_a, bob_b


async def _seqs(client: Client, count: int, timeout: float = 10.0) -> list[int]:
    return [m["seq"] for m in await client.messages(count, timeout)]


async def _nothing_more(client: Client, wait: float = 0.3) -> bool:
    """True when no further message push arrives within ``wait``."""
    try:
        await client.push(wait)
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("shards", [1, 2])
def test_a_subscriber_on_one_process_gets_what_another_publishes(store: StoreProcess, database: str,
                                                                 redis: RedisProcess, shards: int) -> None:
    """A room message published on process B and a server-API publish on B reach a subscriber on A (one Redis,
    or two sharing the channels)."""
    second = RedisProcess(require_redis()).start() if shards == 2 else None
    extra = {"REDIS_URL": f"{redis.url},{second.url}"} if second else {}
    a, b = servers = deployment(store, database, redis, 2, **extra)
    try:
        async def scenario() -> None:
            alice, bob = await _signed_in(a.url, "alice"), await _signed_in(b.url, "bob")
            status, room = await _call(a.url, "POST", "/api/v1/rooms", {"name": "r", "public": True},
                                       token=alice["access_token"])
            assert status == 201
            channel = f"room:{room['id']}"
            on_a = await Client.connect(a.url, alice["access_token"])
            on_b = await Client.connect(b.url, bob["access_token"])
            assert "result" in await on_a.call("subscribe", channel=channel)
            assert "result" in await on_a.call("subscribe", channel="feed:news")
            assert "result" in await on_b.call("subscribe", channel=channel)
            assert (await on_a.push(kind="join"))["user"] == bob["user"]["id"]
            await on_b.call("publish", channel=channel, data={"text": "from b"})
            pushed = (await on_a.push())["message"]
            assert (pushed["seq"], pushed["data"]) == (1, {"text": "from b"})
            status, _ = await _call(b.url, "POST", "/api/v1/server/publish",
                                    {"channel": "feed:news", "data": {"n": 1}}, api_key=True)
            assert status == 200
            pushed = (await on_a.push())["message"]
            assert (pushed["channel"], pushed["seq"]) == ("feed:news", 1)
            other = next(f"feed:n{i}" for i in range(100) if shard_of(f"feed:n{i}", 2) != shard_of("feed:news", 2))
            assert "result" in await on_a.call("subscribe", channel=other)  # on the other Redis, if two
            await _call(b.url, "POST", "/api/v1/server/publish", {"channel": other, "data": {"n": 2}}, api_key=True)
            assert (await on_a.push())["message"]["channel"] == other
            on_a.close()
            on_b.close()

        asyncio.run(scenario())
    finally:
        stop(servers)
        if second is not None:
            second.stop()


def test_three_processes_publishing_into_one_channel_one_delayed_deliver_1_to_n_in_order(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """Publishers on three processes (one's Redis publishes held back): every subscriber gets 1..N once, in order."""
    servers = deployment(store, database, redis, 2)
    servers.append(ServerProcess(environment(store.uri, database, redis.url, REDIS_PUBLISH_DELAY="0.08")).start())
    try:
        async def scenario() -> list[Any]:
            users = [await _signed_in(s.url, f"u{i}") for i, s in enumerate(servers)]
            subscribers = [await Client.connect(s.url, u["access_token"]) for s, u in zip(servers, users, strict=True)]
            publishers = [await Client.connect(s.url, u["access_token"]) for s, u in zip(servers, users, strict=True)]
            _, room = await _call(servers[0].url, "POST", "/api/v1/rooms", {"name": "r", "public": True},
                                       token=users[0]["access_token"])
            channel = f"room:{room['id']}"
            for subscriber in subscribers:
                assert "result" in await subscriber.call("subscribe", channel=channel)

            async def publish(client: Client, count: int) -> None:
                for n in range(count):
                    assert "result" in await client.call("publish", channel=channel, data={"n": n})

            await asyncio.gather(*(publish(p, 15) for p in publishers))
            seqs = [await _seqs(s, 45) for s in subscribers]
            quiet = [await _nothing_more(s) for s in subscribers]
            stats = await _call(servers[0].url, "GET", "/api/v1/server/stats", api_key=True)
            for client in subscribers + publishers:
                client.close()
            return [seqs, quiet, stats]

        seqs, quiet, (status, stats) = asyncio.run(scenario())
        for delivered in seqs:
            assert delivered == list(range(1, 46))
        assert all(quiet)
        assert status == 200 and len(stats["processes"]) == 3
        assert sum(p["broker"]["held"] for p in stats["processes"]) > 0  # the reordering path ran
    finally:
        stop(servers)


def test_redis_killed_mid_stream_every_subscriber_ends_with_every_message_without_reconnecting(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """kill -9 of Redis while two processes publish: /readyz says so; after a restart every subscriber
    on both has every message once, in order, on the socket it had."""
    a, b = servers = deployment(store, database, redis, 2, REDIS_TIMEOUT="0.5")
    try:
        async def scenario() -> list[Any]:
            alice, bob = await _signed_in(a.url, "alice"), await _signed_in(b.url, "bob")
            on_a = await Client.connect(a.url, alice["access_token"])
            on_b = await Client.connect(b.url, bob["access_token"])
            for client in (on_a, on_b):
                assert "result" in await client.call("subscribe", channel="feed:f")

            async def publish(server: ServerProcess, count: int) -> None:
                for n in range(count):
                    status, _ = await _call(server.url, "POST", "/api/v1/server/publish",
                                            {"channel": "feed:f", "data": {"n": n}}, api_key=True)
                    assert status == 200  # stored and acknowledged, Redis or not
                    await asyncio.sleep(0.01)

            publishing = asyncio.gather(publish(a, 30), publish(b, 30))
            await asyncio.sleep(0.15)
            redis.kill()
            await asyncio.sleep(0.8)
            ready = [(await _call(s.url, "GET", "/readyz"))[0] for s in servers]
            metrics = await asyncio.to_thread(_metrics, a.url)
            redis.start()
            await publishing
            seqs = [await _seqs(c, 60, timeout=15) for c in (on_a, on_b)]
            quiet = [await _nothing_more(c) for c in (on_a, on_b)]
            open_ = [not c.closed for c in (on_a, on_b)]
            ready_after = [(await _call(s.url, "GET", "/readyz"))[0] for s in servers]
            on_a.close()
            on_b.close()
            return [ready, metrics, seqs, quiet, open_, ready_after]

        ready, metrics, seqs, quiet, open_, ready_after = asyncio.run(scenario())
        assert ready == [503, 503] and "broker_up 0.0" in metrics
        for delivered in seqs:
            assert delivered == list(range(1, 61))
        assert all(quiet) and all(open_)
        assert ready_after == [200, 200]
    finally:
        stop(servers)


def _metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_sign_out_disconnect_the_cap_and_membership_changes_reach_every_process(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """Sign-out on A closes B's socket (4001); disconnect closes everywhere (4000); a third socket closes the
    oldest anywhere (4010); a member added or removed on A counts on B at once."""
    a, b = servers = deployment(store, database, redis, 2, WS_MAX_PER_USER="2")
    try:
        async def scenario() -> None:
            alice = await _signed_in(a.url, "alice")
            alice_b = await Client.connect(b.url, alice["access_token"])
            status, _ = await _call(a.url, "POST", "/api/v1/auth/logout", {"refresh_token": alice["refresh_token"]})
            assert status in (200, 204)
            assert await alice_b.wait_closed() == CloseCode.TOKEN_INVALID
            with pytest.raises(HTTPClientError) as refused:  # no process vouches for a signed-out session
                await Client.connect(b.url, alice["access_token"])
            assert refused.value.code == 401

            bob = await _signed_in(a.url, "bob")
            bob_a, bob_b = await Client.connect(a.url, bob["access_token"]), await Client.connect(b.url,
                                                                                                   bob["access_token"])
            await bob_b.call("ping")
            status, body = await _call(a.url, "POST", "/api/v1/server/disconnect", {"user_id": bob["user"]["id"]},
                                       api_key=True)
            assert status == 200 and body["closed"] == 2
            assert await bob_a.wait_closed() == CloseCode.DISCONNECTED
            assert await bob_b.wait_closed() == CloseCode.DISCONNECTED

            carol = await _signed_in(a.url, "carol")
            first = await Client.connect(a.url, carol["access_token"])
            await first.call("ping")
            second = await Client.connect(b.url, carol["access_token"])
            await second.call("ping")
            await asyncio.sleep(0.1)
            third = await Client.connect(a.url, carol["access_token"])
            assert await first.wait_closed() == CloseCode.REPLACED
            assert "result" in await second.call("ping") and "result" in await third.call("ping")

            dave, erin = await _signed_in(a.url, "dave"), await _signed_in(b.url, "erin")
            status, room = await _call(a.url, "POST", "/api/v1/rooms", {"name": "private", "public": False},
                                       token=dave["access_token"])
            channel = f"room:{room['id']}"
            erin_b = await Client.connect(b.url, erin["access_token"])
            assert (await erin_b.call("subscribe", channel=channel))["error"]["code"] == "forbidden"  # now cached
            status, _ = await _call(a.url, "POST", f"/api/v1/rooms/{room['id']}/members",
                                    {"user_id": erin["user"]["id"]}, token=dave["access_token"])
            assert status in (200, 201)
            await asyncio.sleep(0.2)
            assert "result" in await erin_b.call("subscribe", channel=channel)
            await erin_b.call("unsubscribe", channel=channel)
            status, _ = await _call(a.url, "DELETE", f"/api/v1/rooms/{room['id']}/members/{erin['user']['id']}",
                                    token=dave["access_token"])
            assert status in (200, 204)
            await asyncio.sleep(0.2)
            assert (await erin_b.call("subscribe", channel=channel))["error"]["code"] == "forbidden"
            for client in (second, third, erin_b):
                client.close()

        asyncio.run(scenario())
    finally:
        stop(servers)


def test_presence_is_the_union_over_processes_and_a_dead_process_leaves_it(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """Users on two processes: presence lists both, joins are pushed once per user; kill -9 of one process
    and its users are gone from presence within PRESENCE_TTL."""
    a, b = servers = deployment(store, database, redis, 2, PRESENCE_TTL="1")
    try:
        async def scenario() -> list[Any]:
            alice, bob, channel, alice_a, _bob_b = await alice_and_bob_in_a_room(a, b)
            bob_a = await Client.connect(a.url, bob["access_token"])  # bob's second socket, on the other process
            await bob_a.call("subscribe", channel=channel)
            joins = [(await alice_a.push(kind="join"))["user"]]
            try:
                joins.append((await alice_a.push(0.5, kind="join"))["user"])
            except TimeoutError:
                pass
            both = (await alice_a.call("presence", channel=channel))["result"]["users"]
            bob_a.close()
            await asyncio.sleep(0.3)
            still = (await alice_a.call("presence", channel=channel))["result"]["users"]  # bob is on B still
            b.stop(signal.SIGKILL)
            deadline = time.monotonic() + 10
            after = still
            while time.monotonic() < deadline:
                _, body = await _call(a.url, "GET", f"/api/v1/server/presence?channel={channel}", api_key=True)
                after = body["users"]
                if after == [alice["user"]["id"]]:
                    break
                await asyncio.sleep(0.2)
            alice_a.close()
            return [joins, both, still, after, alice["user"]["id"], bob["user"]["id"]]

        joins, both, still, after, alice_id, bob_id = asyncio.run(scenario())
        assert joins == [bob_id]  # bob joined once, for two sockets on two processes
        assert both == still == sorted([alice_id, bob_id])
        assert after == [alice_id]
    finally:
        stop(servers)


def test_processes_refuse_to_start_without_redis_url(store: StoreProcess, database: str) -> None:
    """--processes 2 without REDIS_URL: exit 2 and one line naming REDIS_URL."""
    server = ServerProcess(environment(store.uri, database, None), processes=2)
    assert server.proc.wait(30) == 2
    time.sleep(0.2)  # the reader thread takes the last line
    assert any("REDIS_URL" in line for line in server.errors)


def test_a_killed_worker_is_restarted_and_its_clients_resume_with_since(store: StoreProcess, database: str,
                                                                         redis: RedisProcess) -> None:
    """--processes 3: kill -9 of a worker; it is restarted, and its clients reconnect and resume with since;
    SIGTERM drains every worker and exits 0."""
    server = ServerProcess(environment(store.uri, database, redis.url), processes=3).start()
    try:
        workers = server.children()
        assert len(workers) == 3

        async def scenario() -> list[Any]:
            users = [await _signed_in(server.url, f"w{n}") for n in range(6)]
            clients = []
            for user in users:
                client = await Client.connect(server.url, user["access_token"])
                assert "result" in await client.call("subscribe", channel="feed:w")
                clients.append(client)
            for n in range(3):
                await _call(server.url, "POST", "/api/v1/server/publish", {"channel": "feed:w", "data": {"n": n}},
                            api_key=True)
            for client in clients:
                assert await _seqs(client, 3) == [1, 2, 3]
            _, stats = await _call(server.url, "GET", "/api/v1/server/stats", api_key=True)
            victim = next(p["pid"] for p in stats["processes"] if p["connections"])  # a worker holding clients
            os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(0.5)
            dropped = [(c, u) for c, u in zip(clients, users, strict=True) if c.closed or await _closed_now(c)]
            for n in range(3, 6):
                await _call(server.url, "POST", "/api/v1/server/publish", {"channel": "feed:w", "data": {"n": n}},
                            api_key=True)
            resumed = []
            for _, user in dropped:
                again = await Client.connect(server.url, user["access_token"])
                reply = (await again.call("subscribe", channel="feed:w", since=3))["result"]
                resumed.append([m["seq"] for m in reply["messages"]])
                again.close()
            for client in clients:
                client.close()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (len(server.children()) < 3 or victim in server.children()):
                await asyncio.sleep(0.2)
            return [len(dropped), resumed, server.children(), victim]

        dropped, resumed, now, victim = asyncio.run(scenario())
        assert dropped >= 1
        assert all(seqs == [4, 5, 6] for seqs in resumed)
        assert len(now) == 3 and victim not in now
        assert server.stop() == 0
    finally:
        server.stop()


async def _closed_now(client: Client) -> bool:
    try:
        await client.call("ping", timeout=1.0)
    except (ConnectionError, TimeoutError, WebSocketClosedError):
        return True
    return False
