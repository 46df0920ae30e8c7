"""run.py under a connection flood with few descriptors: it stays idle, answers
/healthz, refuses the excess with the contract's 503, and logs little; its
listen backlog comes from LISTEN_BACKLOG."""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import subprocess
import time

from tests.test_run import RunProcess

LIMIT = 256  # the server's RLIMIT_NOFILE, soft and hard
FLOOD = 600  # idle connections the test opens: more than the server has descriptors
WINDOW = 3.0  # seconds over which the server's CPU time is measured


def _low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        after_name = stat.read().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``: Send-Q of a listening socket in ``ss -ltn``."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[2])


def somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as handle:
        return int(handle.read())


def _request(port: int, path: str, connection: http.client.HTTPConnection | None = None) -> tuple[int, dict, dict]:
    """Status, headers and JSON body of a GET, on ``connection`` or a fresh one."""
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        if connection is None:
            conn.close()


def _fresh_until(port: int, path: str, status: int, deadline: float) -> tuple[dict, dict]:
    """Headers and body of the first fresh-connection GET answered ``status`` (a refused connection is retried)."""
    while True:
        try:
            got, headers, body = _request(port, path)
            if got == status:
                return headers, body
        except (OSError, http.client.HTTPException, ValueError):
            pass
        assert time.monotonic() < deadline, f"no fresh connection got {status} for {path}"
        time.sleep(0.2)


def _flood(port: int) -> list[socket.socket]:
    sockets = []
    for _ in range(FLOOD):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def test_a_connection_flood_neither_spins_nor_floods_the_log_and_healthz_answers(tmp_path, store) -> None:
    """With 256 descriptors and 600 idle connections, the server uses well under half a core, /healthz answers
    on a kept-alive and on a fresh connection, the excess gets 503 unavailable, and the log holds no EMFILE flood."""
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        run = RunProcess({"DATA_DIR": str(tmp_path), "MONGO_URI": store.uri, "MONGO_DB": "descriptors"},
                         log=log, preexec_fn=_low_descriptor_limit)
        flood: list[socket.socket] = []
        try:
            port = run.wait_serving() and run.port
            assert listen_backlog(port) == min(4096, somaxconn())  # the default sized for storms
            kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            assert _request(port, "/healthz", kept)[0] == 200
            flood = _flood(port)
            time.sleep(1.0)  # the server takes in what it can
            start_cpu, start = _cpu_seconds(run.proc.pid), time.monotonic()
            time.sleep(WINDOW)
            share = (_cpu_seconds(run.proc.pid) - start_cpu) / (time.monotonic() - start)
            print(f"server CPU during the flood: {share:.1%} of a core")
            assert share < 0.25, f"the server spins: {share:.0%} of a core while flooded"
            assert _request(port, "/healthz", kept)[0] == 200
            deadline = time.monotonic() + 20
            assert _fresh_until(port, "/healthz", 200, deadline)[1] == {"status": "ok"}
            headers, body = _fresh_until(port, "/api/v1/me", 503, deadline)
            assert body == {"error": {"code": "unavailable", "message": body["error"]["message"], "details": []}}
            assert headers["Connection"] == "close"
        finally:
            for sock in flood:
                sock.close()
        try:
            deadline = time.monotonic() + 20  # the flood gone, the server serves again
            assert _fresh_until(port, "/api/v1/me", 401, deadline)[1]["error"]["code"] == "unauthorized"
        finally:
            kept.close()
            run.stop()
    text = log_path.read_text()
    emfile = text.count("Too many open files")
    print(f"log: {len(text.splitlines())} lines, {len(text)} bytes, {emfile} naming EMFILE")
    assert emfile <= 20
    assert len(text.splitlines()) < 500
