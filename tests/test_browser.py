"""The demo page at / in a real browser: headless Chromium (the system's, never a
downloaded one) driven by Playwright. Two pages as two users chat through the
SDK's browser adapter; the server restarts; both pages show every message once.
Skipped without chromium or playwright, except in CI (CI=true), where it fails."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 20_000  # a guard against hanging, not a measurement


def missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class RunPy:
    """``python run.py`` in development mode on a data directory that outlives restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir  # DATA_DIR: the embedded store and the JWT secret
        self.port = 0  # chosen at the first start, kept after
        self.process: subprocess.Popen[str] | None = None  # the running server

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MONGO_URI"}
        env.update(APP_ENV="development", DATA_DIR=str(self.data_dir))
        self.process = subprocess.Popen([sys.executable, "run.py", "--port", str(self.port)], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "serving on http://127.0.0.1:PORT/ (development mode)"
        found = re.search(r":(\d+)/", line)
        assert found, f"run.py did not start: {line!r}"
        self.port = int(found.group(1))

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=30) == 0
            self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RunPy]:
    server = RunPy(tmp_path / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Debian's Chromium through Playwright, with a fresh profile directory."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if chromium is None:
        missing("chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (requirements-test.txt)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield context
        context.close()


def texts(page: Any) -> list[tuple[int, str]]:
    """(seq, text) of each message line the page shows, in the order shown."""
    lines = page.eval_on_selector_all("#log .msg", "els => els.map(e => [Number(e.dataset.seq), e.textContent])")
    return [(seq, text.split(": ", 1)[1]) for seq, text in lines]


def sign_in(page: Any, url: str, name: str) -> None:
    page.goto(url + "/")
    page.fill("#name", name)
    page.click("#login")
    page.wait_for_function("document.getElementById('who').textContent.startsWith('signed in')", timeout=WAIT_MS)


def say(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def test_two_pages_chat_through_a_server_restart(served: RunPy, browser: Any) -> None:
    """Two users chat in the demo; the server restarts while both type; each page shows every message once, in order."""
    alice, bob = browser.new_page(), browser.new_page()
    sign_in(alice, served.url, "alice")
    sign_in(bob, served.url, "bob")
    alice.click("#create")
    alice.wait_for_function("document.getElementById('state').textContent === 'connected'", timeout=WAIT_MS)
    room = alice.input_value("#room")
    bob.fill("#room", room)
    bob.click("#join")
    bob.wait_for_function("document.getElementById('state').textContent === 'connected'", timeout=WAIT_MS)
    alice.wait_for_function("document.querySelector('#log').textContent.includes('joins')", timeout=WAIT_MS)
    sent = []
    for page, text in [(alice, "hello bob"), (bob, "hello alice"), (alice, "before the restart")]:
        say(page, text)
        sent.append(text)
        page.wait_for_function(f"document.querySelectorAll('#log .msg').length === {len(sent)}", timeout=WAIT_MS)
    served.stop()
    for page in (alice, bob):
        page.wait_for_function("document.getElementById('state').textContent !== 'connected'", timeout=WAIT_MS)
    for page, text in [(bob, "bob while it is down"), (alice, "alice while it is down"), (bob, "bob again")]:
        say(page, text)
        sent.append(text)
    time.sleep(0.5)  # a few refused reconnects
    served.start()
    for page in (alice, bob):
        page.wait_for_function(f"document.querySelectorAll('#log .msg').length >= {len(sent)}", timeout=WAIT_MS)
    time.sleep(0.5)  # a doubled message would show now
    shown = {name: texts(page) for name, page in (("alice", alice), ("bob", bob))}
    for name, lines in shown.items():
        assert [seq for seq, _ in lines] == list(range(1, len(sent) + 1)), (name, lines)
        assert sorted(text for _, text in lines) == sorted(sent), (name, lines)
        assert [t for _, t in lines][:3] == sent[:3]
    assert shown["alice"] == shown["bob"]
    down = [t for _, t in shown["alice"] if t in ("bob while it is down", "bob again")]
    assert down == ["bob while it is down", "bob again"], "bob's queued messages in the order he wrote them"


@pytest.mark.gen_test
async def test_sdk_module_served_in_development_only(http_client, base_url: str, services) -> None:
    """GET /sdk/index.mjs serves the SDK's ES module the demo imports, and is not_found in production."""
    module = await http_client.fetch(base_url + "/sdk/index.mjs")
    assert module.headers["Content-Type"].startswith("text/javascript")
    assert b"export {" in module.body and b"createClient" in module.body
    object.__setattr__(services.settings, "app_env", "production")
    hidden = await http_client.fetch(base_url + "/sdk/index.mjs", raise_error=False)
    assert hidden.code == 404
