"""What the value rules cost on every publish: ``protocol.parse`` (ujson.loads,
the value rules, the arguments) against ``ujson.loads`` of the same frame alone.

    .venv/bin/python bench/values_bench.py
"""

from __future__ import annotations

import os
import sys
import timeit

import ujson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.protocol import parse
from server.values import problem

FRAMES = {
    "chat message": {"text": "hello there, how are you?", "kind": "text"},
    "chat, Chinese": {"text": "你好，今天怎么样？我们晚上见", "kind": "text"},
    "sensor reading": {"device": "d1", "at": "2026-11-23T08:00:00Z", "temperature": 20.5, "humidity": 40,
                       "tags": ["a", "b", "c"], "pos": {"x": 1.5, "y": 2.5}},
    "200 items (6.6 KiB)": {"items": [{"n": i, "t": f"text {i}", "v": i * 0.5} for i in range(200)]},
}


def _best(call: object, number: int) -> float:
    """Seconds per call, the best of 7 rounds (the least disturbed by other processes)."""
    return min(timeit.repeat(call, number=number, repeat=7)) / number  # type: ignore[arg-type]


def main() -> None:
    print(f"{'frame':22} {'bytes':>6} {'ujson.loads':>12} {'+ rules':>9} {'parse':>9} {'rules/loads':>12}")
    for name, data in FRAMES.items():
        frame = ujson.dumps({"id": 17, "op": "publish", "channel": "room:9f2c0a1b", "data": data, "cid": "c-17"})
        number = 200 if len(frame) > 1000 else 20_000
        loads = _best(lambda f=frame: ujson.loads(f), number)
        rules = _best(lambda f=frame: problem(ujson.loads(f), 1), number)
        whole = _best(lambda f=frame: parse(f, 300), number)
        print(f"{name:22} {len(frame):6} {loads * 1e6:10.2f}µs {rules * 1e6:7.2f}µs {whole * 1e6:7.2f}µs "
              f"{rules / loads:11.2f}x")


if __name__ == "__main__":
    main()
