"""Held sessions: many idle sessions in one server process, each subscribed to
one of 100 rooms and to one shared feed, pings on.

    python bench/held_bench.py [--sessions 15000] [--rooms 100] [--workers 4] [--idle 30] [--profile]

Starts the server (embedded store; WS_PING_INTERVAL 25 s, as in production),
signs in ``--sessions`` / 5 users (five sockets each, the contract's
WS_MAX_PER_USER) and creates ``--rooms`` public rooms; ``--workers``
load-generator processes (bench/loadgen.py, answering every ping) open the
sessions, each subscribing to its room and to ``feed:all``. Printed: sessions
accepted per second during the ramp and the server's CPU per accepted session
(handshake, token check and both subscribes included); the server's RSS per
session (after minus before, divided); its CPU while the sessions sit idle for
``--idle`` seconds (a ping round included). With ``--profile`` the server also
prints where its Python memory went (tracemalloc, top allocation sites; this
slows the ramp and adds tracemalloc's own overhead to the RSS).

Bounds: loopback only; every process stops by itself; each process holds at most
20,000 descriptors here, so sessions are spread over load-generator processes,
each connecting from its own 127.0.0.N.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import benchserver
from bench.harness import Generators, public_rooms, ramp, sign_in

PER_USER = 5  # the contract's WS_MAX_PER_USER


def main(args: argparse.Namespace) -> None:
    print(f"# held sessions {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, Python "
          f"{platform.python_version()}): {args.sessions} sessions, each in one of {args.rooms} rooms and feed:all; "
          f"pings every 25 s; {args.workers} load-generator processes", flush=True)
    process, base = benchserver.start({"WS_PING_INTERVAL": "25"}, profile_memory=args.profile)
    pid = process.pid or 0
    users = (args.sessions + PER_USER - 1) // PER_USER
    tokens = asyncio.run(sign_in(base, users, "held"))
    rooms = asyncio.run(public_rooms(base, tokens, args.rooms))
    time.sleep(1)
    rss_before = benchserver.rss_kib(pid)
    cpu0, started = benchserver.cpu_seconds(pid), time.perf_counter()
    generators = Generators(base.replace("http", "ws", 1) + "/ws", tokens, "ours", args.sessions, args.workers,
                            rooms, 300 + args.sessions / 50 + args.idle, 1, shared=["feed:all"])
    try:
        held = ramp(generators, pid, cpu0, started, args.idle)
        opened, failed, rss_after, idle = held.opened, held.failed, held.rss_after, held.idle
        closed = generators.collect().closed
        print(f"ramp: {opened} sessions of {users} users ({failed} failed) in {held.seconds:.1f} s = "
              f"{opened / held.seconds:.0f} sessions/s; server CPU {held.cpu / max(opened, 1) * 1e6:.0f} us per "
              f"accepted session (handshake, "
              f"token check, two subscribes)", flush=True)
        print(f"held: server RSS {rss_before / 1024:.0f} MiB -> {rss_after / 1024:.0f} MiB = "
              f"{(rss_after - rss_before) / max(opened, 1):.1f} KiB per session; idle CPU {idle * 100:.1f}% of a core "
              f"over {args.idle:.0f} s; {closed} sessions closed meanwhile", flush=True)
    finally:
        generators.stop()
        process.terminate()
        process.join(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=15000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--profile", action="store_true", help="the server prints its top allocation sites")
    main(parser.parse_args())
