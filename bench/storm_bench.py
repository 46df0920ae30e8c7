"""Reconnect storm: every subscribed session dropped at once, messages published
while they are away, every session back with ``since``.

    python bench/storm_bench.py [--sessions 10000] [--missed 100] [--workers 4] [--baseline]

Starts the server (embedded store), signs in ``--sessions`` / 5 users (five
sockets each, the contract's WS_MAX_PER_USER) and opens ``--sessions`` sessions
from ``--workers`` load-generator processes, all subscribed to one feed. Then
every load generator aborts all its connections at once; ``--missed`` messages
are published through the server API while they are away; every session
reconnects (a new handshake with its token, then ``subscribe`` with ``since``
its last seq). Printed: seconds from the first reconnect until every session has
every missed message, the server's CPU per reconnected session, and messages
lost or received twice (there must be none). With ``--baseline`` the same storm
runs first against a server with the recent-messages cache and the token
vouching turned off (every replay read from MongoDB, every handshake two
lookups), for the ratio in the same run.

Bounds: loopback only; every process stops by itself; sessions are spread over
processes (20,000 descriptors each here), each from its own 127.0.0.N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import benchserver
from bench.harness import API_KEY, Generators, sign_in
from bench.loadgen import PAD

CHANNEL = "feed:storm"
PER_USER = 5  # the contract's WS_MAX_PER_USER


async def publish(base: str, count: int, channel: str = CHANNEL) -> int:
    """Publishes ``count`` messages to ``channel`` one after another; returns the last seq."""
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient()
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    seq = 0
    for n in range(count):
        reply = await http.fetch(base + "/api/v1/server/publish", method="POST", headers=headers,
                                 body=json.dumps({"channel": channel, "data": {"t": time.time(), "n": n, "pad": PAD}}))
        seq = json.loads(reply.body)["seq"]
    return seq


def merged_failures(each: Any) -> dict[str, int]:
    """The load generators' reasons for failed sessions, summed."""
    total: dict[str, int] = {}
    for reasons in each:
        for why, count in reasons.items():
            total[why] = total.get(why, 0) + count
    return total


def storm(args: argparse.Namespace, baseline: bool) -> dict[str, Any]:
    label = "baseline (no cache, no vouching)" if baseline else "this server"
    process, base = benchserver.start({"API_KEYS": API_KEY}, baseline=baseline)
    pid = process.pid or 0
    print(f"[{label}] server pid {pid}", flush=True)
    users = (args.sessions + PER_USER - 1) // PER_USER
    tokens = asyncio.run(sign_in(base, users, "storm"))
    asyncio.run(publish(base, 10))  # the feed has a history before the storm
    url = base.replace("http", "ws", 1) + "/ws"
    generators = Generators(url, tokens, "ours", args.sessions, args.workers, [CHANNEL], 600, 1)
    try:
        cpu0, started = benchserver.cpu_seconds(pid), time.perf_counter()
        opened, failed = generators.ready()
        ramp = time.perf_counter() - started
        print(f"[{label}] {opened} sessions of {users} users subscribed ({failed} failed) in {ramp:.1f} s, "
              f"server CPU {(benchserver.cpu_seconds(pid) - cpu0) / max(opened, 1) * 1e6:.0f} us per session",
              flush=True)
        generators.gather("drop", 60)
        time.sleep(2)  # the server sees every close
        last = asyncio.run(publish(base, args.missed))
        cpu0 = benchserver.cpu_seconds(pid)
        answers = generators.gather(("reconnect", last), 600)
        cpu = benchserver.cpu_seconds(pid) - cpu0
        back = sum(a[1] for a in answers)
        refused = sum(a[2] for a in answers)
        first = min(a[3] for a in answers)
        done = max(a[4] for a in answers)
        lost = sum(a[5] for a in answers)
        doubled = sum(a[6] for a in answers)
        delivered = sum(a[7] for a in answers)
        seconds = done - first
        print(f"[{label}] storm: {back} of {opened} sessions back ({refused} failed); every session had all "
              f"{args.missed} missed messages {seconds:.2f} s after the first reconnect; {delivered} messages "
              f"delivered (expected {back * args.missed}), {lost} lost, {doubled} received twice; server CPU "
              f"{cpu / max(back, 1) * 1e6:.0f} us per reconnected session", flush=True)
        why = merged_failures(a[8] for a in answers)
        if why:
            print(f"[{label}] why sessions failed: {why}", flush=True)
        return {"seconds": seconds, "cpu_us": cpu / max(back, 1) * 1e6, "lost": lost, "doubled": doubled}
    finally:
        generators.stop()
        process.terminate()
        process.join(15)


def main(args: argparse.Namespace) -> None:
    print(f"# reconnect storm {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()}): {args.sessions} sessions, {args.missed} messages missed, "
          f"{args.workers} load-generator processes", flush=True)
    before = storm(args, baseline=True) if args.baseline else None
    after = storm(args, baseline=False)
    if before is not None:
        print(f"# storm recovered x{before['seconds'] / max(after['seconds'], 1e-9):.1f} faster than the baseline, "
              f"server CPU per session x{before['cpu_us'] / max(after['cpu_us'], 1e-9):.1f} less", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--missed", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--baseline", action="store_true")
    main(parser.parse_args())
