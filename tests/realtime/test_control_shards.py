"""Control messages over several Redis servers: sent through each, handled once (server/realtime/brokers/redis.py)."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from server.errors import CloseCode
from server.realtime.brokers.redis import CONTROL_WINDOW, RedisBroker, Seen
from tests.helpers.redis_process import RedisProcess, require_redis
from tests.helpers.servers import ServerProcess, environment
from tests.mongo_process import StoreProcess
from tests.realtime.test_processes import _call, _signed_in, stop
from tests.realtime.test_redis_broker import Events, _until
from tests.ws_client import Client


@given(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.integers(1, 60), st.integers(1, 3)),
                max_size=80), st.randoms())
def test_seen_lets_each_control_message_through_once_however_its_copies_interleave(
        sent: list[tuple[bytes, int, int]], order: object) -> None:
    """Copies of (sender, number) arriving in any order, each through up to three servers: exactly one is first."""
    copies = [(sender, number) for sender, number, times in sent for _ in range(times)]
    order.shuffle(copies)  # type: ignore[attr-defined]
    seen = Seen()
    firsts = [(sender, number) for sender, number in copies if seen.first(sender, number)]
    assert sorted(firsts) == sorted({(sender, number) for sender, number, _ in sent})


def test_seen_stays_bounded_and_drops_what_is_far_behind() -> None:
    """A sender's numbers are remembered within CONTROL_WINDOW of its newest; older ones count as seen."""
    seen = Seen()
    assert all(seen.first(b"a", n) for n in range(1, 10 * CONTROL_WINDOW))
    assert len(seen.senders[b"a"][1]) <= 2 * CONTROL_WINDOW + 1
    assert not seen.first(b"a", 5)  # late (or doubled): dropped


def test_control_reaches_every_process_once_through_two_servers_and_survives_losing_the_first(
        redis: RedisProcess) -> None:
    """With two Redis servers each control message arrives once; with the first killed, through the second."""
    second = RedisProcess(require_redis()).start()
    try:
        async def scenario() -> tuple[list[bytes], list[bytes]]:
            urls = [redis.url, second.url]
            a, b = RedisBroker(urls, timeout=0.5), RedisBroker(urls, timeout=0.5)
            eb = Events()
            await a.start(Events())
            await b.start(eb)
            a.publish_control(b'{"op":"one"}')
            await _until(lambda: len(eb.controls) == 1)
            await asyncio.sleep(0.2)  # the copy through the other server arrives meanwhile
            before = list(eb.controls)
            redis.kill()
            await _until(lambda: not a.shards[0].up)
            assert a.control_up
            a.publish_control(b'{"op":"two"}')
            await _until(lambda: len(eb.controls) == 2)
            after = list(eb.controls)
            await a.close()
            await b.close()
            return before, after

        before, after = asyncio.run(scenario())
        assert before == [b'{"op":"one"}']
        assert after == [b'{"op":"one"}', b'{"op":"two"}']
    finally:
        second.stop()


def test_disconnect_and_sign_out_reach_every_process_with_the_first_redis_killed(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """REDIS_URL lists two servers; kill -9 of the first: disconnect on A still closes B's socket (4000, counted)
    and sign-out on A still closes the session's socket on B (4001)."""
    second = RedisProcess(require_redis()).start()
    env = environment(store.uri, database, None, REDIS_URL=f"{redis.url},{second.url}", REDIS_TIMEOUT="0.5")
    a, b = servers = [ServerProcess(env).start(), ServerProcess(env).start()]
    try:
        async def scenario() -> tuple[int, int | None, int | None]:
            alice, bob = await _signed_in(a.url, "alice"), await _signed_in(a.url, "bob")
            bob_b = await Client.connect(b.url, bob["access_token"])
            alice_b = await Client.connect(b.url, alice["access_token"])
            await bob_b.call("ping")
            await alice_b.call("ping")
            redis.kill()
            await asyncio.sleep(1.5)  # both processes notice (pings every second)
            status, body = await _call(a.url, "POST", "/api/v1/server/disconnect", {"user_id": bob["user"]["id"]},
                                       api_key=True)
            assert status == 200
            bob_code = await bob_b.wait_closed()
            status, _ = await _call(a.url, "POST", "/api/v1/auth/logout", {"refresh_token": alice["refresh_token"]})
            assert status in (200, 204)
            alice_code = await alice_b.wait_closed()
            return body["closed"], bob_code, alice_code

        assert asyncio.run(scenario()) == (1, CloseCode.DISCONNECTED, CloseCode.TOKEN_INVALID)
    finally:
        stop(servers)
        second.stop()


def test_a_control_message_of_the_previous_version_is_still_handled(redis: RedisProcess) -> None:
    """During a rolling upgrade a process of the previous version sends "<node> <body>" (no number): it is
    handled once, as before, instead of being dropped as malformed."""
    import redis as redis_py

    from server.realtime.brokers.redis import CONTROL

    async def scenario() -> list[bytes]:
        broker = RedisBroker([redis.url], timeout=0.5)
        events = Events()
        await broker.start(events)
        old = redis_py.asyncio.Redis.from_url(redis.url)
        await old.publish(CONTROL, b'oldnode {"op":"close_sid","sid":"s1"}')
        await _until(lambda: events.controls)
        await old.aclose()
        await broker.close()
        return events.controls

    assert asyncio.run(scenario()) == [b'{"op":"close_sid","sid":"s1"}']
