"""A poller's rotation: N distinct cgroups read in turn, over and over, by
Reader.read (one call per cgroup), Reader.read_many (one call for the whole
list) and memory.stat pread + parse (an fd per cgroup kept open), at N of
100, 1,000 and 10,000. Per-cgroup cost, median round; a reader that lets go
of cgroups it will read again (a bounded cache evicted in order) shows a
cliff past its bound."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from pymemcg.cli.bench import read_stat_pread
from pymemcg.reader import Reader

from . import STATS, log
from .cgroups import BenchCgroups, make_tree, plan_tree, remove_tree

ROTATION_SIZES = (100, 1_000, 10_000)
METHODS = ("read()", "read_many()", "pread+parse")


@dataclass
class RotationResult:
    size: int
    per_cgroup: Dict[str, float]    # method -> seconds per cgroup (median round)
    read_method: str
    # method -> CPU seconds of this process (user + system) per cgroup, median
    # round: on a machine that other jobs share, what waiting for a CPU
    # leaves out of the wall-clock figure
    cpu_per_cgroup: Dict[str, float]


def _pass_seconds(fn: Callable[[], object]) -> Tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of one pass."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def measure_rotation(cgroups: BenchCgroups, rounds: int,
                     sizes: Sequence[int] = ROTATION_SIZES) -> List[RotationResult]:
    """For each size: a tree of that many cgroups, a new Reader, one pass of
    each method to warm up (the reader takes hold of each cgroup), then
    `rounds` rounds of one pass per method, taking turns."""
    out = []
    for n in sizes:
        top = cgroups.path(f"rotation{n}")
        log(f"rotation over {n:,} cgroups: {rounds} rounds")
        make_tree(top, n)
        paths = [top] + [os.path.join(top, rel) for rel in plan_tree(n)]
        fds = []
        try:
            fds = [os.open(os.path.join(p, "memory.stat"), os.O_RDONLY | os.O_CLOEXEC)
                   for p in paths]
            with Reader(stats=STATS, backend="bpf") as reader:
                read, read_many = reader.read, reader.read_many

                def each_read() -> None:
                    for p in paths:
                        read(p)

                def each_pread() -> None:
                    for fd in fds:
                        read_stat_pread(fd)

                passes: Dict[str, Callable[[], object]] = {
                    "read()": each_read, "read_many()": lambda: read_many(paths),
                    "pread+parse": each_pread}
                for fn in passes.values():
                    fn()
                times: Dict[str, List[float]] = {m: [] for m in METHODS}
                cpu: Dict[str, List[float]] = {m: [] for m in METHODS}
                for _ in range(rounds):
                    for name, fn in passes.items():
                        wall, used = _pass_seconds(fn)
                        times[name].append(wall / n)
                        cpu[name].append(used / n)
                out.append(RotationResult(n, {m: statistics.median(t) for m, t in times.items()},
                                          reader.read_method,
                                          {m: statistics.median(t) for m, t in cpu.items()}))
        finally:
            for fd in fds:
                os.close(fd)
            for failure in remove_tree(top):
                log(f"could NOT remove {failure}")
    return out


def rotation_markdown(results: List[RotationResult]) -> List[str]:
    """The rotation table: per-cgroup cost of each method at each size, and
    how the largest size compares with the smallest."""
    if not results:
        return []
    us = 1e6
    lines = ["### A poller's rotation", "",
             "N distinct cgroups read in turn, over and over: Reader.read of each, one "
             "Reader.read_many of the whole list, and memory.stat pread + parse of each (an fd "
             f"per cgroup kept open). Microseconds per cgroup, median round; read through "
             f"{results[0].read_method}.", "",
             "| cgroups | read() | read_many() | pread+parse | pread+parse / read() | "
             "pread+parse / read_many() |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        c = r.per_cgroup
        lines.append(f"| {r.size:,} | {c['read()'] * us:.2f} | {c['read_many()'] * us:.2f} | "
                     f"{c['pread+parse'] * us:.2f} | {c['pread+parse'] / c['read()']:.1f}x | "
                     f"{c['pread+parse'] / c['read_many()']:.1f}x |")
    first, last = results[0].per_cgroup, results[-1].per_cgroup
    lines += ["", f"At {results[-1].size:,} cgroups against {results[0].size:,}: read() "
                  f"{last['read()'] / first['read()']:.2f}x, read_many() "
                  f"{last['read_many()'] / first['read_many()']:.2f}x per cgroup.", "",
              "CPU time of this process (user + system) per cgroup, microseconds, median "
              "round (what the wall-clock figures are less any wait for a CPU):", "",
              "| cgroups | read() | read_many() | pread+parse |", "|---:|---:|---:|---:|"]
    for r in results:
        c = r.cpu_per_cgroup
        lines.append(f"| {r.size:,} | {c['read()'] * us:.2f} | {c['read_many()'] * us:.2f} | "
                     f"{c['pread+parse'] * us:.2f} |")
    first, last = results[0].cpu_per_cgroup, results[-1].cpu_per_cgroup
    lines += ["", f"CPU at {results[-1].size:,} against {results[0].size:,}: read() "
                  f"{last['read()'] / first['read()']:.2f}x, read_many() "
                  f"{last['read_many()'] / first['read_many()']:.2f}x per cgroup.", ""]
    return lines
