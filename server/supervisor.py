"""``python run.py --processes N``: N worker processes sharing one port.

The supervisor starts the embedded store once (unless MONGO_URI is set), then N
workers (``run.py --worker``), each listening on the same port with
SO_REUSEPORT, so the kernel spreads connections over them. The workers share
MongoDB and Redis (REDIS_URL is required: without it the processes could not
reach each other's subscribers, and the supervisor refuses to start, naming
it). A worker that dies is restarted (with backoff if it keeps dying); its
clients reconnect, land on another worker, and resume with ``since``. On
SIGTERM or SIGINT every worker drains (each closes its sockets with 1001 once
what it acknowledged is stored) and the supervisor exits 0; if the store dies,
the workers are stopped and it exits 3.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from embedded_mongo.launcher import ChildStore, _die_with_parent
from server.logs import fields
from settings import Settings

log = logging.getLogger("supervisor")

RUN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run.py")
READY_SECONDS = 60.0  # how long a worker may take to print its serving line
STOP_SECONDS = 20.0  # how long a worker may take to drain after SIGTERM before it is killed
RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)  # waits before restarting a worker that died young, the last repeated
YOUNG_SECONDS = 10.0  # a worker that dies younger than this counts towards the backoff
EXIT_STORE_DIED = 3


def refusal(config: Settings, processes: int) -> str | None:
    """The one-line reason ``--processes`` cannot run, if any."""
    if processes < 1:
        return "--processes takes a positive whole number"
    if processes > 1 and not config.redis_url:
        return "--processes needs REDIS_URL (redis://host:port): the processes share their subscribers through Redis"
    return None


@dataclass
class Worker:
    """One worker process and its restarts."""

    index: int  # its slot, 0..N-1
    proc: subprocess.Popen[str] | None = None  # the running process
    started: float = 0.0  # monotonic time it was started
    deaths: int = 0  # consecutive early deaths (for the backoff)
    restart_at: float = 0.0  # monotonic time of its next start, once dead
    lines: list[str] = field(default_factory=list)  # what it printed on stdout


class Supervisor:
    """Runs and watches the workers."""

    def __init__(self, config: Settings, processes: int, argv: list[str] | None = None) -> None:
        self.config = config  # the loaded settings
        self.processes = processes  # N
        self.argv = argv or []  # extra run.py arguments for the workers
        self.workers = [Worker(i) for i in range(processes)]  # the slots
        self.store: ChildStore | None = None  # the embedded store, when MONGO_URI is not set
        self.port = config.port  # the shared port (resolved when 0)
        self._reserved: socket.socket | None = None  # holds a port picked for "0" (bound, never listening)
        self.stopping = False  # SIGTERM or SIGINT arrived

    def _environment(self, mongo_uri: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"MONGO_URI": mongo_uri, "JWT_SECRET": self.config.jwt_secret,  # one secret for every worker
                    "PORT": str(self.port), "HOST": self.config.host})
        return env

    def _reserve_port(self) -> None:
        if self.port:
            return
        reserved = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((self.config.host, 0))
        self._reserved = reserved
        self.port = int(reserved.getsockname()[1])

    def _start(self, worker: Worker, env: dict[str, str]) -> None:
        worker.proc = subprocess.Popen([sys.executable, RUN_PY, "--worker", *self.argv], env=env,
                                       stdout=subprocess.PIPE, text=True,
                                       preexec_fn=_die_with_parent)  # a killed supervisor leaves no worker behind
        worker.started = time.monotonic()
        worker.lines = []
        assert worker.proc.stdout is not None
        threading.Thread(target=self._drain, args=(worker, worker.proc.stdout), daemon=True).start()

    @staticmethod
    def _drain(worker: Worker, stream: IO[str]) -> None:
        for line in stream:
            worker.lines.append(line)

    def _wait_ready(self, worker: Worker) -> bool:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline and not self.stopping:
            if any(line.startswith("serving on") for line in worker.lines):
                return True
            if worker.proc is None or worker.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        """Serves until SIGTERM/SIGINT; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        mongo_uri = self.config.mongo_uri
        try:
            if mongo_uri is None:
                self.store = ChildStore(os.path.join(self.config.data_dir, "db")).start()
                mongo_uri = self.store.uri
                log.info("embedded store started", extra=fields(port=self.store.port))
            self._reserve_port()
            env = self._environment(mongo_uri)
            for worker in self.workers:
                self._start(worker, env)
            for worker in self.workers:
                if not self._wait_ready(worker):
                    if self.stopping:
                        return 0
                    print(f"error: worker {worker.index} did not start", file=sys.stderr, flush=True)
                    return 1
            scheme = "https" if self.config.tls else "http"
            print(f"serving on {scheme}://{self.config.host}:{self.port}/ ({self.config.app_env} mode, "
                  f"{self.processes} processes)", flush=True)
            return self._watch(env)
        finally:
            self._stop_workers()
            if self.store is not None:
                self.store.stop()
            if self._reserved is not None:
                self._reserved.close()

    def _watch(self, env: dict[str, str]) -> int:
        while not self.stopping:
            time.sleep(0.1)
            if self.store is not None and not self.store.alive():
                log.error("the embedded store died; stopping the workers")
                print("the embedded store died; the server stops", file=sys.stderr, flush=True)
                return EXIT_STORE_DIED
            now = time.monotonic()
            for worker in self.workers:
                if worker.proc is not None and worker.proc.poll() is not None:
                    code = worker.proc.returncode
                    young = now - worker.started < YOUNG_SECONDS
                    worker.deaths = worker.deaths + 1 if young else 1
                    worker.restart_at = now + RESTART_BACKOFF[min(worker.deaths - 1, len(RESTART_BACKOFF) - 1)]
                    worker.proc = None
                    log.error("worker died; restarting it", extra=fields(worker=worker.index, exit_code=code))
                elif worker.proc is None and now >= worker.restart_at:
                    self._start(worker, env)
        return 0

    def _stop_workers(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def supervise(config: Settings, processes: int, argv: list[str] | None = None) -> int:
    """Runs ``processes`` workers until SIGTERM/SIGINT; returns the exit code."""
    reason = refusal(config, processes)
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr, flush=True)
        return 2
    return Supervisor(config, processes, argv).run()
