"""Server pings (WS_PING_INTERVAL): one task pings every socket of the process
(handlers/socket.py ``Pinger``), a socket that never answers is closed, and no
socket carries a pinging task of its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.ws_client import RawSocket

INTERVAL = 0.3


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {"WS_PING_INTERVAL": str(INTERVAL)}


async def _pings_until_close(raw: RawSocket, answer: bool, seconds: float) -> tuple[int, tuple[int, bytes] | None]:
    """Reads for ``seconds``: the pings received (answered with pongs when ``answer``) and the close frame."""
    pings = 0
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            frame = await raw.frame(left)
        except TimeoutError:
            break
        if frame is None or frame[0] == 0x8:
            return pings, frame
        if frame[0] == 0x9:
            pings += 1
            if answer:
                await raw.send(frame[1], opcode=0xA)
    return pings, None


async def _all_closed(services: Any) -> None:
    """Until the server has seen every socket close (a bounded guard), and one turn more: the Pinger's task,
    cancelled with the last socket, ends before the test's loop does."""
    for _ in range(100):
        if services.realtime.hub.connection_count() == 0:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.01)


@pytest.mark.gen_test(timeout=30)
async def test_a_socket_that_answers_stays_and_one_that_never_answers_is_closed(login, http_port: int,
                                                                               app, services) -> None:
    """Every open socket gets a ping each interval; one that answers with pongs stays open round after round,
    one that never answers is closed with 1000 "ping timed out" once a round found its ping unanswered."""
    alice, bob = await login("alice"), await login("bob")
    answering = await RawSocket.connect(http_port, alice["access_token"])
    silent = await RawSocket.connect(http_port, bob["access_token"])
    (pings, close), (silent_pings, silent_close) = await asyncio.gather(
        _pings_until_close(answering, True, 8 * INTERVAL), _pings_until_close(silent, False, 8 * INTERVAL))
    assert close is None and pings >= 5  # open all along, pinged each round
    assert silent_close is not None and 1 <= silent_pings <= 2
    assert int.from_bytes(silent_close[1][:2], "big") == 1000 and silent_close[1][2:] == b"ping timed out"
    answering.close()
    silent.close()
    await _all_closed(services)
    assert not app.pinger.sockets and app.pinger._task is None


@pytest.mark.gen_test(timeout=30)
async def test_no_socket_has_a_pinging_task_and_closed_sockets_leave_the_pinger(login, http_port: int,
                                                                                app, services) -> None:
    """Twenty sockets: one Pinger task for them all, none of Tornado's per-socket ping tasks; once they
    close, the Pinger holds none of them (nothing kept alive for a round)."""
    users = [await login(f"user{n}") for n in range(4)]
    sockets = [await RawSocket.connect(http_port, users[n % 4]["access_token"]) for n in range(20)]
    while services.realtime.hub.connection_count() < 20:
        await asyncio.sleep(0.01)
    names = [task.get_coro().__qualname__ for task in asyncio.all_tasks()]  # type: ignore[union-attr]
    assert not [name for name in names if "periodic_ping" in name]
    assert names.count("Pinger._rounds") == 1
    assert len(app.pinger.sockets) == services.realtime.hub.connection_count()
    for raw in sockets:
        raw.close()
    for _ in range(100):
        if not app.pinger.sockets and services.realtime.hub.connection_count() == 0:
            break
        await asyncio.sleep(0.02)
    assert not app.pinger.sockets
    await asyncio.sleep(0.01)  # the Pinger's task, cancelled with the last socket, ends before the loop does
    assert app.pinger._task is None


@pytest.mark.gen_test(timeout=30)
async def test_a_socket_whose_ping_fails_does_not_stop_the_pinging_of_the_others(login, http_port: int, app,
                                                                                 services) -> None:
    """A ping that raises (a broken transport) drops that socket from pinging, logged; the other socket is
    still pinged round after round."""
    alice, bob = await login("alice"), await login("bob")
    broken = await RawSocket.connect(http_port, alice["access_token"])
    healthy = await RawSocket.connect(http_port, bob["access_token"])
    while len(app.pinger.sockets) < 2:
        await asyncio.sleep(0.01)
    first = next(iter(app.pinger.sockets))

    def fail(frame: bytes) -> bool:
        raise RuntimeError("a broken transport")

    first.handler.send_frame = fail
    pings, close = await _pings_until_close(healthy, True, 5 * INTERVAL)
    assert close is None and pings >= 3
    assert first not in app.pinger.sockets and len(app.pinger.sockets) == 1
    broken.close()
    healthy.close()
    await _all_closed(services)
