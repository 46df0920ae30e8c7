"""Chat: rooms of users who all publish, on the embedded store.

    python bench/chat_bench.py [--rooms 100] [--per-room 10] [--rates 0.5,1,2] [--seconds 10] [--workers 2]

Starts the server (embedded store), signs in ``--rooms`` x ``--per-room`` users,
creates ``--rooms`` public rooms, and opens one session per user subscribed to
its room (load-generator processes, bench/loadgen.py). Then, for each rate,
every user publishes that many messages a second (``publish`` over its socket,
with a cid) for ``--seconds``. Printed per rate: messages stored per second
(publishes acknowledged), deliveries per second, publish acknowledgement latency
p50/p99 (command sent to its reply), publish-to-delivery latency p50/p99, and
the server's CPU per stored message. Loopback only; every process stops by
itself.
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
from bench.harness import Generators, ms, public_rooms, sign_in


def main(args: argparse.Namespace) -> None:
    users = args.rooms * args.per_room
    print(f"# chat bench {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, Python "
          f"{platform.python_version()}): {args.rooms} rooms x {args.per_room} users, each publishing over its "
          f"socket; embedded store; {args.workers} load-generator processes", flush=True)
    process, base = benchserver.start({})
    pid = process.pid or 0
    tokens = asyncio.run(sign_in(base, users, "chat"))
    channels = asyncio.run(public_rooms(base, tokens, args.rooms))
    rates = [float(r) for r in args.rates.split(",")]
    generators = Generators(base.replace("http", "ws", 1) + "/ws", tokens, "ours", users, args.workers, channels,
                            120 + len(rates) * (args.seconds + 40), 1)
    try:
        opened, failed = generators.ready()
        print(f"{opened} sessions subscribed ({failed} failed)", flush=True)
        generators.collect()
        for rate in rates:
            cpu0, wall0 = benchserver.cpu_seconds(pid), time.perf_counter()
            generators.send(("publish", (rate, args.seconds)))
            acked = deliveries = refused = 0
            acks: list[float] = []
            latencies: list[float] = []
            last_progress, cpu_at = wall0, cpu0
            while True:
                time.sleep(0.25)
                counts = generators.collect()
                now = time.perf_counter()
                if counts.acked or counts.deliveries:
                    last_progress, cpu_at = now, benchserver.cpu_seconds(pid)
                acked += counts.acked
                refused += counts.refused
                deliveries += counts.deliveries
                acks += counts.ack_latencies
                latencies += counts.latencies
                if now - wall0 > args.seconds and (now - last_progress > 2 or now - wall0 > args.seconds + 30):
                    break
            wall = last_progress - wall0
            acks.sort()
            latencies.sort()
            print(f"{rate:4.1f} msg/s per user ({rate * users:.0f}/s asked): {acked / wall:7.0f} stored/s, "
                  f"{deliveries / wall:8.0f} deliveries/s, ack p50 {ms(acks, 0.5)} ms p99 {ms(acks, 0.99)} ms, "
                  f"delivery p50 {ms(latencies, 0.5)} ms p99 {ms(latencies, 0.99)} ms, server CPU "
                  f"{(cpu_at - cpu0) / max(acked, 1) * 1e6:.0f} us per stored message; {refused} refused",
                  flush=True)
    finally:
        generators.stop()
        process.terminate()
        process.join(15)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--per-room", type=int, default=10)
    parser.add_argument("--rates", default="0.5,1,2", help="messages per second per user")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    main(parser.parse_args())
