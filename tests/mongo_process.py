"""Starts and stops ``python -m embedded_mongo`` as a real child process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import IO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_READY = re.compile(r"ready: .* port=(\d+)")


class StoreProcess:
    """One embedded store on a free port, its output in a log file."""

    def __init__(self, dbpath: str, *extra: str) -> None:
        self.dbpath = dbpath  # the store's data directory
        self.extra = list(extra)  # further command-line options
        self.proc: subprocess.Popen[str] | None = None  # the running store
        self.port = 0  # the port it printed
        self._log: IO[str] | None = None  # where its output goes

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 20.0) -> StoreProcess:
        os.makedirs(self.dbpath, exist_ok=True)
        self._log = open(os.path.join(self.dbpath, "store.log"), "a+")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embedded_mongo", "--dbpath", self.dbpath, "--port", "0", *self.extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"store exited early with {self.proc.wait()}: {self.read_log()}")
            match = _READY.search(line)
            if match:
                self.port = int(match.group(1))
                return self
        raise RuntimeError("store did not print its ready line in time")

    def read_log(self) -> str:
        with open(os.path.join(self.dbpath, "store.log")) as handle:
            return handle.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
        return code
