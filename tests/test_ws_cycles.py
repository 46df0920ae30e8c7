"""A WebSocket's upgrade and close leave no reference cycle: what a socket used is
freed by reference counting when it closes, not left for the garbage collector
(in a reconnect storm each cycle was a request's edge, HTTP connection, stream,
task and coroutines, and the socket's transport, connection and commands: about
40 objects per socket for the collector to find, 20% of the server's CPU)."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter

import pytest

from tests.ws_client import RawSocket

SERVER_TYPES = {"Edge", "WebSocket", "_Protocol", "Connection", "Commands", "HTTP1Connection",
                "HTTP1ServerConnection", "IOStream"}  # what one socket's handshake and life are made of


async def _closed_everywhere(services) -> None:
    for _ in range(100):
        if services.realtime.hub.connection_count() == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a closed socket is still registered")


@pytest.mark.gen_test(timeout=60)
async def test_sockets_opened_and_closed_leave_nothing_for_the_collector(login, http_port: int, services) -> None:
    """Ten sockets upgraded, used and closed (by the client's close frame, and by a dropped connection) leave
    none of the server's objects in cyclic garbage."""
    alice = await login("alice")
    gc.collect()
    gc.disable()
    try:
        for n in range(10):
            raw = await RawSocket.connect(http_port, alice["access_token"])
            await raw.send(b'{"id": 1, "op": "subscribe", "channel": "feed:cycles"}')
            assert (await raw.frame())[0] == 0x1  # the subscribe reply
            if n % 2:
                await raw.send(b"\x03\xe8", opcode=0x8)  # a close frame: 1000
                assert await raw.close_code() == 1000
            raw.close()
            await _closed_everywhere(services)
        await asyncio.sleep(0.2)  # the closes' last callbacks
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = Counter(type(o).__qualname__ for o in gc.garbage if type(o).__qualname__ in SERVER_TYPES
                        and type(o).__module__.startswith(("handlers", "server", "tornado")))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not found, found
