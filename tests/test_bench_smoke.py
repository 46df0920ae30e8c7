"""The benchmarks' own machinery, run small: the load generator must count what the servers deliver (nothing
lost, nothing twice) or its figures mean nothing. No timing is asserted: figures come from bench/ runs."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.mongo_process import ROOT


def _bench(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_fanout_bench_counts_every_delivery_for_ours_and_a_peer() -> None:
    out = _bench("bench/fanout_bench.py", "--subscribers", "60", "--workers", "2", "--rates", "20",
                 "--seconds", "1", "--drain", "20", "--servers", "ours,websockets")
    lines = [line for line in out.splitlines() if "msg/s asked" in line]
    assert len(lines) == 2, out
    for line in lines:
        sent = int(re.search(r"(\d+) published", line).group(1))
        assert sent > 0 and f"{sent}/{sent} messages to every session, 0 received twice" in line
    assert "0 after a later one" in lines[0]  # ours keeps seq order; a peer may reorder concurrent publishes
    assert "60 sessions (0 failed)" in out and "websockets:" in out


def test_storm_bench_recovers_every_missed_message_once() -> None:
    out = _bench("bench/storm_bench.py", "--sessions", "40", "--missed", "15", "--workers", "2")
    assert "40 of 40 sessions back (0 failed)" in out, out  # the bench prints why sessions failed, if any did
    assert "600 messages delivered (expected 600), 0 lost, 0 received twice" in out, out


def test_scale_bench_node_load_generators_count_every_delivery_and_storm_through_one_and_two_processes() -> None:
    """bench/loadgen.js (the fan-out comparison's load generators) counts what one process and two on Redis
    deliver: every message to every session, nothing twice, nothing skipped."""
    from tests.helpers.redis_process import require_redis
    from tests.test_sdk import need

    need("node")
    require_redis()
    out = _bench("bench/scale_bench.py", "--parts", "fanout", "--subscribers", "60", "--workers", "2",
                 "--rates", "20", "--seconds", "1", "--drain", "20", "--server-cpu", "none", "--generators", "node")
    assert out.count("60 sessions subscribed (0 failed)") == 2, out
    lines = [line for line in out.splitlines() if "msg/s asked" in line]
    assert len(lines) == 2, out
    for line in lines:
        sent = int(re.search(r"(\d+) published", line).group(1))
        assert sent > 0 and f"{sent}/{sent} messages to every session, 0 twice, 0 skipped" in line, line
    assert out.count("flushes, by process") == 2, out
    assert re.search(r"two processes deliver x\d+\.\d\d one's deliveries/s", out), out
    storm = _bench("bench/scale_bench.py", "--parts", "storm", "--storm", "60", "--missed", "15",
                   "--storm-workers", "2", "--generators", "node")
    lines = [line for line in storm.splitlines() if "storm:" in line]
    assert len(lines) == 2, storm
    for line in lines:
        assert "60 of 60 sessions back (0 failed); every session had all 15 missed messages" in line, line
        assert "0 lost, 0 received twice" in line, line
