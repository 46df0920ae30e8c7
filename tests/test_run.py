"""run.py as a real process: start-up on the embedded store, dev login, SIGTERM,
the child store's death, TLS, and production refusing unsafe settings."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import IO

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

from tests.mongo_process import ROOT
from tests.test_settings import PRODUCTION

_SERVING = re.compile(r"serving on (https?)://([\d.]+):(\d+)/")


class RunProcess:
    """``python run.py --port 0`` with a given environment."""

    def __init__(self, env: dict[str, str], *args: str, log: IO[str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
        self.proc = subprocess.Popen([sys.executable, "run.py", "--port", "0", *args], cwd=ROOT,
                                     env={**base, **env}, stdout=subprocess.PIPE, stderr=log or subprocess.PIPE,
                                     text=True, preexec_fn=preexec_fn)  # log: a file for stderr, never filled up
        self.url = ""  # the server's base URL, once serving

    def wait_serving(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"run.py exited {self.proc.wait()}: {self.stderr()}")
            match = _SERVING.search(line)
            if match:
                self.url = f"{match.group(1)}://{match.group(2)}:{match.group(3)}"
                return self.url
        raise RuntimeError("run.py did not start in time")

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code


def _fetch(url: str, body: dict | None = None, token: str | None = None,
           context: ssl.SSLContext | None = None, api_key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if api_key:
        headers["X-API-Key"] = api_key
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_ready(url: str, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + 30
    while _fetch(url + "/readyz", context=context)[0] != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone too
        return stat.read().split()[2] != "Z"


def test_starts_on_the_embedded_store_and_stops_cleanly(tmp_path) -> None:
    """run.py starts the embedded store, serves, signs in with dev login, and on SIGTERM exits 0 with the store gone."""
    run = RunProcess({"DATA_DIR": str(tmp_path)})
    try:
        url = run.wait_serving()
        _wait_ready(url)
        status, tokens = _fetch(url + "/api/v1/auth/dev", {"name": "alice"})
        assert status == 200
        assert _fetch(url + "/api/v1/me", token=tokens["access_token"])[0] == 200
        store_pid = int((tmp_path / "db" / "mongod.lock").read_text())
        assert _pid_alive(store_pid)
    finally:
        code = run.stop()
    assert code == 0
    deadline = time.monotonic() + 10
    while _pid_alive(store_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(store_pid)
    assert (tmp_path / "db" / "store.sqlite3").exists()

    again = RunProcess({"DATA_DIR": str(tmp_path)})  # tokens survive a restart in development
    try:
        url = again.wait_serving()
        _wait_ready(url)
        assert _fetch(url + "/api/v1/me", token=tokens["access_token"])[0] == 200
    finally:
        assert again.stop() == 0


def test_exits_non_zero_when_the_child_store_dies(tmp_path) -> None:
    """If the embedded store dies, run.py says so and exits 3 instead of serving errors."""
    run = RunProcess({"DATA_DIR": str(tmp_path)})
    url = run.wait_serving()
    _wait_ready(url)
    os.kill(int((tmp_path / "db" / "mongod.lock").read_text()), signal.SIGKILL)
    assert run.proc.wait(30) == 3
    assert "embedded store died" in run.stderr()
    run.stop()


def test_with_mongo_uri_no_child_is_started(tmp_path, store) -> None:
    """With MONGO_URI set, run.py uses it and starts no embedded store."""
    run = RunProcess({"DATA_DIR": str(tmp_path), "MONGO_URI": store.uri, "MONGO_DB": "run_with_uri"})
    try:
        _wait_ready(run.wait_serving())
        assert not (tmp_path / "db").exists()
    finally:
        assert run.stop() == 0


def _self_signed(directory) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address(
                "127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = str(directory / "cert.pem"), str(directory / "key.pem")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_context_refuses_below_tls_1_2(tmp_path) -> None:
    """The server's TLS context accepts TLS 1.2 at the oldest."""
    import run

    assert run.tls_context(*_self_signed(tmp_path)).minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_serves_https_with_tls_1_2_or_newer(tmp_path, store) -> None:
    """With TLS_CERT and TLS_KEY, run.py serves HTTPS and WSS; a client held to TLS 1.1 cannot connect."""
    cert, key = _self_signed(tmp_path)
    run = RunProcess({"DATA_DIR": str(tmp_path), "MONGO_URI": store.uri, "MONGO_DB": "run_tls",
                      "TLS_CERT": cert, "TLS_KEY": key, "API_KEYS": "tls-key"})
    try:
        url = run.wait_serving()
        assert url.startswith("https://")
        context = ssl.create_default_context(cafile=cert)
        _wait_ready(url, context)
        assert _fetch(url + "/healthz", context=context)[0] == 200
        # wss://: replies and pushes go through the TLS stream (pre-built frames included)
        status, tokens = _fetch(url + "/api/v1/auth/dev", {"name": "tls"}, context=context)
        assert status == 200
        with connect(url.replace("https", "wss", 1) + "/ws", ssl=context,
                     additional_headers={"Authorization": f"Bearer {tokens['access_token']}"}) as socket:
            socket.send(json.dumps({"id": 1, "op": "subscribe", "channel": "feed:tls"}))
            assert json.loads(socket.recv(10))["result"]["seq"] == 0
            assert _fetch(url + "/api/v1/server/publish", {"channel": "feed:tls", "data": {"n": 1}},
                          context=context, api_key="tls-key")[0] == 200
            push = json.loads(socket.recv(10))
            assert push["push"] == "message" and push["message"]["data"] == {"n": 1}
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cert)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, urllib.error.URLError)):
            _fetch(url + "/healthz", context=old)
    finally:
        assert run.stop() == 0


@pytest.mark.parametrize("drop, named", [("MONGO_URI", "MONGO_URI"), ("JWT_SECRET", "JWT_SECRET"),
                                         ("WECHAT_APPID", "WECHAT_APPID"), ("WECHAT_SECRET", "WECHAT_SECRET"),
                                         ("BEHIND_PROXY", "TLS_CERT")])
def test_production_refuses_to_start(tmp_path, drop: str, named: str) -> None:
    """APP_ENV=production without a safe setting exits 2 with one line naming it."""
    env = {k: v for k, v in PRODUCTION.items() if k != drop}
    result = subprocess.run([sys.executable, "run.py", "--port", "0"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": os.environ.get("PATH", ""), "DATA_DIR": str(tmp_path), **env}, timeout=60)
    assert result.returncode == 2
    assert named in result.stderr and result.stderr.strip().count("\n") == 0


def test_processes_need_redis(tmp_path) -> None:
    """--processes 2 without REDIS_URL says that it needs it."""
    result = subprocess.run([sys.executable, "run.py", "--processes", "2"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": os.environ.get("PATH", ""), "DATA_DIR": str(tmp_path)}, timeout=60)
    assert result.returncode == 2 and "REDIS_URL" in result.stderr




def test_a_killed_server_leaves_no_store_behind(tmp_path) -> None:
    """kill -9 of run.py stops its embedded store too, so the next start is not refused by the store's lock."""
    run = RunProcess({"DATA_DIR": str(tmp_path)})
    _wait_ready(run.wait_serving())
    store_pid = int((tmp_path / "db" / "mongod.lock").read_text())
    run.stop(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while _pid_alive(store_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(store_pid)
    again = RunProcess({"DATA_DIR": str(tmp_path)})
    try:
        _wait_ready(again.wait_serving())
    finally:
        assert again.stop() == 0


def test_tune_gc_freezes_start_up_and_raises_the_young_threshold() -> None:
    """The server's garbage collection: start-up objects frozen, young collections every 50,000 allocations;
    cyclic garbage made afterwards is still collected."""
    import gc
    import weakref

    from server.app import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0

        class Node:
            pass

        node = Node()
        node.self = node  # type: ignore[attr-defined]
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
