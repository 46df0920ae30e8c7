"""Fan-out: one feed with many subscribers, published through the server API at
rising rates.

    python bench/fanout_bench.py [--subscribers 10000] [--workers 4] [--seconds 10] [--rates 10,100,1000]

Starts the server (embedded store) in a child process and ``--workers``
load-generator processes (bench/loadgen.py) that open ``--subscribers``
authenticated sessions between them, all subscribed to ``feed:bench``. Then, for
each rate, publishes for ``--seconds`` and prints: deliveries per second
sustained, the server's CPU microseconds per delivery (from its own CPU time,
which holds on a noisy machine), publish-to-delivery latency p50/p99/max, and
whether every session got every message once. Also the ramp (sessions accepted
per second, token check included) and the server's RSS per session.

Bounds: loopback only; every process stops by itself after its time; each process
holds at most 20,000 descriptors here, so sessions are spread over workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import benchserver
from bench.loadgen import run_worker

API_KEY = "bench-api-key"


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


async def publish_at(base: str, rate: int, seconds: float) -> tuple[int, int]:
    """Publishes to feed:bench at ``rate`` per second for ``seconds``; returns how
    many were sent and how many failed (an overloaded server times them out)."""
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient(max_clients=64, defaults={"request_timeout": 120, "connect_timeout": 30})
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    start = time.perf_counter()
    sent = 0
    pending: set[asyncio.Future[object]] = set()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            body = json.dumps({"channel": "feed:bench", "data": {"t": time.time(), "n": sent, "pad": "x" * 100}})
            pending.add(asyncio.ensure_future(http.fetch(base + "/api/v1/server/publish", method="POST",
                                                         body=body, headers=headers)))
            sent += 1
        done = {f for f in pending if f.done()}
        pending -= done
        failed_early = sum(1 for f in done if f.exception() is not None)
        if failed_early:
            print(f"  {failed_early} publishes failed", flush=True)
        await asyncio.sleep(min(0.005, 1 / rate))
    failed = 0
    if pending:
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            failed += isinstance(outcome, Exception)
    return sent, failed


def main(args: argparse.Namespace) -> None:
    import urllib.request

    rates = [int(r) for r in args.rates.split(",")]
    # Time enough for the ramp at a slow 40 sessions/s, then each rate's run.
    total_seconds = 120 + args.subscribers / 40 + len(rates) * (args.seconds + 30)
    server, base = benchserver.start({"API_KEYS": API_KEY, "WS_MAX_PER_USER": str(args.subscribers + 10),
                                      "WS_PING_INTERVAL": "25"})
    pid = server.pid or 0
    request = urllib.request.Request(base + "/api/v1/auth/dev", data=b'{"name": "bench"}',
                                     headers={"Content-Type": "application/json"}, method="POST")
    token = json.loads(urllib.request.urlopen(request).read())["access_token"]
    print(f"# fan-out bench {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()}); {args.subscribers} sessions on feed:bench from {args.workers} "
          f"load-generator processes; server pid {pid}; messages of ~140 bytes")
    rss_before = benchserver.rss_kib(pid)
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    commands = [ctx.Queue() for _ in range(args.workers)]
    per_worker = [args.subscribers // args.workers + (1 if i < args.subscribers % args.workers else 0)
                  for i in range(args.workers)]
    url = base.replace("http", "ws", 1) + "/ws"
    cpu_ramp = benchserver.cpu_seconds(pid)
    ramp_start = time.perf_counter()
    workers = [ctx.Process(target=run_worker, args=(url, token, n, ["feed:bench"], total_seconds, commands[i],
                                                    reports, args.sample), daemon=True)
               for i, n in enumerate(per_worker)]
    for worker in workers:
        worker.start()
    opened = failed = 0
    for _ in workers:
        _, ok, bad, _ = reports.get(timeout=total_seconds)
        opened, failed = opened + ok, failed + bad
    ramp = time.perf_counter() - ramp_start
    ramp_cpu = benchserver.cpu_seconds(pid) - cpu_ramp
    time.sleep(2)
    rss_after = benchserver.rss_kib(pid)
    idle_cpu = benchserver.cpu_seconds(pid)
    time.sleep(5)
    idle = (benchserver.cpu_seconds(pid) - idle_cpu) / 5
    print(f"ramp: {opened} sessions subscribed ({failed} failed) in {ramp:.1f} s = {opened / ramp:.0f} sessions/s "
          f"(server CPU {ramp_cpu / max(opened, 1) * 1e6:.0f} us per session accepted, token check included)")
    print(f"held: server RSS {rss_before / 1024:.0f} MiB -> {rss_after / 1024:.0f} MiB: "
          f"{(rss_after - rss_before) / max(opened, 1):.1f} KiB per session; idle CPU {idle * 100:.1f}% of a core")
    for rate in rates:
        for queue in commands:
            queue.put("report")  # reset the counters
        for _ in workers:
            reports.get(timeout=60)
        cpu0 = benchserver.cpu_seconds(pid)
        wall0 = time.perf_counter()
        sent, failed_publishes = asyncio.run(publish_at(base, rate, args.seconds))
        time.sleep(1.0 + args.subscribers / 5000)  # let the last deliveries land (~10,000/s here)
        wall = time.perf_counter() - wall0
        cpu = benchserver.cpu_seconds(pid) - cpu0
        for queue in commands:
            queue.put("report")
        deliveries, latencies, by_seq = 0, [], {}  # type: ignore[var-annotated]
        for _ in workers:
            _, count, sample, seqs = reports.get(timeout=60)
            deliveries += count
            latencies += sample
            for seq, n in seqs.items():
                by_seq[seq] = by_seq.get(seq, 0) + n
        latencies.sort()
        complete = sum(1 for n in by_seq.values() if n == opened)
        print(f"{rate:5d} msg/s asked, {sent / args.seconds:7.1f} published: {deliveries / wall:9.0f} deliveries/s, "
              f"{cpu / max(deliveries, 1) * 1e6:6.2f} us server CPU per delivery, latency p50 "
              f"{percentile(latencies, 0.5) * 1e3:7.1f} ms p99 {percentile(latencies, 0.99) * 1e3:7.1f} ms "
              f"max {(latencies[-1] if latencies else float('nan')) * 1e3:7.1f} ms; "
              f"{complete}/{len(by_seq)} messages reached every session; {failed_publishes} publishes timed out")
    for queue in commands:
        queue.put("stop")
    for worker in workers:
        worker.join(30)
    server.terminate()
    server.join(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="10,100,1000")
    parser.add_argument("--sample", type=int, default=10, help="parse every Nth delivery for its latency")
    main(parser.parse_args())
