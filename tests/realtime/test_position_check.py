"""A publisher that dies between storing a message and publishing it to Redis: the other processes find the
message by their position check (POSITION_CHECK), in a channel where nothing else is published."""

from __future__ import annotations

import asyncio
import signal

from tests.helpers.redis_process import RedisProcess
from tests.helpers.servers import ServerProcess, call, environment, sign_in
from tests.mongo_process import StoreProcess
from tests.ws_client import Client


def test_a_message_its_publisher_never_sent_to_redis_reaches_a_quiet_channels_subscribers(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """kill -9 of the publishing process while its Redis publish is held back: the subscriber on the other
    process still gets the acknowledged message, once, though no later message opens a gap."""
    quick = {"POSITION_CHECK": "0.5"}
    dying = ServerProcess(environment(store.uri, database, redis.url, REDIS_PUBLISH_DELAY="5", **quick)).start()
    living = ServerProcess(environment(store.uri, database, redis.url, **quick)).start()
    try:
        async def scenario() -> list[int]:
            alice = await asyncio.to_thread(sign_in, living.url, "alice")
            subscriber = await Client.connect(living.url, alice["access_token"])
            assert "result" in await subscriber.call("subscribe", channel="feed:quiet")
            status, body = await asyncio.to_thread(call, dying.url, "POST", "/api/v1/server/publish",
                                                   {"channel": "feed:quiet", "data": {"n": 1}}, api_key=True)
            assert (status, body["seq"]) == (200, 1)  # stored and acknowledged; held back from Redis
            dying.stop(signal.SIGKILL)
            seqs = [m["seq"] for m in await subscriber.messages(1, 10.0)]
            try:
                await subscriber.push(1.5)
                seqs.append(-1)  # anything more is wrong
            except TimeoutError:
                pass
            subscriber.close()
            return seqs

        assert asyncio.run(scenario()) == [1]
    finally:
        living.stop()
        dying.stop()
