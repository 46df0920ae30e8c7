"""run.py under a connection flood with few descriptors: it stays idle, answers
/healthz, refuses the excess with the contract's 503, and logs little; its
listen backlog comes from LISTEN_BACKLOG."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import resource
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from server.listener import Acceptor, Ceilings, listening_sockets
from server.metrics import Metrics
from tests.mongo_process import ROOT
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
    """The backlog of another process's socket listening on ``port``: Send-Q of ``ss -ltn``."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[2])


def own_backlog(sock: socket.socket) -> int:
    """The backlog of a listening socket of this process: tcpi_sacked of TCP_INFO (Linux)."""
    return int(struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 28)[0])


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
    on a kept-alive and on a fresh connection, the excess gets 503 unavailable, the log holds no EMFILE flood, and
    /metrics counts the refusals and the accept pauses."""
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        run = RunProcess({"DATA_DIR": str(tmp_path), "MONGO_URI": store.uri, "MONGO_DB": "descriptors",
                          "LISTEN_BACKLOG": "2000"}, log=log, preexec_fn=_low_descriptor_limit)
        flood: list[socket.socket] = []
        try:
            port = run.wait_serving() and run.port
            assert listen_backlog(port) == min(2000, somaxconn())  # Tornado's default was 128
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
            kept.request("GET", "/metrics")
            metrics = kept.getresponse().read().decode()
            refused = float(re.search(r"^connections_refused_total (\S+)$", metrics, re.M).group(1))
            assert refused >= 1 and re.search(r"^accept_pauses_total ", metrics, re.M)  # what an operator sees
        finally:
            kept.close()
            run.stop()
    text = log_path.read_text()
    emfile = text.count("Too many open files")
    print(f"log: {len(text.splitlines())} lines, {len(text)} bytes, {emfile} naming EMFILE")
    assert emfile <= 20
    assert len(text.splitlines()) < 500


def test_listening_sockets_take_the_backlog_given() -> None:
    """listening_sockets listens with the backlog asked for (the kernel caps it at somaxconn), 4096 by default
    in the settings, where Tornado's own default is 128."""
    import settings

    for backlog in (settings.Settings().listen_backlog, 1000, 16):
        sockets = listening_sockets("127.0.0.1", 0, backlog)
        try:
            assert own_backlog(sockets[0]) == min(backlog, somaxconn())
        finally:
            for sock in sockets:
                sock.close()


class _CountingAcceptor(Acceptor):
    wakeups = 0  # times the loop found the socket readable

    def _ready(self, fd: Any, events: int) -> None:
        self.wakeups += 1
        super()._ready(fd, events)


def test_the_acceptor_pauses_on_emfile_and_resumes() -> None:
    """With no descriptor left, accept is retried after growing pauses (a handful of tries a second, not a
    busy loop); once descriptors are free again every waiting connection is accepted; /metrics counts the pauses."""
    accepted: list[socket.socket] = []
    metrics = Metrics()

    async def scenario() -> _CountingAcceptor:
        listener = listening_sockets("127.0.0.1", 0, 128)[0]
        acceptor = _CountingAcceptor(listener, lambda connection, address: accepted.append(connection), metrics)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(10)]
        probe = os.open("/dev/null", os.O_RDONLY)  # the lowest free descriptor: none at or above it may open
        os.close(probe)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))
        try:
            await asyncio.sleep(1.0)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        stuck = (acceptor.wakeups, acceptor.pauses, len(accepted))
        for _ in range(100):
            if len(accepted) == len(clients):
                break
            await asyncio.sleep(0.05)
        acceptor.close()
        for sock in [listener, *clients, *accepted]:
            sock.close()
        assert stuck[2] == 0 and 3 <= stuck[1] <= 12 and stuck[0] <= stuck[1] + 2, stuck
        return acceptor

    acceptor = asyncio.run(scenario())
    assert len(accepted) == 10 and acceptor.pause == 0.0
    assert metrics.accept_pauses._value.get() == acceptor.pauses


@pytest.mark.parametrize("limit, setting, ceiling, overflow", [
    (256, None, 192, 224), (1024, None, 922, 973), (20000, None, 18976, 19232), (65536, None, 64512, 64768),
    (20000, 5000, 5000, 5256), (256, 192, 192, 224),
])
def test_the_connection_ceiling_leaves_a_reserve(limit: int, setting: int | None, ceiling: int,
                                                  overflow: int) -> None:
    """By default a tenth of the descriptors (64 to 1,024) stay in reserve above MAX_CONNECTIONS; part of the
    reserve answers refused connections."""
    plan = Ceilings.plan(limit, setting)
    assert (plan.max_connections, plan.overflow) == (ceiling, overflow)
    with pytest.raises(ValueError):
        Ceilings.plan(limit, limit - 63)


def test_start_up_raises_the_soft_descriptor_limit() -> None:
    """raise_descriptor_limit lifts a soft limit of 256 to the hard one (1024)."""
    code = "from server.listener import raise_descriptor_limit; print(raise_descriptor_limit())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024)))
    assert result.stdout.strip() == "(256, 1024, 1024)", result.stderr


def test_a_max_connections_the_limit_cannot_hold_stops_start_up(tmp_path) -> None:
    """MAX_CONNECTIONS above the descriptor limit minus the reserve exits 2 with one line naming it."""
    result = subprocess.run([sys.executable, "run.py", "--port", "0"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": os.environ.get("PATH", ""), "DATA_DIR": str(tmp_path),
                                 "MAX_CONNECTIONS": "250"}, timeout=60, preexec_fn=_low_descriptor_limit)
    assert result.returncode == 2
    assert "MAX_CONNECTIONS=250" in result.stderr and "256" in result.stderr


def _raw_exchange(port: int, request: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Everything a fresh connection receives for ``request`` until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("tls", [False, True])
def test_past_the_ceiling_healthz_answers_and_the_rest_gets_503(tmp_path, tls: bool) -> None:
    """Over HTTP and HTTPS, a refused connection gets 200 for GET/HEAD /healthz and the contract's 503 unavailable
    for anything else (a POST with a body, a WebSocket upgrade), with Connection: close; the application never
    sees it."""
    from tornado.httpserver import HTTPServer
    from tornado.web import Application, RequestHandler

    from server.listener import Gate
    from tests.test_run import _self_signed

    seen: list[str] = []

    class Everything(RequestHandler):
        def get(self) -> None:
            seen.append(self.request.path)

    context = client = None
    if tls:
        cert, key = _self_signed(tmp_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        client = ssl.create_default_context(cafile=cert)

    async def scenario() -> list[bytes]:
        server = HTTPServer(Application([(r".*", Everything)]), ssl_options=context)
        sockets = listening_sockets("127.0.0.1", 0, 128)
        Gate(server, Ceilings(limit=1 << 20, max_connections=3, overflow=1 << 20), context).listen(sockets)
        port = sockets[0].getsockname()[1]
        requests = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"HEAD /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /api/v1/server/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"]
        loop = asyncio.get_running_loop()
        try:
            return [await loop.run_in_executor(None, _raw_exchange, port, r, client) for r in requests]
        finally:
            server.stop()

    healthz, head, post, upgrade = asyncio.run(scenario())
    assert seen == []
    for answer in (healthz, head, post, upgrade):
        assert b"\r\nConnection: close\r\n" in answer
    assert healthz.startswith(b"HTTP/1.1 200 ") and healthz.endswith(b'{"status":"ok"}')
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    for refused in (post, upgrade):
        assert refused.startswith(b"HTTP/1.1 503 ")
        body = json.loads(refused.split(b"\r\n\r\n", 1)[1])
        assert body == {"error": {"code": "unavailable", "message": body["error"]["message"], "details": []}}
