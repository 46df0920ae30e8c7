"""Review of issue 12: the Redis broker's background tasks survive a Redis restart."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from server.realtime.brokers.redis import RedisBroker
from tests.helpers.redis_process import RedisProcess
from tests.realtime.test_redis_broker import Events


def test_the_writer_survives_a_connection_lost_while_it_holds_a_publish_back(redis: RedisProcess) -> None:
    """Redis dies while a (delayed) publish waits to be sent: once Redis is back, it and later ones still go out."""
    async def scenario() -> Events:
        a = RedisBroker([redis.url], timeout=0.5, publish_delay=0.3)
        b = RedisBroker([redis.url], timeout=0.5)
        eb = Events()
        await a.start(Events())
        await b.start(eb)
        await b.subscribe("room:x")
        a.publish("room:x", 1, b"one")  # the writer now sleeps publish_delay before sending it
        await asyncio.sleep(0.05)
        redis.kill()  # the connection is dropped (and its client forgotten) during that sleep
        await asyncio.sleep(0.5)
        redis.start()
        deadline = asyncio.get_running_loop().time() + 5
        while not (a.up and b.up) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        a.publish("room:x", 2, b"two")
        while len(eb.messages) < 2 and asyncio.get_running_loop().time() < deadline + 3:
            await asyncio.sleep(0.02)
        await a.close()
        await b.close()
        return eb

    eb = asyncio.run(scenario())
    assert [seq for _, seq, _ in eb.messages] == [1, 2]


class _HangingRedis:
    """A TCP peer speaking Redis's protocol that answers PING (and the client's
    CLIENT SETINFO) but never confirms a SUBSCRIBE: a Redis that hangs mid-way,
    which a real redis-server cannot be made to do on cue."""

    def __init__(self) -> None:
        self.subscribes = 0  # SUBSCRIBE commands received, over every connection
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readline()  # *<n>\r\n, then n bulk strings: $<len>\r\n<bytes>\r\n
                if not header:
                    return
                words = []
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    words.append((await reader.readexactly(size + 2))[:-2].upper())
                if words[0] == b"PING":
                    writer.write(b"+PONG\r\n")
                elif words[0] == b"SUBSCRIBE":
                    self.subscribes += 1  # never confirmed
                else:
                    writer.write(b"+OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_closing_while_subscriptions_wait_for_redis_leaves_no_task_behind() -> None:
    """close() while a (re)connection waits for Redis to confirm its subscriptions: the connection's reader and
    pinger end with it, instead of living on and failing a second later ('Task exception was never retrieved')."""
    async def scenario() -> tuple[list[asyncio.Task[object]], list[dict[str, object]]]:
        errors: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        fake = _HangingRedis()
        broker = RedisBroker([await fake.start()], timeout=5.0)
        starting = asyncio.ensure_future(broker.start(Events()))
        deadline = asyncio.get_running_loop().time() + 5
        while not fake.subscribes and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert fake.subscribes, "the broker never subscribed"
        await broker.close()  # the connection waits for its SUBSCRIBE to be confirmed
        starting.cancel()
        await asyncio.sleep(1.3)  # past the pinger's first wake-up (PING_SECONDS)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await fake.close()
        return left, errors

    left, errors = asyncio.run(scenario())
    assert left == []
    assert errors == []


SPIN = """local t = redis.call('TIME') local start = t[1] * 1000000 + t[2]
repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - start > tonumber(ARGV[1])"""  # Redis busy


def test_a_loop_busy_past_redis_timeout_does_not_take_a_live_redis_for_down(redis: RedisProcess) -> None:
    """A worker whose loop is held longer than REDIS_TIMEOUT (here 0.3 s, held 0.8 s) while its calls are in
    flight: Redis answered in time, so presence and the broker still count it up, the answers are used, and
    nothing is rewritten or logged as unreachable."""
    from server.realtime.brokers.redis import RedisBroker as Broker
    from server.realtime.presence_redis import RedisPresence

    async def scenario() -> tuple[list[object], bool, bool, int]:
        loop = asyncio.get_running_loop()
        presence = RedisPresence([redis.url], "busy", timeout=0.3)
        broker, other = Broker([redis.url], timeout=0.3), Broker([redis.url], timeout=0.3)
        events = Events()
        await presence.start()
        await broker.start(Events())
        await other.start(events)
        await other.subscribe("room:busy")
        stall = Redis.from_url(redis.url)  # Redis busy for 150 ms, so the calls below are still unanswered
        busy = asyncio.ensure_future(stall.eval(SPIN, 0, 150_000))  # when this process's loop is then held
        await asyncio.sleep(0.02)
        calls = [asyncio.ensure_future(presence.add("room:busy", "u1")),
                 asyncio.ensure_future(presence.users("room:busy"))]
        broker.publish("room:busy", 1, b"one")
        await asyncio.sleep(0.03)  # the pipelines are sent, Redis still spinning
        loop.call_soon(time.sleep, 0.8)  # the loop is held, as by a long burst of work; Redis answers meanwhile
        answers = await asyncio.gather(*calls)
        await busy
        await stall.aclose()
        deadline = loop.time() + 5
        while not events.messages and loop.time() < deadline:
            await asyncio.sleep(0.02)
        up = presence.reachable and broker.up and other.up
        rewrote = bool(presence._stale)  # a failed call marks its shard stale: all entries written again
        await presence.close()
        await broker.close()
        await other.close()
        return answers, up, rewrote, len(events.messages)

    answers, up, rewrote, delivered = asyncio.run(scenario())
    assert answers == [True, ["u1"]]
    assert up and not rewrote and delivered == 1
