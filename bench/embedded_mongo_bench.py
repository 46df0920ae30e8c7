"""Benchmarks of the embedded store through motor, with baselines from the same run.

Prints: acknowledged single inserts per second (1 client, and 8 concurrent
clients), history-page and unique-lookup latency p50/p99 at --docs documents,
and the store process's memory. Every figure is printed beside a baseline
measured in the same run (a no-op ``ping`` through the same driver), because
these machines are noisy: the ratio is the figure to compare across runs.

    python bench/embedded_mongo_bench.py [--docs 1000000] [--channels 1000]
    python bench/embedded_mongo_bench.py --admin-scan [--docs 1000000] [--data-dir DIR]

``--admin-scan`` measures instead the publish-acknowledgement p99 through the
real server with and without an admin scanning every message (bench/admin_scan.py).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from typing import Any

from bson import ObjectId
from motor.motor_asyncio import AsyncIOMotorClient

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.benchserver import cpu_seconds
from embedded_mongo.launcher import ChildStore


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _client_process(uri: str, kind: str, count: int, ready: Any, go: Any, out: Any) -> None:
    """One load-generating process: ``count`` sequential pings or inserts."""
    async def run() -> None:
        client: AsyncIOMotorClient = AsyncIOMotorClient(uri)
        await client.admin.command("ping")
        ready.set()
        go.wait()
        for i in range(count):
            if kind == "ping":
                await client.admin.command("ping")
            else:
                await client.bench.multi.insert_one({"i": i, "data": {"t": "hi"}})
        client.close()

    asyncio.run(run())
    out.put(count)


def processes_rate(uri: str, kind: str, processes: int, count: int) -> float:
    """Operations per second from ``processes`` client processes at once."""
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(processes)]
    workers = [ctx.Process(target=_client_process, args=(uri, kind, count, r, go, out)) for r in readies]
    for w in workers:
        w.start()
    for r in readies:
        r.wait(60)
    start = time.perf_counter()
    go.set()
    done = sum(out.get(timeout=600) for _ in workers)
    elapsed = time.perf_counter() - start
    for w in workers:
        w.join()
    return done / elapsed


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


async def timed(op, count: int) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - start)
    return samples


async def main(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="embedded-mongo-bench-")
    store = ChildStore(os.path.join(workdir, "db")).start()
    pid = store.proc.pid  # type: ignore[union-attr]
    print(f"# embedded_mongo bench {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
          f"({os.cpu_count()} cores, Python {platform.python_version()}); store pid {pid}")
    client: AsyncIOMotorClient = AsyncIOMotorClient(store.uri)
    db = client.bench
    try:
        await db.command("ping")
        base = memory_kib(pid)

        # 1. acknowledged single inserts, one client, against ping round trips
        cpu = cpu_seconds(pid)
        ping = await timed(lambda i: client.admin.command("ping"), args.ops)
        ping_cpu = (cpu_seconds(pid) - cpu) / args.ops
        cpu = cpu_seconds(pid)
        inserts = await timed(lambda i: db.single.insert_one({"i": i, "channel": "room:1", "data": {"t": "hi"}}),
                              args.ops)
        insert_cpu = (cpu_seconds(pid) - cpu) / args.ops
        ping_rate, insert_rate = len(ping) / sum(ping), len(inserts) / sum(inserts)
        print(f"1 client : {insert_rate:8.0f} inserts/s   ping baseline {ping_rate:8.0f}/s   "
              f"ratio {insert_rate / ping_rate:.2f}")
        print(f"store CPU per acknowledged insert {insert_cpu * 1e6:.0f} us (per ping {ping_cpu * 1e6:.0f} us): "
              f"one core of the store sustains about {1 / insert_cpu:.0f} inserts/s")

        # 2. eight clients, each its own process (one process's motor would be the bottleneck)
        per = max(args.ops // 4, 100)
        ping8 = processes_rate(store.uri, "ping", 8, per)
        cpu = cpu_seconds(pid)
        insert8 = processes_rate(store.uri, "insert", 8, per)
        insert8_cpu = (cpu_seconds(pid) - cpu) / (8 * per)
        print(f"8 clients: {insert8:8.0f} inserts/s   ping baseline {ping8:8.0f}/s   ratio {insert8 / ping8:.2f}   "
              f"(store CPU {insert8_cpu * 1e6:.0f} us per insert; 8 client processes share the 2 cores)")

        # 3. a message history of --docs documents in --channels channels
        messages = db.messages
        await messages.create_index([("channel", 1), ("seq", 1)], unique=True)
        per_channel = args.docs // args.channels
        start = time.perf_counter()
        batch = []
        for seq in range(1, per_channel + 1):
            for ch in range(args.channels):
                batch.append({"channel": f"room:{ch}", "seq": seq, "from": "u1", "data": {"text": "hello"},
                              "ts": time.time()})
                if len(batch) >= 10000:
                    await messages.insert_many(batch, ordered=False)
                    batch = []
        if batch:
            await messages.insert_many(batch, ordered=False)
        load = time.perf_counter() - start
        total = await messages.estimated_document_count()
        print(f"loaded {total} messages in {args.channels} channels in {load:.1f} s ({total / load:.0f} docs/s, "
              "batches of 10,000)")
        users = db.users
        await users.create_index("openid", unique=True)
        await users.insert_many([{"openid": f"o{i:07d}", "created_at": time.time()} for i in range(args.users)])

        async def history(i: int) -> None:
            channel = f"room:{random.randrange(args.channels)}"
            page = await messages.find({"channel": channel}).sort("seq", -1).limit(50).to_list(50)
            assert len(page) == min(50, per_channel)

        async def lookup(i: int) -> None:
            doc = await users.find_one({"openid": f"o{random.randrange(args.users):07d}"})
            assert doc is not None

        async def by_id(i: int) -> None:
            await messages.find_one({"_id": ObjectId()})

        ping_lat = await timed(lambda i: client.admin.command("ping"), args.samples)
        hist_lat = await timed(history, args.samples)
        look_lat = await timed(lookup, args.samples)
        id_lat = await timed(by_id, args.samples)
        plan = (await messages.find({"channel": "room:1"}).sort("seq", -1).limit(50).explain())["queryPlanner"]
        p_ping = percentiles(ping_lat)
        for name, samples in (("history page (50 of a channel, by seq desc)", hist_lat),
                              ("unique lookup (users.openid)", look_lat), ("_id lookup (miss)", id_lat)):
            p50, p99 = percentiles(samples)
            print(f"{name:44s} p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms   "
                  f"(ping p50 {p_ping[0] * 1e3:.2f} ms p99 {p_ping[1] * 1e3:.2f} ms; p99 ratio "
                  f"{p99 / p_ping[1]:.2f})")
        print(f"history plan: {plan['winningPlan']}")
        print(f"history mean {statistics.mean(hist_lat) * 1e3:.2f} ms over {len(hist_lat)} queries")
        mem = memory_kib(pid)
        print(f"store memory: RSS {mem['VmRSS'] / 1024:.0f} MiB (peak {mem['VmHWM'] / 1024:.0f} MiB; "
              f"{base['VmRSS'] / 1024:.0f} MiB before loading); data file "
              f"{os.path.getsize(os.path.join(workdir, 'db', 'store.sqlite3')) / 2**20:.0f} MiB")
    finally:
        client.close()
        store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="messages to load (default 1,000,000)")
    parser.add_argument("--channels", type=int, default=1000, help="channels they spread over (default 1,000)")
    parser.add_argument("--users", type=int, default=100_000, help="users for the unique lookup (default 100,000)")
    parser.add_argument("--ops", type=int, default=3000, help="single inserts per client test (default 3,000)")
    parser.add_argument("--samples", type=int, default=2000, help="queries per latency figure (default 2,000)")
    parser.add_argument("--admin-scan", action="store_true",
                        help="publish p99 through the server while an admin scans --docs messages")
    parser.add_argument("--sort-too", action="store_true", help="--admin-scan: then an unindexed sort of them all")
    parser.add_argument("--data-dir", help="--admin-scan: keep (or reuse) the loaded store here")
    parser.add_argument("--admins", type=int, default=1,
                        help="--admin-scan: admins scanning at once (4 takes every reader thread the store keeps)")
    parser.add_argument("--rooms", type=int, default=20, help="--admin-scan: rooms publishing (default 20)")
    parser.add_argument("--per-room", type=int, default=5, help="--admin-scan: users per room (default 5)")
    parser.add_argument("--rate", type=float, default=2.0, help="--admin-scan: messages/s per user (default 2)")
    parser.add_argument("--seconds", type=float, default=15.0, help="--admin-scan: seconds without the admin")
    arguments = parser.parse_args()
    if arguments.admin_scan:
        from bench.admin_scan import run

        run(arguments)
    else:
        asyncio.run(main(arguments))
