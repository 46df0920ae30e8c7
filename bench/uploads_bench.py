"""Upload throughput and memory: POST /api/v1/files against a handler that only
discards the body, in the same server process, in the same run.

    python bench/uploads_bench.py [--rounds 10]

Starts the embedded store and a server (make_app plus a /bench/discard route) in
a child process, signs in with dev login, then for 1 MiB and 10 MiB files prints
MiB/s through each endpoint and their ratio, and the server's peak RSS growth
while a 10 MiB file is uploaded (sampled from /proc every 2 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import benchserver
from bench.benchserver import rss_kib

BOUNDARY = "----BenchBoundary7MA4YWxkTrZu0gW"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR"


def body_of(size: int) -> tuple[bytes, dict[str, str]]:
    content = PNG + os.urandom(size - len(PNG))
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def run(args: argparse.Namespace) -> None:
    from tornado.httpclient import AsyncHTTPClient

    server, base = benchserver.start(discard=True)
    http = AsyncHTTPClient(max_body_size=64 * 1024 * 1024)
    login = await http.fetch(base + "/api/v1/auth/dev", method="POST", body=b'{"name": "bench"}',
                             headers={"Content-Type": "application/json"})
    token = json.loads(login.body)["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    print(f"# uploads bench {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()}); server pid {server.pid}; {args.rounds} rounds per figure")

    async def throughput(path: str, body: bytes, headers: dict[str, str], rounds: int) -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            response = await http.fetch(base + path, method="POST", body=body, headers={**headers, **auth},
                                        request_timeout=120)
            assert response.code in (200, 201), response.body
        return len(body) * rounds / (time.perf_counter() - start) / 2**20

    for size in (1024 * 1024, 10 * 1024 * 1024):
        body, headers = body_of(size)
        await throughput("/api/v1/files", body, headers, 1)  # warm-up
        discard = await throughput("/bench/discard", body, headers, args.rounds)
        store = await throughput("/api/v1/files", body, headers, args.rounds)
        print(f"{size // 2**20:2d} MiB files: upload {store:7.1f} MiB/s   discard-only {discard:7.1f} MiB/s   "
              f"ratio {store / discard:.2f}")

    body, headers = body_of(10 * 1024 * 1024)
    for path in ("/bench/discard", "/api/v1/files"):
        peak = base_rss = rss_kib(server.pid or 0)
        done = threading.Event()

        def sample(done: threading.Event = done) -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kib(server.pid or 0))
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        await http.fetch(base + path, method="POST", body=body, headers={**headers, **auth}, request_timeout=120)
        done.set()
        sampler.join()
        print(f"10 MiB upload to {path:15s}: server RSS {base_rss / 1024:6.1f} MiB before, peak "
              f"+{(peak - base_rss) / 1024:5.1f} MiB during")
    http.close()
    server.terminate()
    server.join(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="uploads per figure (default 10)")
    asyncio.run(run(parser.parse_args()))
