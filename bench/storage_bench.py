"""The storage path's cost per stored message: motor, and PyMongo's own
``AsyncMongoClient`` (motor's successor from the same maintainers) behind the
same ``server.storage.Storage`` interface, for comparison only.

    python bench/storage_bench.py [--messages 3000] [--rounds 2]

Starts an embedded store, then stores ``--messages`` messages through
``server.messages.Messages.publish`` (the server's own code: cid lookup, seq,
insert, channels.seq) with each client in turn, ``--rounds`` times alternating:
one publish at a time (each waits for the last), and 100 at a time into one
channel (the group commit's case). Printed per stored message: wall time, this
process's CPU (the client: motor's threads included), the store's CPU, and the
ratio of PyMongo's async client to motor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import benchserver
from bench.loadgen import PAD
from embedded_mongo.launcher import ChildStore
from server.messages import Messages
from server.storage import Storage


class PyMongoStorage(Storage):
    """Storage with PyMongo's AsyncMongoClient in motor's place."""

    def __init__(self, uri: str, db_name: str) -> None:
        from pymongo import AsyncMongoClient

        self.client = AsyncMongoClient(uri, tz_aware=True, appname="bench")  # type: ignore[assignment]
        self.db = self.client[db_name]

    def close(self) -> None:
        pass  # closed by the caller, awaited


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(storage: Storage, store_pid: int, channel: str, count: int, concurrency: int) -> dict[str, float]:
    await storage.ensure_indexes()
    messages = Messages(storage)
    await messages.publish(channel, "server", {"warm": True}, None)
    wall0, cpu0, store0 = time.perf_counter(), own_cpu(), benchserver.cpu_seconds(store_pid)
    done = 0
    while done < count:
        batch = min(concurrency, count - done)
        await asyncio.gather(*(messages.publish(channel, "server", {"n": done + i, "pad": PAD}, f"k{done + i}")
                               for i in range(batch)))
        done += batch
    return {"wall": (time.perf_counter() - wall0) / count * 1e6, "cpu": (own_cpu() - cpu0) / count * 1e6,
            "store": (benchserver.cpu_seconds(store_pid) - store0) / count * 1e6}


async def run(args: argparse.Namespace) -> None:
    store = ChildStore(os.path.join(tempfile.mkdtemp(prefix="bench-storage-"), "db")).start()
    print(f"# storage path {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, Python "
          f"{platform.python_version()}): {args.messages} messages per run through Messages.publish, embedded store",
          flush=True)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for round_ in range(args.rounds):
            for name in ("motor", "pymongo"):
                for concurrency in (1, 100):
                    storage: Any = (Storage if name == "motor" else PyMongoStorage)(store.uri, "bench")
                    channel = f"feed:{name}{round_}c{concurrency}"
                    figures = await measure(storage, store.proc.pid, channel, args.messages, concurrency)
                    results.setdefault((name, concurrency), []).append(figures)
                    if name == "motor":
                        storage.close()
                    else:
                        await storage.client.close()
        for concurrency in (1, 100):
            best = {name: {k: min(r[k] for r in results[(name, concurrency)]) for k in ("wall", "cpu", "store")}
                    for name in ("motor", "pymongo")}
            for name, figures in best.items():
                print(f"{name:>8}, {concurrency:3d} at a time: {figures['wall']:6.0f} us wall, "
                      f"{figures['cpu']:5.0f} us client CPU, {figures['store']:5.0f} us store CPU per stored message "
                      f"(best of {args.rounds})")
            m, p = best["motor"], best["pymongo"]
            print(f"   AsyncMongoClient / motor, {concurrency} at a time: wall x{p['wall'] / m['wall']:.2f}, "
                  f"client CPU x{p['cpu'] / m['cpu']:.2f}", flush=True)
    finally:
        store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(parser.parse_args()))
