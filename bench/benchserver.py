"""Runs the real server (make_app on the embedded store) in a child process for
the benchmarks; optional extra routes (a discard-only upload handler)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import tempfile
import tracemalloc
from typing import Any


def _serve(ready: Any, port_out: Any, data_dir: str, env: dict[str, str], discard: bool, baseline: bool,
           profile_memory: bool) -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import RequestHandler, stream_request_body

    import settings
    from embedded_mongo.launcher import ChildStore
    from handlers.app import make_app
    from server.app import tune_gc

    @stream_request_body
    class Discard(RequestHandler):
        def prepare(self) -> None:
            self.received = 0

        def data_received(self, chunk: bytes) -> None:
            self.received += len(chunk)

        def post(self) -> None:
            self.finish({"received": self.received})

    async def main() -> None:
        store = ChildStore(os.path.join(data_dir, "db")).start()
        config = settings.load({"DATA_DIR": data_dir, "MONGO_URI": store.uri, **env})
        app, services = make_app(config)
        if discard:
            app.add_handlers(r".*", [(r"/bench/discard", Discard)])
        if baseline:  # as before the reconnect work: every replay from MongoDB, every token looked up, CPython's GC
            from server.realtime.recent import Recent

            services.realtime.hub.recent = Recent(0)
            services.auth.vouch = lambda user_id, sid: None  # type: ignore[method-assign]
        await services.start()
        if not baseline:
            tune_gc()  # as run.py does
        if profile_memory:
            tracemalloc.start()
        sockets = bind_sockets(0, "127.0.0.1", backlog=4096)
        HTTPServer(app, max_body_size=64 * 1024 * 1024).add_sockets(sockets)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        port_out.put(sockets[0].getsockname()[1])
        ready.set()
        await stop.wait()
        if profile_memory:
            snapshot = tracemalloc.take_snapshot()
            total = sum(stat.size for stat in snapshot.statistics("filename"))
            print(f"memory profile (tracemalloc, allocated since start-up and still live): {total / 1024 / 1024:.1f} "
                  "MiB; top sites:", flush=True)
            for stat in snapshot.statistics("lineno")[:15]:
                frame = stat.traceback[0]
                print(f"  {stat.size / 1024 / 1024:7.2f} MiB {stat.count:8d} blocks  {frame.filename}:{frame.lineno}",
                      flush=True)
        await services.close()
        store.stop()  # the store runs in its own session: nothing else would stop it

    asyncio.run(main())


def start(env: dict[str, str] | None = None, discard: bool = False, baseline: bool = False,
          profile_memory: bool = False) -> tuple[multiprocessing.Process, str]:
    """The server process and its base URL; ``baseline`` turns off the replay
    cache and the socket's token vouching, for a before/after in one run."""
    ctx = multiprocessing.get_context("spawn")
    ready, ports = ctx.Event(), ctx.Queue()
    data_dir = tempfile.mkdtemp(prefix="bench-server-")
    process = ctx.Process(target=_serve, args=(ready, ports, data_dir, env or {}, discard, baseline, profile_memory),
                          daemon=True)
    process.start()
    if not ready.wait(120):
        raise RuntimeError("the bench server did not start")
    return process, f"http://127.0.0.1:{ports.get()}"


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    return sum(cpu_times(pid))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
