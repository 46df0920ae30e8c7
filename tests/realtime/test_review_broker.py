"""Review of issue 12: the Redis broker's background tasks survive a Redis restart."""

from __future__ import annotations

import asyncio

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
