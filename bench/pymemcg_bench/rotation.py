"""A poller's rotation: N distinct cgroups read in turn, over and over, by
Reader.read (one call per cgroup), Reader.read_many (one call for the whole
list) and memory.stat pread + parse (an fd per cgroup kept open), at N of
100, 1,000 and 10,000. Per-cgroup cost, median round; a reader that lets go
of cgroups it will read again (a bounded cache evicted in order) shows a
cliff past its bound.

The kernel's floor at each size, by the same method: bench/memcg_bench's
rotation of the same cgroups in C (the one-call read of each, the batch
read of the list, pread of each memory.stat), through the same shim calls
with nothing of Python's; Python's share is what read() and read_many() cost
on top of it."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pymemcg import programs
from pymemcg.cli.bench import read_stat_pread
from pymemcg.reader import Reader

from . import STATS, log
from .c_side import CBench
from .cgroups import BenchCgroups, make_tree, plan_tree, remove_tree

ROTATION_SIZES = (100, 1_000, 10_000)
METHODS = ("read()", "read_many()", "pread+parse")
#: bench/memcg_bench's rotation methods, and the Python method each is the floor of
C_METHODS = {"fetch-each": "read()", "fetch-many": "read_many()", "stat-pread": "pread+parse"}


@dataclass
class RotationResult:
    size: int
    per_cgroup: Dict[str, float]    # method -> seconds per cgroup (median round)
    read_method: str
    # method -> CPU seconds of this process (user + system) per cgroup, median
    # round: on a machine that other jobs share, what waiting for a CPU
    # leaves out of the wall-clock figure
    cpu_per_cgroup: Dict[str, float]
    # C method (C_METHODS) -> CPU seconds per cgroup of bench/memcg_bench's
    # rotation of the same cgroups ({} without the C side)
    c_cpu_per_cgroup: Dict[str, float]


def _pass_seconds(fn: Callable[[], object]) -> Tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of one pass."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def c_rotation(cbench: CBench, paths: List[str], rounds: int) -> Dict[str, float]:
    """CPU seconds per cgroup of each C rotation method (C_METHODS) over
    paths: bench/memcg_bench, a pass of each method to warm up, then
    `rounds` rounds of one pass per method, taking turns, as here (median
    round); its fetch program has a Reader's slots."""
    listing = os.path.join(os.path.dirname(cbench.specs), "rotation-paths.txt")
    with open(listing, "w") as f:
        f.write("\n".join(paths) + "\n")
    _costs, info = cbench.run("rotation", listing, rounds, rounds,
                              capacity=programs.MAX_FETCH_CGROUPS)
    return {m: statistics.median(float(x) for x in info[m]["cpu_rounds"].split(",")) / len(paths)
            for m in C_METHODS if m in info}


def measure_rotation(cgroups: BenchCgroups, rounds: int,
                     sizes: Sequence[int] = ROTATION_SIZES,
                     cbench: Optional[CBench] = None) -> List[RotationResult]:
    """For each size: a tree of that many cgroups, a new Reader, one pass of
    each method to warm up (the reader takes hold of each cgroup), then
    `rounds` rounds of one pass per method, taking turns; then the C side's
    rotation of the same cgroups (the kernel's floor), where cbench is given."""
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

                # each pymemcg method takes one value of each record: read_many's
                # records are unpacked on first use, read()'s when made, and the
                # text side's are parsed: each pass ends with the values in hand
                first = STATS[0]

                def each_read() -> None:
                    for p in paths:
                        read(p).get(first)

                def many() -> None:
                    for rec in read_many(paths):
                        assert rec is not None   # every path is a cgroup of this run's
                        rec.get(first)

                def each_pread() -> None:
                    for fd in fds:
                        read_stat_pread(fd)

                passes: Dict[str, Callable[[], object]] = {
                    "read()": each_read, "read_many()": many,
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
                result = RotationResult(n, {m: statistics.median(t) for m, t in times.items()},
                                        reader.read_method,
                                        {m: statistics.median(t) for m, t in cpu.items()}, {})
            if cbench is not None:
                # after the Reader let go of its slots: the C program takes its own
                result.c_cpu_per_cgroup = c_rotation(cbench, paths, rounds)
            out.append(result)
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
    return lines + floor_markdown(results)


def python_share(r: RotationResult, c_method: str) -> float:
    """CPU seconds per cgroup that the Python method costs on top of its C floor."""
    return r.cpu_per_cgroup[C_METHODS[c_method]] - r.c_cpu_per_cgroup[c_method]


def floor_markdown(results: List[RotationResult]) -> List[str]:
    """The rotation against the kernel's floor at each size: the C side's
    rotation of the same cgroups, and Python's share on top of it."""
    floored = [r for r in results if set(C_METHODS) <= set(r.c_cpu_per_cgroup)]
    if not floored:
        return []
    us = 1e6
    lines = ["The kernel's floor: the same cgroups in the same rotation in C (bench/memcg_bench "
             "rotation, through the same shim calls, no Python): the one-call read of each "
             "(pmc_fetch_read), the batch read of the list (pmc_fetch_run_many, up to "
             "256 a run, the records copied out), pread of each memory.stat. CPU "
             "microseconds per cgroup, median round; *Python's share*: the Python method's "
             "CPU less its C floor's.", "",
             "| cgroups | C one-call read | read() | Python's share | C batch read | "
             "read_many() | Python's share | C pread | pread+parse |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in floored:
        c, py = r.c_cpu_per_cgroup, r.cpu_per_cgroup
        lines.append(f"| {r.size:,} | {c['fetch-each'] * us:.2f} | {py['read()'] * us:.2f} | "
                     f"{python_share(r, 'fetch-each') * us:.2f} | "
                     f"{c['fetch-many'] * us:.2f} | {py['read_many()'] * us:.2f} | "
                     f"{python_share(r, 'fetch-many') * us:.2f} | "
                     f"{c['stat-pread'] * us:.2f} | {py['pread+parse'] * us:.2f} |")
    base = floored[0]
    for r in floored[1:]:
        lines += ["", f"At {r.size:,} against {base.size:,}, per cgroup: the C one-call read "
                      f"{r.c_cpu_per_cgroup['fetch-each'] / base.c_cpu_per_cgroup['fetch-each']:.2f}x, "
                      f"Python's share of read() "
                      f"{python_share(r, 'fetch-each') / python_share(base, 'fetch-each'):.2f}x; "
                      f"the C batch read "
                      f"{r.c_cpu_per_cgroup['fetch-many'] / base.c_cpu_per_cgroup['fetch-many']:.2f}x, "
                      f"Python's share of read_many() "
                      f"{python_share(r, 'fetch-many') / python_share(base, 'fetch-many'):.2f}x."]
    return lines + [""]
