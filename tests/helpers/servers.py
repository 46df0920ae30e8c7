"""Real server processes for the multi-process tests: ``run.py`` (one process,
or ``--processes N`` under the supervisor) sharing one MongoDB database and one
Redis, and the small HTTP calls the tests make to them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_KEY = "multi-key-1"
JWT_SECRET = "multi-secret-" + "Zx8qP2mW" * 5
_SERVING = re.compile(r"serving on (https?)://([\d.]+):(\d+)/")


def environment(mongo_uri: str, database: str, redis_url: str | None, **extra: str) -> dict[str, str]:
    """What every process of one test deployment starts from."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "CI")}
    env.update({"MONGO_URI": mongo_uri, "MONGO_DB": database, "JWT_SECRET": JWT_SECRET, "API_KEYS": API_KEY,
                "DATA_DIR": tempfile.mkdtemp(prefix="srv-"), "WS_PING_INTERVAL": "5"})
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def children_of(parent: int, marker: bytes = b"") -> list[int]:
    """The pids of ``parent``'s child processes whose command line holds ``marker``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) != parent:
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if marker in cmdline.read():
                    found.append(int(entry))
        except OSError:
            continue
    return sorted(found)


class ServerProcess:
    """``python run.py --port 0 [--processes N]``; its output kept for failures."""

    def __init__(self, env: dict[str, str], processes: int = 1) -> None:
        args = ["--processes", str(processes)] if processes != 1 else []
        self.proc = subprocess.Popen([sys.executable, "run.py", "--port", "0", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # the server
        self.url = ""  # http://127.0.0.1:port, once serving
        self.errors: list[str] = []  # its stderr lines (structured logs)
        assert self.proc.stderr is not None
        threading.Thread(target=self._keep, args=(self.proc.stderr,), daemon=True).start()

    def _keep(self, stream: Any) -> None:
        for line in stream:
            self.errors.append(line)

    def start(self, timeout: float = 60.0) -> ServerProcess:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"run.py exited {self.proc.wait()}: {''.join(self.errors)[-2000:]}")
            match = _SERVING.search(line)
            if match:
                self.url = f"{match.group(1)}://{match.group(2)}:{match.group(3)}"
                threading.Thread(target=self._keep, args=(self.proc.stdout,), daemon=True).start()
                return self
        raise RuntimeError("run.py did not start in time")

    def children(self) -> list[int]:
        """The pids of its worker processes (under the supervisor)."""
        return children_of(self.proc.pid, b"--worker")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def call(url: str, method: str, path: str, body: Any = None, token: str | None = None,
         api_key: bool = False) -> tuple[int, Any]:
    """One HTTP call; (status, decoded JSON)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if api_key:
        headers["X-API-Key"] = API_KEY
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def sign_in(url: str, name: str) -> dict[str, Any]:
    status, body = call(url, "POST", "/api/v1/auth/dev", {"name": name})
    assert status == 200, body
    return dict(body)
