"""What the WebSocket benchmarks share: load-generator processes driven through
queues, their merged counts, the publisher, percentiles."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import queue
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench import benchserver
from bench.loadgen import MAX_SESSIONS, Counts, run_worker

API_KEY = "bench-api-key"  # the bench server's API_KEYS


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


def ms(ordered: list[float], fraction: float) -> str:
    return f"{percentile(ordered, fraction) * 1e3:.1f}"


def _shares(sessions: int, workers: int) -> list[int]:
    """``sessions`` split over ``workers`` processes, each within MAX_SESSIONS."""
    shares = [sessions // workers + (1 if i < sessions % workers else 0) for i in range(workers)]
    if max(shares) > MAX_SESSIONS:
        raise ValueError(f"{sessions} sessions need at least {-(-sessions // MAX_SESSIONS)} load-generator processes")
    return shares


class LoadGenerators:
    """What both kinds of load-generator processes offer the benches: commands
    sent to every process, and their answers as bench/loadgen.py shapes them
    (("ready", opened, failed, seconds, why), ("report", Counts), ("dropped", n),
    ("storm", opened, failed, start, caught_up, lost, doubled, deliveries, why))."""

    processes: list[Any]  # the processes (each with its pid)
    timeout: float  # seconds to wait for every session to open
    why_failed: dict[str, int]  # why sessions failed to open -> how many (printed by ready)

    def send(self, command: Any) -> None:
        raise NotImplementedError

    def _receive(self, timeout: float) -> tuple[Any, ...]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def ready(self) -> tuple[int, int]:
        """Waits until every process has opened its sessions: (opened, failed)."""
        opened = failed = 0
        for _ in self.processes:
            _, ok, bad, _, why = self._receive(self.timeout)
            opened, failed = opened + ok, failed + bad
            for reason, count in why.items():
                self.why_failed[reason] = self.why_failed.get(reason, 0) + count
        if self.why_failed:
            print(f"# why sessions failed to open: {self.why_failed}", flush=True)
        return opened, failed

    def gather(self, command: Any, timeout: float) -> list[tuple[Any, ...]]:
        """Sends ``command`` to every process and returns their answers."""
        self.send(command)
        return [self._receive(timeout) for _ in self.processes]

    def collect(self) -> Counts:
        """Every process's counts since the last collect, merged."""
        merged = Counts()
        for _, counts in self.gather("report", 60):
            merged.deliveries += counts.deliveries
            merged.doubled += counts.doubled
            merged.skipped += counts.skipped
            merged.closed += counts.closed
            merged.acked += counts.acked
            merged.refused += counts.refused
            merged.latencies += counts.latencies
            merged.ack_latencies += counts.ack_latencies
            merged.by_seq.update(counts.by_seq)
        return merged


class Generators(LoadGenerators):
    """``workers`` load-generator processes holding ``sessions`` sessions between
    them, each process connecting from its own source address (127.0.0.2, .3...)
    and using its own share of ``tokens`` (so no user has more sockets than the
    tokens' count allows) and of ``channels``."""

    def __init__(self, url: str, tokens: list[str], dialect: str, sessions: int, workers: int, channels: list[str],
                 seconds: float, sample_every: int, shared: list[str] | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.reports = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(workers)]
        self.processes = [
            ctx.Process(target=run_worker, args=(url, tokens[i::workers] or tokens, n, channels, seconds,
                                                 self.commands[i], self.reports,
                                                 sample_every, dialect, f"127.0.0.{2 + i}", shared), daemon=True)
            for i, n in enumerate(_shares(sessions, workers))]
        self.timeout = seconds
        self.why_failed = {}
        for process in self.processes:
            process.start()

    def send(self, command: Any) -> None:
        for commands in self.commands:
            commands.put(command)

    def _receive(self, timeout: float) -> tuple[Any, ...]:
        answer: tuple[Any, ...] = self.reports.get(timeout=timeout)
        return answer

    def stop(self) -> None:
        self.send("stop")
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()


class NodeGenerators(LoadGenerators):
    """``Generators`` for the fan-out and storm benches, in Node (bench/loadgen.js):
    the same sessions, counts and commands for one channel in the ``ours``
    dialect, at a fraction of the CPU per delivery, so that on 2 cores the load
    generators are not what bounds the server. Each process is ``node`` with
    JSON lines on its stdin and stdout (a thread per process reads them); all
    connect from 127.0.0.1 (about 28,000 sessions at most to one server port)."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadgen.js")

    def __init__(self, url: str, tokens: list[str], sessions: int, workers: int, channel: str, seconds: float,
                 sample_every: int) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: use the Python load generators")
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        self.processes = [
            subprocess.Popen([node, self.SCRIPT, json.dumps({
                "url": url, "tokens": tokens[i::workers] or tokens, "sessions": n, "channel": channel,
                "sample_every": sample_every, "seconds": seconds})],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for i, n in enumerate(_shares(sessions, workers))]
        for process in self.processes:
            threading.Thread(target=self._read, args=(process,), daemon=True).start()
        self.timeout = seconds
        self.why_failed = {}

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.reports.put(json.loads(line))
        self.reports.put({"kind": "exited", "code": process.wait()})

    def send(self, command: Any) -> None:
        """``command``: "report", "drop", or ("reconnect", seq)."""
        line = command if isinstance(command, str) else " ".join(str(part) for part in command)
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(line + "\n")
            process.stdin.flush()

    def _receive(self, timeout: float) -> tuple[Any, ...]:
        report = self.reports.get(timeout=timeout)
        kind = report["kind"]
        if kind == "exited":
            raise RuntimeError(f"a Node load generator exited ({report['code']})")
        if kind == "ready":
            return kind, report["opened"], report["failed"], report["seconds"], report["why_failed"]
        if kind == "report":
            return kind, Counts(deliveries=report["deliveries"], doubled=report["doubled"],
                                skipped=report["skipped"], closed=report["closed"], latencies=report["latencies"],
                                by_seq=Counter({int(seq): n for seq, n in report["by_seq"].items()}))
        if kind == "dropped":
            return kind, report["sessions"]
        return (kind, report["opened"], report["failed"], report["start"], report["caught_up"], report["lost"],
                report["doubled"], report["deliveries"], report["why_failed"])

    def stop(self) -> None:
        for process in self.processes:
            try:
                assert process.stdin is not None
                process.stdin.write("stop\n")
                process.stdin.close()
            except OSError:  # it exited already
                pass
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


async def publish_at(url: str, rate: float, seconds: float, body: Any, headers: dict[str, str],
                     in_flight: int = 64) -> tuple[int, int]:
    """POSTs ``body(n)`` to ``url`` ``rate`` times a second for ``seconds``, at
    most ``in_flight`` requests at a time (the rest wait their turn: past it the
    rate sent is bounded by the server's publish latency, not the rate asked);
    returns how many were sent and how many failed (an overloaded server times
    them out)."""
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient(force_instance=True, max_clients=in_flight,
                           defaults={"request_timeout": 120, "connect_timeout": 30})
    start = time.perf_counter()
    sent = 0
    pending: set[asyncio.Future[Any]] = set()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = min(int(elapsed * rate) + 1, int(seconds * rate))
        while sent < due:
            pending.add(asyncio.ensure_future(http.fetch(url, method="POST", body=json.dumps(body(sent)),
                                                         headers=headers)))
            sent += 1
        await asyncio.sleep(min(0.005, 1 / rate))
    failed = 0
    for outcome in await asyncio.gather(*pending, return_exceptions=True):
        failed += isinstance(outcome, Exception)
    http.close()
    return sent, failed


async def sign_in(base: str, count: int, prefix: str) -> list[str]:
    """Access tokens of ``count`` development users (``prefix`` 0, 1, 2...)."""
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient(max_clients=16)
    headers = {"Content-Type": "application/json"}
    replies = await asyncio.gather(*(http.fetch(base + "/api/v1/auth/dev", method="POST", headers=headers,
                                                body=json.dumps({"name": f"{prefix}{n}"})) for n in range(count)))
    return [json.loads(r.body)["access_token"] for r in replies]


async def public_rooms(base: str, tokens: list[str], count: int) -> list[str]:
    """The channels of ``count`` public rooms, created by the first users."""
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient(max_clients=16)
    channels = []
    for n in range(count):
        reply = await http.fetch(base + "/api/v1/rooms", method="POST",
                                 body=json.dumps({"name": f"room {n}", "public": True}),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {tokens[n % len(tokens)]}"})
        channels.append("room:" + json.loads(reply.body)["id"])
    return channels


@dataclass
class Ramp:
    """What opening the sessions cost the server, and what holding them costs."""

    opened: int  # sessions subscribed
    failed: int  # sessions that could not connect or subscribe
    seconds: float  # from the first connect to the last subscribe reply
    cpu: float  # server CPU seconds over the ramp
    rss_after: int  # server RSS (KiB) once they are all held
    idle: float  # server CPU share of one core while they sit idle


def ramp(generators: Generators, pid: int, cpu0: float, started: float, idle_seconds: float) -> Ramp:
    """Waits for the sessions, lets the server settle, then watches it idle."""
    opened, failed = generators.ready()
    seconds = time.perf_counter() - started
    cpu = benchserver.cpu_seconds(pid) - cpu0
    time.sleep(2)
    rss_after = benchserver.rss_kib(pid)
    idle0 = benchserver.cpu_seconds(pid)
    time.sleep(idle_seconds)
    return Ramp(opened, failed, seconds, cpu, rss_after, (benchserver.cpu_seconds(pid) - idle0) / idle_seconds)
