"""CPU seconds and resident memory of every process of the system under test, sampled on a thread
of its own (psutil, every 0.2 s) so a busy event loop in the bench client never delays a sample.

Services are single processes and report RSS. Postgres is a tree of backends sharing a buffer
pool, so it reports CPU summed over the tree (reaped children included) and PSS summed over the
tree, which counts shared memory once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

POSTGRES = "postgres"
MACHINE = "machine (all processes)"


@dataclass
class Sample:
    t: float  # time.monotonic(), the clock asyncio's loop.time() also reads
    cpu: dict[str, float]  # label -> CPU seconds since the process started
    mem: dict[str, int]  # label -> bytes resident (RSS, or PSS for Postgres)


def _pss(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu(proc: psutil.Process, children_too: bool = False) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    if children_too:
        total += t.children_user + t.children_system
    return total


def tree_usage(master: psutil.Process) -> tuple[float, int]:
    """CPU seconds and PSS bytes of a process and its children; exited children's CPU is kept
    by the parent once it has reaped them."""
    total_cpu, total_mem = _cpu(master, children_too=True), _pss(master.pid)
    for child in master.children():
        with contextlib.suppress(psutil.Error):
            total_cpu += _cpu(child)
            total_mem += _pss(child.pid)
    return total_cpu, total_mem


@dataclass
class ResourceSampler:
    """Samples `targets()` (label -> pid, re-read at every sample so instances can come and go)
    and, under the label `postgres`, the whole postmaster tree."""

    targets: Callable[[], dict[str, int]]
    postgres_pid: int | None = None
    interval: float = 0.2
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._postgres_cpu = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def sample(self) -> Sample:
        """Take one sample now (also callable from outside, to mark a phase boundary)."""
        cpu: dict[str, float] = {}
        mem: dict[str, int] = {}
        for label, pid in self.targets().items():
            with contextlib.suppress(psutil.Error):
                proc = self._process(pid)
                cpu[label] = _cpu(proc)
                mem[label] = proc.memory_info().rss
        if self.postgres_pid is not None:
            with contextlib.suppress(psutil.Error):
                total, mem[POSTGRES] = tree_usage(self._process(self.postgres_pid))
                # A backend that has exited but is not yet reaped is counted nowhere for a
                # moment; keeping the total monotonic stops that from showing as a dip and spike.
                cpu[POSTGRES] = self._postgres_cpu = max(total, self._postgres_cpu)
        t = psutil.cpu_times()
        cpu[MACHINE] = t.user + t.system + t.nice + getattr(t, "irq", 0) \
            + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
        s = Sample(time.monotonic(), cpu, mem)
        with self._lock:
            self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.t <= end]

    def summary(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Per label over [start, end]: CPU seconds used, mean CPU share of one core, peak memory
        (MB). `machine` minus the others is what the rest of the machine used meanwhile."""
        samples = self.window(start, end)
        if len(samples) < 2:
            return {}
        wall = samples[-1].t - samples[0].t
        labels = {label for s in samples for label in s.cpu}
        out: dict[str, dict[str, float]] = {}
        for label in sorted(labels):
            seen = [s for s in samples if label in s.cpu]
            cpu_s = seen[-1].cpu[label] - seen[0].cpu[label] if len(seen) > 1 else 0.0
            peak = max((s.mem.get(label, 0) for s in seen), default=0)
            out[label] = {"cpu_seconds": round(cpu_s, 2),
                          "cpu_cores": round(cpu_s / wall, 2) if wall else 0.0,
                          "peak_mb": round(peak / 2**20, 1)}
        return out

    def series(self, start: float, end: float) -> dict[str, list[tuple[float, float]]]:
        """CPU use (cores) per label over time, relative to `start`, for the chart."""
        samples = self.window(start, end)
        out: dict[str, list[tuple[float, float]]] = {}
        for prev, cur in zip(samples, samples[1:], strict=False):
            dt = cur.t - prev.t
            if dt <= 0:
                continue
            for label, value in cur.cpu.items():
                if label in prev.cpu:
                    out.setdefault(label, []).append(
                        (round(cur.t - start, 3), round((value - prev.cpu[label]) / dt, 3)))
        return out
