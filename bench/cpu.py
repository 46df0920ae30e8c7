"""CPU quotas for the processes under test (cgroup v1 ``cpu`` controller), and
where the machine's CPU went while they ran (``/proc``).

On a 2-core machine the load generators share the cores with the server, so a
second server process finds no free core and the load generators become the
bound. Giving each server process its own cgroup with ``cores`` of CPU
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) turns one process vs two into a
fair "one small core vs two small cores" comparison, the generators having the
rest of the machine. Needs root and a writable ``/sys/fs/cgroup/cpu``; groups
are named ``mp-bench-<this pid>-<n>``, removed on ``close()`` (and at exit), and
groups left by a bench that was killed are removed by the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench import benchserver

ROOT = "/sys/fs/cgroup/cpu"
PERIOD_US = 10_000  # accounting period: a process past its quota waits at most the rest of it (< the 50 ms gap wait)
_NAME = re.compile(r"mp-bench-(\d+)-\d+$")


def unavailable() -> str | None:
    """Why quotas cannot be used here, or None."""
    if not os.path.isfile(os.path.join(ROOT, "cgroup.procs")):
        return f"no cgroup v1 cpu controller at {ROOT}"
    if not os.access(ROOT, os.W_OK):
        return f"{ROOT} is not writable (needs root)"
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as out:
        out.write(value)


def _cpu_group(pid: int) -> str:
    """The cpu cgroup ``pid`` is in (a path under ROOT)."""
    with open(f"/proc/{pid}/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "cpu" in controllers.split(","):
                return path
    return "/"


def _remove_stale() -> None:
    for name in os.listdir(ROOT):
        match = _NAME.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            with contextlib.suppress(OSError):  # still holds a live process: leave it
                os.rmdir(os.path.join(ROOT, name))


@dataclass
class Throttling:
    """A group's ``cpu.stat`` counters."""

    periods: int = 0  # accounting periods in which the group ran
    throttled: int = 0  # periods in which it used its whole quota and had to wait
    throttled_s: float = 0.0  # time spent waiting for the next period

    def __sub__(self, other: Throttling) -> Throttling:
        return Throttling(self.periods - other.periods, self.throttled - other.throttled,
                          self.throttled_s - other.throttled_s)


class Quotas:
    """One cgroup per confined process, each allowed ``cores`` of CPU."""

    def __init__(self, cores: float) -> None:
        self.cores = cores  # CPU allowed to each process (1.0 = one core)
        self.groups: dict[int, str] = {}  # confined pid -> its group's directory
        self.origins: dict[int, str] = {}  # confined pid -> the group it came from
        self.made = 0  # groups made so far (for their names)
        _remove_stale()
        atexit.register(self.close)

    def confine(self, pids: list[int]) -> None:
        """Puts each of ``pids`` not yet confined into a group of its own
        (with its threads; its future children start in it too)."""
        for pid in pids:
            if pid in self.groups:
                continue
            self.made += 1
            group = os.path.join(ROOT, f"mp-bench-{os.getpid()}-{self.made}")
            os.mkdir(group)
            _write(os.path.join(group, "cpu.cfs_period_us"), str(PERIOD_US))
            _write(os.path.join(group, "cpu.cfs_quota_us"), str(round(self.cores * PERIOD_US)))
            self.origins[pid] = _cpu_group(pid)
            _write(os.path.join(group, "cgroup.procs"), str(pid))
            self.groups[pid] = group

    def throttling(self, pid: int) -> Throttling:
        """The ``cpu.stat`` counters of ``pid``'s group."""
        values = {}
        with open(os.path.join(self.groups[pid], "cpu.stat")) as stat:
            for line in stat:
                key, value = line.split()
                values[key] = int(value)
        return Throttling(values.get("nr_periods", 0), values.get("nr_throttled", 0),
                          values.get("throttled_time", 0) / 1e9)

    def release(self, pid: int) -> None:
        """Moves ``pid`` (if alive) back where it came from and removes its group."""
        group = self.groups.pop(pid, None)
        if group is None:
            return
        origin = self.origins.pop(pid, "/")
        with contextlib.suppress(OSError):
            with open(os.path.join(group, "cgroup.procs")) as procs:
                left = [line.strip() for line in procs if line.strip()]
            for task in left:  # the process, and any child it started in the group
                _write(os.path.join(ROOT + origin.rstrip("/"), "cgroup.procs"), task)
        with contextlib.suppress(OSError):
            os.rmdir(group)

    def close(self) -> None:
        for pid in list(self.groups):
            self.release(pid)


@dataclass
class Machine:
    """The whole machine's CPU time so far (``/proc/stat``), in core-seconds."""

    busy: float  # user, system, interrupts
    idle: float  # idle and waiting for I/O
    steal: float  # taken by the hypervisor for other guests

    @staticmethod
    def now() -> Machine:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
        return Machine((user + nice + system + irq + softirq) / tick, (idle + iowait) / tick, steal / tick)

    def __sub__(self, other: Machine) -> Machine:
        return Machine(self.busy - other.busy, self.idle - other.idle, self.steal - other.steal)


@dataclass
class Snapshot:
    """CPU seconds so far of some processes and of the whole machine, and the
    throttling of the confined ones."""

    at: float = field(default_factory=time.perf_counter)  # when (perf_counter seconds)
    cpu: dict[int, float] = field(default_factory=dict)  # pid -> user + system CPU seconds
    machine: Machine = field(default_factory=Machine.now)  # the machine's counters
    throttling: dict[int, Throttling] = field(default_factory=dict)  # confined pid -> its group's counters

    @staticmethod
    def take(pids: Iterable[int], quotas: Quotas | None = None) -> Snapshot:
        snapshot = Snapshot()
        for pid in pids:
            with contextlib.suppress(OSError):  # gone (a worker that died): counts nothing from now on
                snapshot.cpu[pid] = benchserver.cpu_seconds(pid)
        for pid in quotas.groups if quotas else ():
            with contextlib.suppress(OSError):
                snapshot.throttling[pid] = quotas.throttling(pid)  # type: ignore[union-attr]
        return snapshot


class Usage:
    """What happened between two snapshots."""

    def __init__(self, before: Snapshot, after: Snapshot) -> None:
        self.seconds = max(after.at - before.at, 1e-9)  # wall time between them
        self.cpu = {pid: after.cpu[pid] - before.cpu[pid] for pid in after.cpu if pid in before.cpu}  # pid -> seconds
        self.machine = after.machine - before.machine  # the machine's core-seconds
        self.throttling = {pid: after.throttling[pid] - before.throttling[pid]
                           for pid in after.throttling if pid in before.throttling}  # confined pid -> counters

    def seconds_of(self, pids: Iterable[int]) -> float:
        """CPU seconds used by ``pids``."""
        return sum(self.cpu.get(pid, 0.0) for pid in pids)

    def cores(self, pids: Iterable[int]) -> float:
        """Cores used by ``pids`` on average (1.0 = one core all the time)."""
        return self.seconds_of(pids) / self.seconds

    def idle(self) -> float:
        """Cores the machine left idle on average."""
        return self.machine.idle / self.seconds

    def other(self) -> float:
        """Cores used by processes not watched (other work on the machine)."""
        return max(0.0, self.machine.busy - sum(self.cpu.values())) / self.seconds

    def throttled(self, pid: int) -> float:
        """The share of its periods in which ``pid``'s group used its whole quota."""
        counters = self.throttling.get(pid)
        return counters.throttled / counters.periods if counters and counters.periods else 0.0
