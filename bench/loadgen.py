"""A WebSocket load generator: one process holding many authenticated sessions.

Each session subscribes to its channels, answers the server's pings (the
``websockets`` library does), and records every delivered message's latency from
the send time the publisher put in it (``data.t``, epoch seconds; all processes
run on this machine, so clocks agree). Bounded: it stops after ``--seconds`` or
when told to, and talks only to the loopback address it is given.

Run by the benchmarks as ``multiprocessing`` workers (``run_worker``), one per
process, because one process's descriptors (20,000 here) and one core bound it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import websockets


@dataclass
class WorkerResult:
    """What one load-generator process saw."""

    opened: int = 0  # sessions that subscribed
    failed: int = 0  # sessions that could not connect or subscribe
    ramp_seconds: float = 0.0  # from the first connect to the last subscribe reply
    deliveries: int = 0  # messages received, all sessions
    latencies: list[float] = field(default_factory=list)  # seconds, a sample of deliveries
    by_seq: dict[int, int] = field(default_factory=dict)  # seq -> sessions that received it


CONNECTING = 64  # handshakes in flight per process: the ramp measures the server, not a queue


async def _session(url: str, token: str, channels: list[str], result: WorkerResult, stop: asyncio.Event,
                   ready: asyncio.Event, sample_every: int, gate: asyncio.Semaphore) -> None:
    async with gate:
        try:
            ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                          ping_interval=None, max_queue=None, open_timeout=60, compression=None)
        except Exception:
            result.failed += 1
            return
        try:
            for index, channel in enumerate(channels):
                await ws.send(json.dumps({"id": index + 1, "op": "subscribe", "channel": channel}))
            pending = len(channels)
            while pending:
                reply = json.loads(await ws.recv())
                if "id" in reply:
                    pending -= 1
        except websockets.ConnectionClosed:
            result.failed += 1
            return
    try:
        result.opened += 1
        ready.set()
        count = 0
        while not stop.is_set():
            try:
                frame = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            # Most frames are only counted (seq read by a string scan): parsing each
            # one as JSON would make this process, not the server, the bottleneck.
            at = frame.find('"seq":', 0, 200) if frame.startswith('{"push":"message"') else -1
            if at < 0:
                continue
            now = time.time()
            end = frame.find(",", at)
            seq = int(frame[at + 6:end])
            result.deliveries += 1
            count += 1
            result.by_seq[seq] = result.by_seq.get(seq, 0) + 1
            if count % sample_every == 0:
                data = json.loads(frame)["message"]["data"]
                if "t" in data:
                    result.latencies.append(now - data["t"])
    except websockets.ConnectionClosed:
        pass
    finally:
        await ws.close()


async def _worker(url: str, token: str, sessions: int, channels: list[str], seconds: float,
                  commands: Any, reports: Any, sample_every: int) -> None:
    result = WorkerResult()
    stop, ready = asyncio.Event(), asyncio.Event()
    gate = asyncio.Semaphore(CONNECTING)
    started = time.perf_counter()
    tasks = []
    for _ in range(sessions):
        tasks.append(asyncio.create_task(_session(url, token, channels, result, stop, ready, sample_every, gate)))
        await asyncio.sleep(0)  # let connections proceed while more are opened
    while result.opened + result.failed < sessions and time.perf_counter() - started < seconds:
        await asyncio.sleep(0.05)
    result.ramp_seconds = time.perf_counter() - started
    reports.put(("ready", result.opened, result.failed, result.ramp_seconds))
    loop = asyncio.get_running_loop()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        command = await loop.run_in_executor(None, _poll, commands)
        if command == "report":
            reports.put(("report", result.deliveries, result.latencies, result.by_seq))
            result.latencies, result.by_seq = [], {}
        elif command == "stop":
            break
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def _poll(commands: Any) -> str | None:
    try:
        return str(commands.get(timeout=0.2))
    except Exception:
        return None


def run_worker(url: str, token: str, sessions: int, channels: list[str], seconds: float, commands: Any,
               reports: Any, sample_every: int = 1) -> None:
    """Entry point of one load-generator process."""
    asyncio.run(_worker(url, token, sessions, channels, seconds, commands, reports, sample_every))
