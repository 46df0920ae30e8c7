"""Several processes on Redis: the fan-out bench on one process vs two
processes with Redis, and the reconnect storm through one and two, in one run.

    python bench/scale_bench.py [--subscribers 10000] [--workers 3] [--rates 100,1000]
                                [--server-cpu none,0.35] [--publish-through any|one]
                                [--storm 10000] [--missed 100]
                                [--storm-server-cpu none] [--parts fanout,storm]
                                [--generators node|python] [--in-flight 1000]

Starts one embedded store and one redis-server (no persistence) on free ports,
then, for each setup, the real server with ``run.py`` (one process; then
``run.py --processes 2`` with REDIS_URL: two workers sharing the port with
SO_REUSEPORT, the kernel spreading sessions over them), each setup on a fresh
database.

Fan-out: ``--subscribers`` sessions on one feed from ``--workers``
load-generator processes; for each rate, messages published through the server
API: deliveries per second, server CPU per delivery summed over the workers
(their own CPU time from /proc), Redis's CPU per publish, publish-to-delivery
latency p50/p99, and whether every session got every message exactly once.
Beside them, where the machine's CPU went (each server process, the load
generators, the store, Redis, this process publishing, other work, idle) and
what bound the rate, and how many messages a process read from MongoDB to
close a gap in seq. ``--publish-through one`` sends every publish through one
worker (kept-alive connections) instead of a new connection each, which the
kernel gives to either worker. ``--server-cpu`` runs the comparison once per value:
``none`` leaves the servers free (on 2 cores the load generators, which must
parse every frame, then take the rest and become the bound); a number puts each
server process (the one process; each worker of two) in a cgroup of its own
allowed that many cores (bench/cpu.py), so one process vs two is one small core
vs two with the generators given the rest of the machine: the fair test of how
deliveries scale with processes on a machine this small.

Storm (one process, then two with Redis; ``--storm-server-cpu`` confines them
likewise): ``--storm`` sessions dropped at once, ``--missed`` messages
published meanwhile, every session back with ``since``: seconds until each has
every missed message, messages lost or doubled (there must be none), the
server's CPU per reconnected session (each worker and all), the load
generators' beside it, and the busiest worker's CPU seconds: a lower bound of
the storm's time with a core per worker and the load generators elsewhere.

Load generators: ``node`` (bench/loadgen.js, the default) costs about a third
of the CPU per delivery of ``python`` (bench/loadgen.py), so on 2 cores they are
not what bounds the comparison. Publishes are open-loop: up to ``--in-flight``
at once (with 64, a busy server's publish latency, not the rate asked, set the
rate it took).

Bounds: loopback only; every process stops by itself; the cgroups are removed
on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import cpu
from bench.cpu import Quotas, Snapshot, Usage
from bench.harness import API_KEY, Generators, LoadGenerators, NodeGenerators, ms, publish_at, sign_in
from bench.loadgen import PAD
from bench.storm_bench import merged_failures, publish
from embedded_mongo.launcher import ChildStore
from tests.helpers.redis_process import RedisProcess
from tests.helpers.servers import children_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNEL = "feed:bench"
_SERVING = re.compile(r"serving on http://([\d.]+):(\d+)/")


BOUND = 0.9  # a server process that used this share of its quota was bound by it
FULL = 0.15  # cores: a machine idle less than this was full (everything on it short of CPU)


class Server:
    """``run.py`` (with ``--processes N`` when N > 1) on a port of its own, each
    process doing the work confined to ``quotas`` when given."""

    def __init__(self, mongo_uri: str, redis_url: str | None, processes: int, per_user: int,
                 quotas: Quotas | None = None) -> None:
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
        self.processes = processes  # 1, or the supervisor's workers
        self.quotas = quotas  # the cgroups confining each working process, if any
        self.pids = self._workers() if processes > 1 else [self.proc.pid]  # the processes doing the work
        if quotas:
            quotas.confine(self.pids)

    def _workers(self) -> list[int]:
        return children_of(self.proc.pid, b"--worker")

    def check(self, label: str) -> None:
        """Says if the supervisor restarted a worker since the last look (a new
        worker starts outside the cgroups: it is confined from here on, and the
        figures of the phase it died in are off)."""
        if self.processes == 1 or (now := self._workers()) == self.pids:
            return
        print(f"[{label}] a worker was restarted (pids {self.pids} -> {now}): the previous figures are off",
              flush=True)
        if self.quotas:
            for pid in set(self.pids) - set(now):
                self.quotas.release(pid)
            self.quotas.confine(now)
        self.pids = now

    def figures(self, since: dict[int, dict[str, int]] | None = None) -> dict[int, dict[str, int]]:
        """Each process's (pid ->) messages read from MongoDB to close a gap in seq
        (``filled``), ``flushes``, ``windows`` written and ``frames`` in them
        (server API ``stats``); with ``since`` (an earlier answer), what each added since."""
        request = urllib.request.Request(self.base + "/api/v1/server/stats", headers={"X-API-Key": API_KEY})
        with urllib.request.urlopen(request, timeout=60) as reply:
            now = {p["pid"]: {"filled": p["broker"]["filled_from_mongodb"], **p["flushes"]}
                   for p in json.load(reply)["processes"]}
        before = since or {}
        return {pid: {key: value - before.get(pid, {}).get(key, 0) for key, value in figures.items()}
                for pid, figures in now.items()}

    def others(self) -> list[int]:
        """The supervisor (with several processes): watched, never confined."""
        return [self.proc.pid] if self.processes > 1 else []

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.quotas:
            for pid in self.pids:
                self.quotas.release(pid)


class Watch:
    """The processes whose CPU the bench reports, by role."""

    def __init__(self, server: Server, generators: LoadGenerators, store: ChildStore,
                 redis: RedisProcess | None) -> None:
        self.server = server  # its pids may change (check)
        self.generators = [p.pid or 0 for p in generators.processes]  # the load-generator processes
        self.extra = {"store": [store.proc.pid] if store.proc else [],
                      "Redis": [redis.proc.pid] if redis and redis.proc else [],
                      "supervisor": server.others(), "publisher (this process)": [os.getpid()]}  # role -> pids

    def take(self) -> Snapshot:
        pids = [*self.server.pids, *self.generators, *(pid for pids in self.extra.values() for pid in pids)]
        return Snapshot.take(pids, self.server.quotas)

    def describe(self, usage: Usage, kept_up: bool = False) -> tuple[str, str]:
        """Where the CPU went, and what bound the work: ("rate"|"server"|"machine"|"none", a sentence);
        ``kept_up``: the work asked was all done at the pace asked."""
        quotas = self.server.quotas
        servers = [usage.cores([pid]) for pid in self.server.pids]
        parts = [f"server {' + '.join(f'{c:.2f}' for c in servers)}"]
        if quotas:
            throttled = max((usage.throttled(pid) for pid in self.server.pids), default=0.0)
            parts[0] += f" (quota {quotas.cores:.2f} each, throttled in up to {throttled:.0%} of periods)"
        parts.append(f"load generators {usage.cores(self.generators):.2f}")
        parts += [f"{role} {usage.cores(pids):.2f}" for role, pids in self.extra.items() if pids]
        parts.append(f"other work {usage.other():.2f}, idle {usage.idle():.2f}")
        if usage.machine.steal / usage.seconds >= 0.01:
            parts.append(f"stolen by the hypervisor {usage.machine.steal / usage.seconds:.2f}")
        where = "CPU in use (cores of " + str(os.cpu_count()) + "): " + ", ".join(parts)
        full = usage.idle() < FULL
        if kept_up:
            verdict = ("rate", "bound by the rate asked (delivered at the pace it was published)")
        elif quotas and min(servers) >= BOUND * quotas.cores:
            verdict = ("server", f"bound by the servers' quotas (each used {min(servers) / quotas.cores:.0%} or more"
                                 f" of its {quotas.cores:.2f} cores)" + (
                                     "; the machine was full too, so the load generators may have been short"
                                     if full else f"; the load generators had {usage.idle():.2f} cores to spare"))
        elif not quotas and max(servers) >= BOUND:
            verdict = ("server", f"bound by a server process's one core ({max(servers):.2f} cores: an event loop "
                                 "uses one)")
        elif full:
            verdict = ("machine", f"bound by the machine: {usage.idle():.2f} cores idle; the load generators "
                                  f"({usage.cores(self.generators):.2f} cores) share them with the server" + (
                                      " below its quota" if quotas else ""))
        else:
            verdict = ("none", "bound by neither the server's CPU nor the machine's (the rate asked, or latency)")
        return verdict[0], where + "; " + verdict[1]


def load_generators(args: argparse.Namespace, url: str, tokens: list[str], sessions: int, workers: int,
                    seconds: float, sample_every: int) -> LoadGenerators:
    """``sessions`` subscribed to CHANNEL from ``workers`` processes of the kind ``--generators`` names."""
    if args.generators == "node":
        return NodeGenerators(url, tokens, sessions, workers, CHANNEL, seconds, sample_every)
    return Generators(url, tokens, "ours", sessions, workers, [CHANNEL], seconds, sample_every)


def fanout(label: str, server: Server, store: ChildStore, redis: RedisProcess | None,
           args: argparse.Namespace) -> dict[int, Any]:
    token = asyncio.run(sign_in(server.base, 1, "bench"))[0]
    url = server.base.replace("http", "ws", 1) + "/ws"
    rates = [int(r) for r in args.rates.split(",")]
    generators = load_generators(args, url, [token], args.subscribers, args.workers,
                                 300 + args.subscribers / 20 + len(rates) * 120, args.sample)
    watch = Watch(server, generators, store, redis)
    figures: dict[int, Any] = {}
    try:
        opened, failed = generators.ready()
        print(f"[{label}] {opened} sessions subscribed ({failed} failed) over {len(server.pids)} process(es)",
              flush=True)
        time.sleep(2)
        generators.collect()
        headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
        for rate in rates:
            server.check(label)
            seconds = min(args.seconds, args.budget / (rate * max(opened, 1)))
            before = server.figures()
            start = last = watch.take()
            body = lambda n: {"channel": CHANNEL, "data": {"t": time.time(), "n": n, "pad": PAD}}  # noqa: E731
            if args.publish_through == "one":
                sent, timed_out = publish_through_one(server, rate, seconds, body)
            else:
                sent, timed_out = asyncio.run(publish_at(server.base + "/api/v1/server/publish", rate, seconds,
                                                         body, headers, args.in_flight))
            expected = (sent - timed_out) * opened
            deliveries, latencies, by_seq, skipped = 0, [], {}, 0  # type: ignore[var-annotated]
            while True:
                counts = generators.collect()
                now = watch.take()
                if counts.deliveries:
                    last = now
                deliveries += counts.deliveries
                skipped += counts.skipped
                latencies += counts.latencies
                for seq, n in counts.by_seq.items():
                    by_seq[seq] = by_seq.get(seq, 0) + n
                if deliveries >= expected or now.at - last.at > 3 or now.at - start.at > args.drain:
                    break
                time.sleep(0.25)
            usage = Usage(start, last)
            latencies.sort()
            complete = sum(1 for n in by_seq.values() if n == opened)
            doubled = sum(max(0, n - opened) for n in by_seq.values())
            rate_out = deliveries / usage.seconds
            per = usage.seconds_of(server.pids) / max(deliveries, 1) * 1e6
            generators_per = usage.seconds_of(watch.generators) / max(deliveries, 1) * 1e6
            redis_per = usage.seconds_of(watch.extra["Redis"]) / max(sent, 1) * 1e6
            bound, where = watch.describe(usage, rate_out >= 0.9 * rate * opened)
            added = server.figures(since=before)
            filled = sum(f["filled"] for f in added.values())
            flushes = [f"{f['flushes']} flushes, {f['windows'] / max(f['flushes'], 1):.1f} windows each, "
                       f"{f['frames'] / max(f['windows'], 1):.1f} messages per window"
                       for _, f in sorted(added.items())]
            figures[rate] = {"deliveries_s": rate_out, "us": per, "redis_us": redis_per, "bound": bound,
                             "p50": ms(latencies, 0.5), "p99": ms(latencies, 0.99)}
            print(f"[{label}] {rate} msg/s asked, {sent} published: {rate_out:8.0f} deliveries/s, {per:5.2f} us "
                  f"server CPU per delivery (all workers; load generators {generators_per:.2f} us), Redis "
                  f"{redis_per:.0f} us CPU per publish, latency p50 {ms(latencies, 0.5)} ms p99 "
                  f"{ms(latencies, 0.99)} ms; {complete}/{sent} messages to every session, {doubled} twice, "
                  f"{skipped} skipped; {filled} read from MongoDB to close a gap", flush=True)
            print(f"[{label}]   {where}", flush=True)
            print(f"[{label}]   flushes, by process: {'; '.join(flushes)}", flush=True)
    finally:
        generators.stop()
    return figures


def publish_through_one(server: Server, rate: float, seconds: float, body: Any,
                        connections: int = 64) -> tuple[int, int]:
    """Publishes as publish_at does, but every message through one worker: kept-alive
    connections, those the kernel gave to another worker closed (the server API's
    ``stats`` names the process that answers first). Returns (sent, failed)."""
    host, port = server.base.split("//")[1].split(":")
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    chosen: list[http.client.HTTPConnection] = []
    target = 0
    for _ in range(connections * 8):
        if len(chosen) == connections:
            break
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("GET", "/api/v1/server/stats", headers=headers)
        pid = json.loads(conn.getresponse().read())["processes"][0]["pid"]
        target = target or pid
        if pid == target:
            chosen.append(conn)
        else:
            conn.close()
    count = int(rate * seconds)
    numbers = iter(range(count))
    start = time.perf_counter()
    failed = [0]

    def publisher(conn: http.client.HTTPConnection) -> None:
        for n in numbers:  # shared: each number published once, at its time
            time.sleep(max(0.0, start + n / rate - time.perf_counter()))
            conn.request("POST", "/api/v1/server/publish", body=json.dumps(body(n)), headers=headers)
            reply = conn.getresponse()
            reply.read()
            failed[0] += reply.status != 200
        conn.close()

    threads = [threading.Thread(target=publisher, args=(conn,)) for conn in chosen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count, failed[0]


def storm(label: str, server: Server, store: ChildStore, redis: RedisProcess | None,
          args: argparse.Namespace) -> None:
    users = (args.storm + 4) // 5
    tokens = asyncio.run(sign_in(server.base, users, "storm"))
    asyncio.run(publish(server.base, 10, CHANNEL))
    url = server.base.replace("http", "ws", 1) + "/ws"
    generators = load_generators(args, url, tokens, args.storm, args.storm_workers, 600, 1)
    watch = Watch(server, generators, store, redis)
    try:
        opened, _ = generators.ready()
        generators.gather("drop", 60)
        time.sleep(2)
        last = asyncio.run(publish(server.base, args.missed, CHANNEL))
        server.check(label)
        before = watch.take()
        answers = generators.gather(("reconnect", last), 600)
        usage = Usage(before, watch.take())
        back, refused = sum(a[1] for a in answers), sum(a[2] for a in answers)
        seconds = max(a[4] for a in answers) - min(a[3] for a in answers)
        lost, doubled = sum(a[5] for a in answers), sum(a[6] for a in answers)
        each = [usage.seconds_of([pid]) for pid in server.pids]
        per = sum(each) / max(back, 1) * 1e6
        print(f"[{label}] storm: {back} of {opened} sessions back ({refused} failed); every session had all "
              f"{args.missed} missed messages {seconds:.2f} s after the first reconnect; {lost} lost, {doubled} "
              f"received twice; server CPU {per:.0f} us per reconnected session (all workers"
              + (f"; each: {', '.join(f'{s:.2f} s' for s in each)}" if len(each) > 1 else "")
              + f"), load generators {usage.seconds_of(watch.generators) / max(back, 1) * 1e6:.0f} us", flush=True)
        print(f"[{label}]   at best {max(each):.2f} s with a core per worker and the load generators elsewhere "
              f"(a lower bound: the busiest worker's CPU seconds during this storm)", flush=True)
        print(f"[{label}]   {watch.describe(usage)[1]}", flush=True)
        why = merged_failures(a[8] for a in answers)
        if why:
            print(f"[{label}]   why sessions failed: {why}", flush=True)
    finally:
        generators.stop()


def quotas_asked(text: str) -> list[float | None]:
    """``none,0.35`` -> [None, 0.35]."""
    return [None if value.strip() in ("none", "0", "") else float(value) for value in text.split(",")]


def setups(cores: float | None, label: str) -> tuple[Quotas | None, str]:
    """The quotas for one comparison (None when cgroups cannot be used here: said in one line)."""
    if cores is None:
        return None, label
    reason = cpu.unavailable()
    if reason:
        print(f"# --server-cpu {cores}: {reason}; running without quotas", flush=True)
        return None, label
    return Quotas(cores), f"{label}, {cores:.2f} cores each"


def main(args: argparse.Namespace) -> None:
    parts = args.parts.split(",")
    print(f"# scale bench {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}): {args.subscribers} "
          f"subscribers, rates {args.rates}, server CPU {args.server_cpu}, {args.generators} load generators; "
          f"storm of {args.storm} sessions, "
          f"{args.missed} missed, server CPU {args.storm_server_cpu}", flush=True)
    store = ChildStore(tempfile.mkdtemp(prefix="bench-scale-store-")).start()
    redis = RedisProcess().start()
    try:
        if "fanout" in parts:
            for cores in quotas_asked(args.server_cpu):
                results = {}
                for processes in (1, 2):
                    quotas, label = setups(cores, "1 process" if processes == 1 else "2 processes + Redis")
                    server = Server(store.uri, redis.url if processes > 1 else None, processes,
                                    args.subscribers + 10, quotas)
                    try:
                        results[processes] = fanout(label, server, store, redis if processes > 1 else None, args)
                    finally:
                        server.stop()
                        if quotas:
                            quotas.close()
                summarise(cores, results[1], results[2])
        if "storm" in parts:
            for cores in quotas_asked(args.storm_server_cpu):
                for processes in (1, 2):
                    quotas, label = setups(cores, "1 process" if processes == 1 else "2 processes + Redis")
                    server = Server(store.uri, redis.url if processes > 1 else None, processes, 5, quotas)
                    try:
                        storm(label, server, store, redis if processes > 1 else None, args)
                    finally:
                        server.stop()
                        if quotas:
                            quotas.close()
    finally:
        redis.stop()
        store.stop()


def summarise(cores: float | None, one: dict[int, Any], two: dict[int, Any]) -> None:
    setup = f"{cores:.2f} cores per server process" if cores else "servers not confined"
    for rate in one:
        if rate in two:
            a, b = one[rate], two[rate]
            fair = a["bound"] == b["bound"] == "server"
            print(f"# {rate} msg/s, {setup}: two processes deliver x{b['deliveries_s'] / a['deliveries_s']:.2f} "
                  f"one's deliveries/s ({a['deliveries_s']:.0f} -> {b['deliveries_s']:.0f}); server CPU per "
                  f"delivery {a['us']:.2f} -> {b['us']:.2f} us ({b['us'] - a['us']:+.2f}); Redis "
                  f"{b['redis_us']:.0f} us per publish; "
                  + ("both bound by their quotas: the load generators were not the bottleneck" if fair else
                     f"bound by: one process {a['bound']}, two {b['bound']} (a ratio of machines, not of processes)"),
                  flush=True)


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
    parser.add_argument("--server-cpu", default="none,0.35",
                        help="fan-out comparisons to run: cores allowed to each server process, or none")
    parser.add_argument("--publish-through", choices=("any", "one"), default="any",
                        help="fan-out publishes on new connections (any worker) or all through one worker")
    parser.add_argument("--storm-server-cpu", default="none", help="the same for the storm")
    parser.add_argument("--in-flight", type=int, default=1000,
                        help="publishes in flight at most (any worker): beyond it publishing waits for replies")
    parser.add_argument("--generators", choices=("node", "python"), default="node",
                        help="load generators: bench/loadgen.js (a fraction of the CPU per delivery) or "
                             "bench/loadgen.py")
    # SIGTERM (a timeout, pkill) unwinds like Ctrl-C: the servers, the store, Redis and the cgroups go too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    main(parser.parse_args())
