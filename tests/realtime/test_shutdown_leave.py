"""A process shut down gracefully (SIGTERM) tells the others who left with it."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from tests.helpers.redis_process import RedisProcess
from tests.mongo_process import StoreProcess
from tests.realtime.test_processes import alice_and_bob_in_a_room, deployment, stop


def test_a_process_stopped_with_sigterm_pushes_the_leave_of_its_users(store: StoreProcess, database: str,
                                                                       redis: RedisProcess) -> None:
    """Alice's only socket is on A, Bob's on B, both in one room; SIGTERM to A: Bob is told Alice left (once)
    right away, not after PRESENCE_TTL, because A waits for its presence calls before closing the broker."""
    a, b = servers = deployment(store, database, redis, 2, PRESENCE_TTL="30")
    try:
        async def scenario() -> list[Any]:
            alice, bob, channel, _alice_a, bob_b = await alice_and_bob_in_a_room(a, b)
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
