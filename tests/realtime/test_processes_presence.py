"""Presence and the deployment's figures when a server process dies: real run.py processes on a real Redis."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from tests.helpers.redis_process import RedisProcess
from tests.mongo_process import StoreProcess
from tests.realtime.test_processes import _call, _signed_in, deployment, stop
from tests.ws_client import Client

TTL = 2  # PRESENCE_TTL of these processes: a dead one's leaves come within TTL + TTL / 3 of its death
BOUND = TTL + TTL / 3


def test_a_killed_process_users_get_their_leave_once_and_stats_count_distinct_users(
        store: StoreProcess, database: str, redis: RedisProcess) -> None:
    """kill -9 of A: a member on B gets a leave for the user whose only socket was on A (within the bound), none
    for the user who also has a socket on B; presence and stats' distinct users no longer count the first."""
    a, b = servers = deployment(store, database, redis, 2, PRESENCE_TTL=str(TTL))
    try:
        async def scenario() -> dict[str, Any]:
            alice, bob, carol = [await _signed_in(a.url, name) for name in ("alice", "bob", "carol")]
            _, room = await _call(a.url, "POST", "/api/v1/rooms", {"name": "r", "public": True},
                                  token=alice["access_token"])
            channel = f"room:{room['id']}"
            sockets = [await Client.connect(server.url, user["access_token"])
                       for server, user in ((a, alice), (a, carol), (b, carol), (b, bob))]
            for client in sockets:
                assert "result" in await client.call("subscribe", channel=channel)
            bob_b = sockets[-1]
            _, before = await _call(b.url, "GET", "/api/v1/server/stats", api_key=True)
            a.stop(signal.SIGKILL)
            leave = await bob_b.push(BOUND + 5, kind="leave")  # the bound, and slack for a loaded machine
            try:
                second: Any = await bob_b.push(1.5, kind="leave")
            except TimeoutError:
                second = None
            _, present = await _call(b.url, "GET", f"/api/v1/server/presence?channel={channel}", api_key=True)
            _, after = await _call(b.url, "GET", "/api/v1/server/stats", api_key=True)
            for client in sockets:
                client.close()
            return {"before": before, "leave": leave["user"], "second": second, "present": present["users"],
                    "after": after, "alice": alice["user"]["id"], "ids": sorted(u["user"]["id"] for u in
                                                                                (bob, carol))}

        seen = asyncio.run(scenario())
        assert seen["leave"] == seen["alice"]
        assert seen["second"] is None  # carol still has her socket on B
        assert seen["present"] == seen["ids"]
        before, after = seen["before"], seen["after"]
        assert [p["users"] for p in before["processes"]] == [2, 2]  # per process: as before
        assert before["users"] == 3  # carol once, though on both processes
        assert after["users"] == 2 and len(after["processes"]) == 1  # alice's sockets reaped with A
    finally:
        stop(servers)
