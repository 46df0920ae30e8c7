"""Fan-out: one feed with many subscribers, messages published at rising rates;
this server beside its peers, in the same run.

    python bench/fanout_bench.py [--subscribers 10000] [--workers 3] [--rates 10,100,1000]
                                 [--servers ours,tornado,socketio,websockets]

For each server in turn (this one on its embedded store; then a plain Tornado
``write_message`` loop, python-socketio's ``emit`` to a room, and the
``websockets`` library's ``broadcast()``, see bench/peers.py), ``--workers``
load-generator processes (bench/loadgen.py) open ``--subscribers`` sessions on
the feed. Printed: the ramp (sessions/s; server CPU per accepted session, for
this server token check and subscribe included), RSS per held session, idle
CPU; then for each rate: deliveries per second sustained, the server's CPU
microseconds per delivery (its own CPU time from /proc, which holds on a noisy
machine), publish-to-delivery latency p50/p99/max, and whether every session got
every message exactly once. A rate publishes at most ``--budget`` deliveries'
worth of messages (so a saturated server drains in bounded time); once a server
has not delivered a rate's messages within ``--drain`` seconds, its higher
rates are skipped. "Sustained" means every message reached every session once
and deliveries kept up with at least 90% of the rate asked. The last lines compare
every peer with this server.

Bounds: loopback only; every process stops by itself; each process may hold at
most 20,000 descriptors here, so sessions are spread over load-generator
processes, each connecting from its own 127.0.0.N source address. The load
generators share the machine's 2 cores with the server under test, so
deliveries/s is bounded by the machine; CPU per delivery is not.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import benchserver, peers
from bench.harness import API_KEY, Generators, ms, publish_at, ramp, sign_in
from bench.loadgen import PAD

CHANNEL = "feed:bench"
RSS_LIMIT_KIB = 8 * 1024 * 1024  # a server past this is stopped: these machines have 24 GiB


def start(kind: str, subscribers: int) -> tuple[multiprocessing.Process, str, str, str, str]:
    """A server: its process, publish URL, WebSocket URL, load-generator dialect, token."""
    if kind == "ours":
        process, base = benchserver.start({"API_KEYS": API_KEY, "WS_MAX_PER_USER": str(subscribers + 10),
                                           "WS_PING_INTERVAL": str(peers.PING_SECONDS)})
        return (process, base + "/api/v1/server/publish", base.replace("http", "ws", 1) + "/ws", "ours",
                asyncio.run(sign_in(base, 1, "bench"))[0])
    process, base, ws_url, dialect = peers.start(kind)
    return process, base + "/publish", ws_url, dialect, ""


def body_for(kind: str, first: int) -> Any:
    """The publish body: ours gets channel and data (it numbers and stamps the
    message); a peer gets the whole message as ours would push it, numbered from
    ``first`` + 1."""
    def body(n: int) -> dict[str, Any]:
        data = {"t": time.time(), "n": n, "pad": PAD}
        if kind == "ours":
            return {"channel": CHANNEL, "data": data}
        return {"channel": CHANNEL, "seq": first + n + 1, "id": "%024x" % (first + n), "from": "server",
                "data": data, "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
    return body


def run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    rates = [int(r) for r in args.rates.split(",")]
    process, publish_url, ws_url, dialect, token = start(kind, args.subscribers)
    pid = process.pid or 0
    print(f"[{kind}] server pid {pid}", flush=True)
    figures: dict[str, Any] = {"server": kind, "rates": {}}
    rss_before = benchserver.rss_kib(pid)
    cpu0 = benchserver.cpu_seconds(pid)
    ramp_start = time.perf_counter()
    lifetime = 300 + args.subscribers / 20 + len(rates) * (args.drain + 60)
    generators = Generators(ws_url, [token], dialect, args.subscribers, args.workers, [CHANNEL], lifetime,
                            args.sample)
    try:
        held = ramp(generators, pid, cpu0, ramp_start, 5)
        opened, failed, rss_after, idle = held.opened, held.failed, held.rss_after, held.idle
        ramp_seconds, ramp_cpu = held.seconds, held.cpu
        figures.update(opened=opened, ramp_rate=opened / ramp_seconds, accept_us=ramp_cpu / max(opened, 1) * 1e6,
                       rss_kib=(rss_after - rss_before) / max(opened, 1), idle=idle)
        print(f"[{kind}] ramp: {opened} sessions ({failed} failed) in {ramp_seconds:.1f} s = "
              f"{opened / ramp_seconds:.0f}/s, "
              f"server CPU {ramp_cpu / max(opened, 1) * 1e6:.0f} us per accepted session; RSS "
              f"{rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB = {figures['rss_kib']:.1f} KiB per session; "
              f"idle CPU {idle * 100:.1f}% of a core", flush=True)
        generators.collect()
        headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
        numbered = 0  # messages published so far (peers are told each one's seq)
        for rate in rates:
            seconds = min(args.seconds, args.budget / (rate * max(opened, 1)))
            cpu0, wall0 = benchserver.cpu_seconds(pid), time.perf_counter()
            system0 = benchserver.cpu_times(pid)[1]
            sent, timed_out = asyncio.run(publish_at(publish_url, rate, seconds, body_for(kind, numbered), headers))
            numbered += sent
            published = time.perf_counter() - wall0
            expected = (sent - timed_out) * opened
            deliveries, latencies, by_seq, reordered, closed = 0, [], {}, 0, 0  # type: ignore[var-annotated]
            last_progress, cpu_at_progress = time.perf_counter(), benchserver.cpu_seconds(pid)
            system_at_progress = benchserver.cpu_times(pid)[1]
            while True:
                counts = generators.collect()
                now = time.perf_counter()
                if counts.deliveries:
                    last_progress, cpu_at_progress = now, benchserver.cpu_seconds(pid)
                    system_at_progress = benchserver.cpu_times(pid)[1]
                deliveries += counts.deliveries
                latencies += counts.latencies
                reordered += counts.doubled  # a seq at or below the last one the session saw
                closed += counts.closed
                for seq, n in counts.by_seq.items():
                    by_seq[seq] = by_seq.get(seq, 0) + n
                if deliveries >= expected or now - last_progress > 3 or now - wall0 > args.drain:
                    break
                if benchserver.rss_kib(pid) > RSS_LIMIT_KIB:
                    print(f"[{kind}] RSS past {RSS_LIMIT_KIB // 1024} MiB: stopped", flush=True)
                    break
                time.sleep(0.5)
            wall = last_progress - wall0
            cpu = cpu_at_progress - cpu0
            latencies.sort()
            complete = sum(1 for n in by_seq.values() if n == opened)
            doubled = sum(max(0, n - opened) for n in by_seq.values())
            sustained = (timed_out == 0 and complete == sent - timed_out and not doubled
                         and deliveries / max(wall, 1e-9) >= 0.9 * rate * opened)
            per = cpu / max(deliveries, 1) * 1e6
            kernel = (system_at_progress - system0) / max(deliveries, 1) * 1e6
            figures["rates"][rate] = {"deliveries_s": deliveries / max(wall, 1e-9), "us": per,
                                      "p50": ms(latencies, 0.5), "p99": ms(latencies, 0.99),
                                      "sustained": sustained}
            print(f"[{kind}] {rate:5d} msg/s asked, {sent} published in {published:.1f} s: "
                  f"{deliveries / max(wall, 1e-9):8.0f} deliveries/s, {per:6.2f} us server CPU per delivery "
                  f"({kernel:.2f} in the kernel), "
                  f"latency p50 {ms(latencies, 0.5)} ms p99 {ms(latencies, 0.99)} ms max "
                  f"{(latencies[-1] if latencies else float('nan')) * 1e3:.1f} ms; {complete}/{sent} messages to "
                  f"every session, {doubled} received twice, {reordered} after a later one, {closed} sessions closed, "
                  f"{timed_out} publishes failed; "
                  f"{'sustained' if sustained else 'NOT sustained'}", flush=True)
            if complete < sent - timed_out:
                break  # not even delivered within --drain: a higher rate would only queue more
    finally:
        generators.stop()
        process.terminate()
        process.join(15)
    return figures


def main(args: argparse.Namespace) -> None:
    servers = args.servers.split(",")
    print(f"# fan-out bench {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()}): {args.subscribers} subscribers of one feed from {args.workers} "
          f"load-generator processes; messages of ~250 bytes on the wire; servers: {', '.join(servers)}",
          flush=True)
    results = [run(kind, args) for kind in servers]
    ours = next((r for r in results if r["server"] == "ours"), None)
    if ours is None:
        return
    print("# compared with this server (same run, same machine, same subscribers and messages)")
    for result in results:
        if result is ours:
            continue
        line = [f"{result['server']:>10}: accept {result['accept_us']:.0f} us vs {ours['accept_us']:.0f}, "
                f"RSS {result['rss_kib']:.1f} KiB/session vs {ours['rss_kib']:.1f}"]
        for rate, theirs in result["rates"].items():
            mine = ours["rates"].get(rate)
            if mine is None:
                continue
            speed = mine["deliveries_s"] / max(theirs["deliveries_s"], 1)
            cheaper = theirs["us"] / max(mine["us"], 1e-9)
            line.append(f"{rate} msg/s: {theirs['deliveries_s']:.0f} deliveries/s (ours {mine['deliveries_s']:.0f}, "
                        f"x{speed:.2f}), {theirs['us']:.2f} us/delivery (ours {mine['us']:.2f}, x{cheaper:.2f} less)")
        print("; ".join(line), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per rate, at most")
    parser.add_argument("--budget", type=int, default=2_000_000, help="deliveries' worth of messages per rate, at most")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds a rate may take to deliver everything")
    parser.add_argument("--rates", default="10,100,1000")
    parser.add_argument("--servers", default="ours," + ",".join(peers.PEERS))
    parser.add_argument("--sample", type=int, default=10,
                        help="every delivery is counted by seq; every Nth one's latency is kept (1: all, which costs "
                             "the load generators about a quarter of their capacity here)")
    main(parser.parse_args())
