"""Starts ``python -m embedded_mongo`` as a child process and waits until it is
ready. Used by ``run.py`` (development mode) and by the tests."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from typing import IO

_READY = re.compile(r"ready: .* port=(\d+)")
_PR_SET_PDEATHSIG = 1
# Loaded here, in the parent: between fork and exec the child only calls prctl.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so a
    killed server never leaves its store running and holding the dbpath's lock."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ChildStore:
    """One embedded store process on a free port, its output in DBPATH/store.log."""

    def __init__(self, dbpath: str, *extra: str) -> None:
        self.dbpath = dbpath  # the store's data directory
        self.extra = list(extra)  # further command-line options
        self.proc: subprocess.Popen[str] | None = None  # the running store
        self.port = 0  # the port it printed
        self._log: IO[str] | None = None  # where its stderr goes

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30.0) -> ChildStore:
        os.makedirs(self.dbpath, exist_ok=True)
        self._log = open(os.path.join(self.dbpath, "store.log"), "a+")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embedded_mongo", "--dbpath", self.dbpath, "--port", "0", *self.extra],
            cwd=_PACKAGE_ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the server, which stops the store itself
            preexec_fn=_die_with_parent,  # only prctl runs between fork and exec
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"the embedded store exited with {code}: {self.read_log().strip()[-500:]}")
            match = _READY.search(line)
            if match:
                self.port = int(match.group(1))
                return self
        self.stop(signal.SIGKILL)
        raise RuntimeError("the embedded store did not print its ready line in time")

    def read_log(self) -> str:
        try:
            with open(os.path.join(self.dbpath, "store.log")) as handle:
                return handle.read()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stops the store (SIGTERM: it finishes cleanly) and returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code
