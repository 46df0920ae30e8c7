"""A process shut down gracefully (SIGTERM) tells the others who left with it."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from tests.helpers.redis_process import RedisProcess
from tests.mongo_process import StoreProcess
from tests.realtime.test_processes import _call, _signed_in, deployment, stop
from tests.ws_client import Client


def test_a_process_stopped_with_sigterm_pushes_the_leave_of_its_users(store: StoreProcess, database: str,
                                                                       redis: RedisProcess) -> None:
    """Alice's only socket is on A, Bob's on B, both in one room; SIGTERM to A: Bob is told Alice left (once)
    right away, not after PRESENCE_TTL, because A waits for its presence calls before closing the broker."""
    a, b = servers = deployment(store, database, redis, 2, PRESENCE_TTL="30")
    try:
        async def scenario() -> list[Any]:
            alice, bob = await _signed_in(a.url, "alice"), await _signed_in(b.url, "bob")
            _, room = await _call(a.url, "POST", "/api/v1/rooms", {"name": "r", "public": True},
                                  token=alice["access_token"])
            channel = f"room:{room['id']}"
            alice_a = await Client.connect(a.url, alice["access_token"])
            await alice_a.call("subscribe", channel=channel)
            bob_b = await Client.connect(b.url, bob["access_token"])
            await bob_b.call("subscribe", channel=channel)
            a.proc.send_signal(signal.SIGTERM)
            leave = await bob_b.push(5.0, kind="leave")  # PRESENCE_TTL is 30 s: only A's own call can say it
            present = (await bob_b.call("presence", channel=channel))["result"]["users"]
            bob_b.close()
            return [leave["user"], present, alice["user"]["id"], bob["user"]["id"], a.proc.wait(30)]

        left, present, alice_id, bob_id, code = asyncio.run(scenario())
        assert left == alice_id
        assert present == [bob_id]
        assert code == 0
    finally:
        stop(servers)
