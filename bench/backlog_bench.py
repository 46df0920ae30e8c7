"""Listen queue: a burst of simultaneous connections against run.py with
Tornado's old backlog (LISTEN_BACKLOG=128, the baseline) and with the default.

    python bench/backlog_bench.py [--connections 3000] [--rounds 2]

Starts ``python run.py`` (embedded store), opens ``--connections`` connections
at once, each asking ``GET /healthz``, and prints, for each backlog: answers,
seconds until the last one, and the kernel's ListenOverflows counter
(connection requests dropped because the accept queue was full; the counter is
the network namespace's, so other traffic on the machine adds to it).

Bounds: loopback only; every connection and read has a 30 s timeout; the
server is stopped with SIGTERM after each round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def listen_overflows() -> int:
    """TcpExt ListenOverflows of /proc/net/netstat."""
    with open("/proc/net/netstat") as handle:
        lines = handle.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))["ListenOverflows"]
    raise RuntimeError("no TcpExt in /proc/net/netstat")


async def healthz(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        return answer.startswith(b"HTTP/1.1 200 ")
    except (OSError, TimeoutError):
        return False


async def burst(port: int, connections: int) -> tuple[int, float]:
    started = time.monotonic()
    answers = await asyncio.gather(*(healthz(port) for _ in range(connections)))
    return sum(answers), time.monotonic() - started


def round_with(backlog: str | None, connections: int) -> tuple[int, float, int]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    with tempfile.TemporaryDirectory() as data_dir:
        env["DATA_DIR"] = data_dir
        if backlog is not None:
            env["LISTEN_BACKLOG"] = backlog
        server = subprocess.Popen([sys.executable, "run.py", "--port", "0"], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert server.stdout is not None
            match = re.search(r":(\d+)/", server.stdout.readline())
            if match is None:
                raise RuntimeError("run.py did not start")
            before = listen_overflows()
            answered, seconds = asyncio.run(burst(int(match.group(1)), connections))
            return answered, seconds, listen_overflows() - before
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with open("/proc/sys/net/core/somaxconn") as handle:
        print(f"net.core.somaxconn = {handle.read().strip()}; {args.connections} connections at once")
    results: dict[str, list[tuple[int, float, int]]] = {"128 (baseline)": [], "default (4096)": []}
    for _ in range(args.rounds):
        results["128 (baseline)"].append(round_with("128", args.connections))
        results["default (4096)"].append(round_with(None, args.connections))
    for label, rounds in results.items():
        for answered, seconds, overflows in rounds:
            print(f"LISTEN_BACKLOG {label}: {answered}/{args.connections} answered in {seconds:.2f} s, "
                  f"ListenOverflows +{overflows}")
    base = sum(s for _, s, _ in results["128 (baseline)"])
    now = sum(s for _, s, _ in results["default (4096)"])
    print(f"time of the burst, default / baseline: {now / base:.2f}")


if __name__ == "__main__":
    main()
