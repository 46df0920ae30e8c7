"""Review of the fan-out's write path (handlers/socket.py ``send_frame`` and
``Pinger``, server/realtime/hub.py flush pacing): frames stay whole and in
order, and what must go at once is not held behind the hub's paced flush."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from server.errors import CloseCode
from tests.ws_client import RawSocket


async def _frames_until_close(raw: RawSocket, timeout: float = 10.0) -> list[tuple[int, bytes]]:
    """Every frame up to and with the close frame (parsing fails on a frame cut by another)."""
    frames: list[tuple[int, bytes]] = []
    while (frame := await raw.frame(timeout)) is not None:
        frames.append(frame)
        if frame[0] == 0x8:
            break
    return frames


@pytest.mark.parametrize("extra_env", [{"WS_PING_INTERVAL": "0.1"}])
@pytest.mark.gen_test(timeout=60)
async def test_pings_join_a_full_sockets_backlog_between_whole_frames(login, server_api, http_port: int,
                                                                      services, app, extra_env) -> None:
    """Pings sent while a client's socket is full (a frame half written, the rest in the stream's buffer)
    go after whole frames: the client, reading again, parses every frame, the pushes in seq order, pings
    between them, and last the Pinger's 1000 "ping timed out" (it never answered); the Pinger lets it go."""
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"], receive_buffer=4096)
    await raw.send(json.dumps({"id": 1, "op": "subscribe", "channel": "feed:pinged"}).encode())
    assert (await raw.frame())[0] == 0x1
    session = next(iter(services.realtime.hub.subscribers["feed:pinged"]))
    session.transport._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    blob = "z" * 2999  # odd sizes: frames end anywhere in the kernel's buffer
    for n in range(40):
        await server_api("POST", "/api/v1/server/publish", {"channel": "feed:pinged", "data": {"n": n, "b": blob}})
    await asyncio.sleep(0.5)  # rounds ping it, then close it (no pong came)
    frames = await _frames_until_close(raw)
    opcodes = {opcode for opcode, _ in frames}
    assert opcodes <= {0x1, 0x8, 0x9} and 0x9 in opcodes
    pushes = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    assert [p["message"]["data"]["n"] for p in pushes] == list(range(len(pushes))) and pushes
    assert frames[-1] == (0x8, (1000).to_bytes(2, "big") + b"ping timed out")
    raw.close()
    for _ in range(100):
        if services.realtime.hub.connection_count() == 0:
            break
        await asyncio.sleep(0.05)
    assert services.realtime.hub.connection_count() == 0 and not app.pinger.sockets


@pytest.mark.parametrize("extra_env", [{"WS_PING_INTERVAL": "0.1"}])
@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_pings_and_pongs_unasked_stays_and_is_answered(login, http_port: int, app,
                                                                           extra_env) -> None:
    """A client that sends its own pings and unasked pongs, and answers the server's pings, stays open
    round after round; each of its pings gets a pong, and its commands their replies."""
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"])
    pongs = replies = server_pings = 0
    for n in range(10):
        await raw.send(b"p%d" % n, opcode=0x9)
        await raw.send(b"unasked", opcode=0xA)
        await raw.send(json.dumps({"id": n, "op": "ping"}).encode())
        deadline = asyncio.get_running_loop().time() + 0.1
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                frame = await raw.frame(left)
            except TimeoutError:
                break
            assert frame is not None and frame[0] != 0x8, frame
            if frame[0] == 0x9:
                server_pings += 1
                await raw.send(frame[1], opcode=0xA)
            pongs += frame[0] == 0xA
            replies += frame[0] == 0x1
    assert pongs >= 1 and replies == 10 and server_pings >= 3
    assert len(app.pinger.sockets) == 1
    raw.close()


@pytest.mark.gen_test(timeout=30)
async def test_refusals_and_the_close_go_at_once_while_the_hub_waits_to_flush(login, http_port: int,
                                                                             services) -> None:
    """While the hub's next flush waits (as after a long flush; here 20 s away), a client flooding commands
    still gets its ``rate_limited`` refusals and then the 4008 close frame at once and in that order: the
    close writes its connection's queued frames itself."""
    hub = services.realtime.hub
    alice = await login("alice")
    raw = await RawSocket.connect(http_port, alice["access_token"])
    await raw.send(json.dumps({"id": 0, "op": "ping"}).encode())
    assert (await raw.frame())[0] == 0x1
    hub._flush_at = asyncio.get_running_loop().time() + 20  # what a long flush leaves, stretched
    for n in range(1, 71):
        await raw.send(json.dumps({"id": n, "op": "ping"}).encode())
    frames = await _frames_until_close(raw, timeout=5)  # not 20 s: the close does not wait for the hub
    assert frames and frames[-1][0] == 0x8
    assert int.from_bytes(frames[-1][1][:2], "big") == CloseCode.TOO_MANY_COMMANDS
    refusals = [json.loads(p)["error"]["message"] for op, p in frames if op == 0x1 and b"rate_limited" in p]
    assert len([m for m in refusals if "a second" in m]) == 20  # each strike answered before the close
    raw.close()


@pytest.mark.gen_test(timeout=30)
async def test_while_the_hub_waits_a_socket_may_leave_and_shutdown_sends_what_waited(
        login, server_api, http_port: int, services, caplog) -> None:
    """While the hub's next flush waits (20 s away here), pushes queue; a socket whose client leaves meanwhile
    is simply forgotten, and the shutdown's 1001 close writes what waited, in seq order, before the close
    frame; nothing is logged as a failed write."""
    hub = services.realtime.hub
    alice, bob = await login("alice"), await login("bob")
    staying = await RawSocket.connect(http_port, alice["access_token"])
    leaving = await RawSocket.connect(http_port, bob["access_token"])
    for n, raw in enumerate((staying, leaving)):
        await raw.send(json.dumps({"id": n, "op": "subscribe", "channel": "feed:wait"}).encode())
        assert (await raw.frame())[0] == 0x1
    hub._flush_at = asyncio.get_running_loop().time() + 20  # what a long flush leaves, stretched
    for n in range(3):
        status, _ = await server_api("POST", "/api/v1/server/publish", {"channel": "feed:wait", "data": {"n": n}})
        assert status == 200
    assert hub._windows["feed:wait"].seqs == [1, 2, 3]  # they wait for the paced flush
    leaving.close()
    while hub.connection_count() > 1:
        await asyncio.sleep(0.01)
    await services.realtime.shutdown()
    frames = await _frames_until_close(staying, timeout=5)
    assert [json.loads(p)["message"]["seq"] for op, p in frames if op == 0x1] == [1, 2, 3]
    assert int.from_bytes(frames[-1][1][:2], "big") == CloseCode.GOING_AWAY
    assert not [r for r in caplog.records if r.getMessage() == "write failed"]
    staying.close()
