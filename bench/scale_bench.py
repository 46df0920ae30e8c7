"""Several processes on Redis: the fan-out bench on one process vs two
processes with Redis, and the reconnect storm through two processes, in one run.

    python bench/scale_bench.py [--subscribers 10000] [--workers 3] [--rates 100,1000]
                                [--storm 10000] [--missed 100] [--parts fanout,storm]

Starts one embedded store and one redis-server (no persistence) on free ports,
then, for each setup, the real server with ``run.py`` (one process; then
``run.py --processes 2`` with REDIS_URL: two workers sharing the port with
SO_REUSEPORT, the kernel spreading sessions over them), each setup on a fresh
database. Fan-out: ``--subscribers`` sessions on one feed from ``--workers``
load-generator processes; for each rate, messages published through the server
API: deliveries per second, server CPU per delivery summed over the workers
(their own CPU time from /proc), Redis's CPU per publish, publish-to-delivery
latency p50/p99, and whether every session got every message exactly once.
The load generators' own CPU is printed too: on 2 cores, when server plus
generators use both cores, the generators are the bound, not the server.
Storm (one process, then two with Redis): ``--storm`` sessions dropped at once, ``--missed`` messages published
meanwhile, every session back with ``since``: seconds until each has every
missed message, messages lost or doubled (there must be none).

Bounds: loopback only; every process stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import benchserver
from bench.harness import API_KEY, Generators, ms, publish_at, sign_in
from bench.loadgen import PAD
from bench.storm_bench import publish
from embedded_mongo.launcher import ChildStore
from tests.helpers.redis_process import RedisProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNEL = "feed:bench"
_SERVING = re.compile(r"serving on http://([\d.]+):(\d+)/")


class Server:
    """``run.py`` (with ``--processes N`` when N > 1) on a port of its own."""

    def __init__(self, mongo_uri: str, redis_url: str | None, processes: int, per_user: int) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        env.update({"MONGO_URI": mongo_uri, "MONGO_DB": f"bench_{uuid.uuid4().hex[:8]}", "API_KEYS": API_KEY,
                    "DATA_DIR": tempfile.mkdtemp(prefix="bench-scale-"), "WS_MAX_PER_USER": str(per_user),
                    "JWT_SECRET": "bench-secret-" + "Qw3rTy7u" * 5, "MAX_CONNECTIONS": "19000"})
        if redis_url:
            env["REDIS_URL"] = redis_url
        args = ["--processes", str(processes)] if processes > 1 else []
        self.log = open(os.path.join(env["DATA_DIR"], "server.log"), "w")  # noqa: SIM115  (its logs, for a look)
        self.proc = subprocess.Popen([sys.executable, "run.py", "--port", "0", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)  # the server
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = _SERVING.search(line)
        if match is None:
            raise RuntimeError(f"run.py did not start: {line!r}")
        self.base = f"http://{match.group(1)}:{match.group(2)}"  # its URL
        self.pids = self._workers() if processes > 1 else [self.proc.pid]  # the processes doing the work

    def _workers(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        if int(stat.read().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                            found.append(int(entry))
                except OSError:
                    continue
        return found

    def cpu(self) -> float:
        return sum(benchserver.cpu_seconds(pid) for pid in self.pids)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def generators_cpu(generators: Generators) -> float:
    return sum(benchserver.cpu_seconds(p.pid or 0) for p in generators.processes)


def fanout(label: str, server: Server, redis: RedisProcess | None, args: argparse.Namespace) -> dict[int, Any]:
    token = asyncio.run(sign_in(server.base, 1, "bench"))[0]
    url = server.base.replace("http", "ws", 1) + "/ws"
    rates = [int(r) for r in args.rates.split(",")]
    generators = Generators(url, [token], "ours", args.subscribers, args.workers, [CHANNEL],
                            300 + args.subscribers / 20 + len(rates) * 120, args.sample)
    figures: dict[int, Any] = {}
    try:
        opened, failed = generators.ready()
        print(f"[{label}] {opened} sessions subscribed ({failed} failed) over {len(server.pids)} process(es)",
              flush=True)
        time.sleep(2)
        generators.collect()
        headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
        for rate in rates:
            seconds = min(args.seconds, args.budget / (rate * max(opened, 1)))
            cpu0, gen0 = server.cpu(), generators_cpu(generators)
            redis0 = benchserver.cpu_seconds(redis.proc.pid) if redis and redis.proc else 0.0
            wall0 = time.perf_counter()
            sent, timed_out = asyncio.run(publish_at(
                server.base + "/api/v1/server/publish", rate, seconds,
                lambda n: {"channel": CHANNEL, "data": {"t": time.time(), "n": n, "pad": PAD}}, headers))
            expected = (sent - timed_out) * opened
            deliveries, latencies, by_seq = 0, [], {}  # type: ignore[var-annotated]
            last = time.perf_counter()
            cpu_last, gen_last = server.cpu(), generators_cpu(generators)
            redis_last = benchserver.cpu_seconds(redis.proc.pid) if redis and redis.proc else 0.0
            while True:
                counts = generators.collect()
                now = time.perf_counter()
                if counts.deliveries:
                    last, cpu_last, gen_last = now, server.cpu(), generators_cpu(generators)
                    redis_last = benchserver.cpu_seconds(redis.proc.pid) if redis and redis.proc else 0.0
                deliveries += counts.deliveries
                latencies += counts.latencies
                for seq, n in counts.by_seq.items():
                    by_seq[seq] = by_seq.get(seq, 0) + n
                if deliveries >= expected or now - last > 3 or now - wall0 > args.drain:
                    break
                time.sleep(0.5)
            wall = last - wall0
            latencies.sort()
            complete = sum(1 for n in by_seq.values() if n == opened)
            doubled = sum(max(0, n - opened) for n in by_seq.values())
            per = (cpu_last - cpu0) / max(deliveries, 1) * 1e6
            gen_share = (gen_last - gen0) / max(wall, 1e-9)
            server_share = (cpu_last - cpu0) / max(wall, 1e-9)
            redis_per = (redis_last - redis0) / max(sent, 1) * 1e6
            figures[rate] = {"deliveries_s": deliveries / max(wall, 1e-9), "us": per, "redis_us": redis_per,
                             "p50": ms(latencies, 0.5), "p99": ms(latencies, 0.99)}
            print(f"[{label}] {rate} msg/s asked, {sent} published: {deliveries / max(wall, 1e-9):8.0f} deliveries/s, "
                  f"{per:5.2f} us server CPU per delivery (all workers), Redis {redis_per:.0f} us CPU per publish, "
                  f"latency p50 {ms(latencies, 0.5)} ms p99 {ms(latencies, 0.99)} ms; {complete}/{sent} messages to "
                  f"every session, {doubled} twice; CPU in use: server {server_share:.2f} cores, load generators "
                  f"{gen_share:.2f} cores (of {os.cpu_count()})", flush=True)
    finally:
        generators.stop()
    return figures


def storm(label: str, server: Server, args: argparse.Namespace) -> None:
    users = (args.storm + 4) // 5
    tokens = asyncio.run(sign_in(server.base, users, "storm"))
    asyncio.run(publish(server.base, 10, CHANNEL))
    url = server.base.replace("http", "ws", 1) + "/ws"
    generators = Generators(url, tokens, "ours", args.storm, args.storm_workers, [CHANNEL], 600, 1)
    try:
        opened, _ = generators.ready()
        generators.gather("drop", 60)
        time.sleep(2)
        last = asyncio.run(publish(server.base, args.missed, CHANNEL))
        cpu0 = server.cpu()
        answers = generators.gather(("reconnect", last), 600)
        cpu = server.cpu() - cpu0
        back, refused = sum(a[1] for a in answers), sum(a[2] for a in answers)
        seconds = max(a[4] for a in answers) - min(a[3] for a in answers)
        lost, doubled = sum(a[5] for a in answers), sum(a[6] for a in answers)
        print(f"[{label}] storm: {back} of {opened} sessions back ({refused} failed); every session had all "
              f"{args.missed} missed messages {seconds:.2f} s after the first reconnect; {lost} lost, {doubled} "
              f"received twice; server CPU {cpu / max(back, 1) * 1e6:.0f} us per reconnected session (all workers)",
              flush=True)
    finally:
        generators.stop()


def main(args: argparse.Namespace) -> None:
    parts = args.parts.split(",")
    print(f"# scale bench {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()}): {args.subscribers} subscribers, rates {args.rates}; storm of "
          f"{args.storm} sessions, {args.missed} missed", flush=True)
    store = ChildStore(tempfile.mkdtemp(prefix="bench-scale-store-")).start()
    redis = RedisProcess().start()
    try:
        results = {}
        if "fanout" in parts:
            for label, processes in (("1 process", 1), ("2 processes + Redis", 2)):
                server = Server(store.uri, redis.url if processes > 1 else None, processes, args.subscribers + 10)
                try:
                    results[label] = fanout(label, server, redis if processes > 1 else None, args)
                finally:
                    server.stop()
            one, two = results["1 process"], results["2 processes + Redis"]
            for rate in one:
                if rate in two:
                    a, b = one[rate], two[rate]
                    print(f"# {rate} msg/s: two processes deliver x{b['deliveries_s'] / a['deliveries_s']:.2f} one's "
                          f"deliveries/s; server CPU per delivery {a['us']:.2f} -> {b['us']:.2f} us "
                          f"({b['us'] - a['us']:+.2f}); Redis {b['redis_us']:.0f} us per publish", flush=True)
        if "storm" in parts:
            for label, processes in (("1 process", 1), ("2 processes + Redis", 2)):
                server = Server(store.uri, redis.url if processes > 1 else None, processes, 5)
                try:
                    storm(label, server, args)
                finally:
                    server.stop()
    finally:
        redis.stop()
        store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--budget", type=int, default=2_000_000)
    parser.add_argument("--drain", type=float, default=120.0)
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--sample", type=int, default=10)
    parser.add_argument("--storm", type=int, default=10000)
    parser.add_argument("--storm-workers", type=int, default=4)
    parser.add_argument("--missed", type=int, default=100)
    parser.add_argument("--parts", default="fanout,storm")
    main(parser.parse_args())
