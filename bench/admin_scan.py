"""The admin-scan figure of embedded_mongo_bench.py: publish acknowledgements
through the real server while an admin scans every message in the store.

Loads ``--docs`` messages straight into a store (pymongo ``insert_many``, before
the server starts), starts the server on that store, opens sessions that each
publish ``--rate`` messages a second, and measures the publish-acknowledgement
latency first without the admin, then while an admin's unindexed
``count_documents({"data.text": {"$regex": "zzz"}})`` and a ``$group`` over every
message run. Also the store's peak RSS (sampled every 50 ms) during the admin's
queries.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import tempfile
import threading
import time
from typing import Any

from pymongo import ASCENDING, IndexModel, MongoClient

from bench.harness import Generators, ms, public_rooms, sign_in
from embedded_mongo.launcher import ChildStore

_WORDS = ["hello", "bonjour", "ni hao", "hola", "good night", "see you"]


def build(dbpath: str, docs: int) -> float:
    """Loads ``docs`` messages (the server's indexes first); returns seconds."""
    store = ChildStore(dbpath).start()
    client: MongoClient[dict[str, Any]] = MongoClient(store.uri)
    messages = client.miniprogram.messages
    messages.create_indexes([
        IndexModel([("channel", ASCENDING), ("seq", ASCENDING)], unique=True, name="channel_1_seq_1"),
        IndexModel([("channel", ASCENDING), ("from", ASCENDING), ("cid", ASCENDING)], unique=True,
                   partialFilterExpression={"cid": {"$exists": True}}, name="channel_1_from_1_cid_1")])
    started = time.perf_counter()
    ts = datetime.datetime(2026, 1, 1)
    batch = []
    for i in range(docs):
        batch.append({"channel": f"room:old{i % 1000}", "seq": i // 1000 + 1, "from": f"user{i % 5000}",
                      "data": {"text": f"{_WORDS[i % len(_WORDS)]} number {i}"}, "ts": ts})
        if len(batch) == 20_000:
            messages.insert_many(batch, ordered=False)
            batch = []
    if batch:
        messages.insert_many(batch, ordered=False)
    seconds = time.perf_counter() - started
    client.close()
    store.stop()
    return seconds


def _serve(ready: Any, out: Any, data_dir: str) -> None:
    """The real server on the store in DATA_DIR/db (as bench/benchserver.py)."""
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    import settings
    from handlers.app import make_app
    from server.app import tune_gc

    async def main() -> None:
        store = ChildStore(os.path.join(data_dir, "db")).start()
        config = settings.load({"DATA_DIR": data_dir, "MONGO_URI": store.uri})
        app, services = make_app(config)
        await services.start()
        tune_gc()
        sockets = bind_sockets(0, "127.0.0.1", backlog=4096)
        HTTPServer(app).add_sockets(sockets)
        stop = asyncio.Event()
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        out.put((sockets[0].getsockname()[1], store.uri, store.proc.pid if store.proc else 0))
        ready.set()
        await stop.wait()
        await services.close()
        store.stop()

    asyncio.run(main())


def _peak_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return
        stop.wait(0.05)


def _pings(uri: str, stop: threading.Event, out: list[float]) -> None:
    """The store's own round trip (a ping every 10 ms from another client)."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    while not stop.is_set():
        started = time.perf_counter()
        client.admin.command("ping")
        out.append(time.perf_counter() - started)
        stop.wait(0.01)
    client.close()


def _acks(generators: Generators, while_running: threading.Thread | None, seconds: float) -> list[float]:
    """Acknowledgement latencies collected for ``seconds`` or while the admin runs."""
    acks: list[float] = []
    started = time.perf_counter()
    while True:
        time.sleep(0.25)
        acks += generators.collect().ack_latencies
        if while_running is not None:
            if not while_running.is_alive():
                break
        elif time.perf_counter() - started > seconds:
            break
    return sorted(acks)


def run(args: argparse.Namespace) -> None:
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="admin-scan-bench-")
    dbpath = os.path.join(data_dir, "db")
    if not os.path.exists(os.path.join(dbpath, "store.sqlite3")):
        seconds = build(dbpath, args.docs)
        print(f"loaded {args.docs} messages in {seconds:.1f} s ({args.docs / seconds:.0f}/s, insert_many of 20,000)",
              flush=True)
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    process = ctx.Process(target=_serve, args=(ready, out, data_dir), daemon=True)
    process.start()
    if not ready.wait(300):
        raise RuntimeError("the server did not start")
    port, store_uri, store_pid = out.get()
    base = f"http://127.0.0.1:{port}"
    users = args.rooms * args.per_room
    tokens = asyncio.run(sign_in(base, users, "scan"))
    channels = asyncio.run(public_rooms(base, tokens, args.rooms))
    phase = args.seconds
    generators = Generators(base.replace("http", "ws", 1) + "/ws", tokens, "ours", users, 1, channels,
                            600 + 3 * phase, 1)
    admin: MongoClient[dict[str, Any]] = MongoClient(store_uri)
    try:
        generators.ready()
        generators.collect()
        generators.send(("publish", (args.rate, 600.0)))
        stop_pings, quiet_pings, busy_pings = threading.Event(), [], []
        pinger = threading.Thread(target=_pings, args=(store_uri, stop_pings, quiet_pings))
        pinger.start()
        quiet = _acks(generators, None, phase)
        stop_pings.set()
        pinger.join()
        times: dict[str, float] = {}

        def scan() -> None:
            started = time.perf_counter()
            admin.miniprogram.messages.count_documents({"data.text": {"$regex": "zzz"}})
            times["count"] = time.perf_counter() - started
            started = time.perf_counter()
            list(admin.miniprogram.messages.aggregate([{"$group": {"_id": "$from", "n": {"$sum": 1}}}]))
            times["group"] = time.perf_counter() - started

        def scans() -> None:  # --admins at once: as many long reads as the store keeps reader threads
            others = [threading.Thread(target=lambda: (
                admin.miniprogram.messages.count_documents({"data.text": {"$regex": "zzz"}}),
                list(admin.miniprogram.messages.aggregate([{"$group": {"_id": "$from", "n": {"$sum": 1}}}]))))
                for _ in range(args.admins - 1)]
            for other in others:
                other.start()
            scan()
            for other in others:
                other.join()

        stop, peak = threading.Event(), [0]
        sampler = threading.Thread(target=_peak_rss, args=(store_pid, stop, peak))
        sampler.start()
        scanning = threading.Thread(target=scans)
        scanning.start()
        stop_pings.clear()
        pinger = threading.Thread(target=_pings, args=(store_uri, stop_pings, busy_pings))
        pinger.start()
        busy = _acks(generators, scanning, phase)
        stop.set()
        stop_pings.set()
        sampler.join()
        pinger.join()
        quiet_pings.sort()
        busy_pings.sort()
        ratio = (busy[int(len(busy) * 0.99)] / quiet[int(len(quiet) * 0.99)]) if busy and quiet else float("nan")
        print(f"admin scan ({args.admins} at once) over {args.docs} messages: "
              f"count_documents(regex) {times.get('count', 0):.1f} s, "
              f"$group over all {times.get('group', 0):.1f} s", flush=True)
        print(f"publish ack without the admin: p50 {ms(quiet, 0.5)} ms p99 {ms(quiet, 0.99)} ms ({len(quiet)} acks); "
              f"during the admin's queries: p50 {ms(busy, 0.5)} ms p99 {ms(busy, 0.99)} ms ({len(busy)} acks); "
              f"p99 ratio {ratio:.1f}x", flush=True)
        print(f"the store's own ping (another client, every 10 ms): p50 {ms(quiet_pings, 0.5)} ms p99 "
              f"{ms(quiet_pings, 0.99)} ms without the admin; p50 {ms(busy_pings, 0.5)} ms p99 "
              f"{ms(busy_pings, 0.99)} ms during", flush=True)
        print(f"store peak RSS during the admin's queries: {peak[0] / 1024:.0f} MiB", flush=True)
        if args.sort_too:
            generators.stop()
            stop, peak = threading.Event(), [0]
            sampler = threading.Thread(target=_peak_rss, args=(store_pid, stop, peak))
            sampler.start()
            started = time.perf_counter()
            cursor = admin.miniprogram.messages.find({}, {"data": 1}).sort("data.text", 1).batch_size(10_000)
            n = sum(1 for _ in cursor)
            stop.set()
            sampler.join()
            print(f"unindexed find().sort('data.text') over all: {n} documents in "
                  f"{time.perf_counter() - started:.1f} s,"
                  f" store peak RSS {peak[0] / 1024:.0f} MiB", flush=True)
    finally:
        admin.close()
        generators.stop()
        process.terminate()
        process.join(30)
