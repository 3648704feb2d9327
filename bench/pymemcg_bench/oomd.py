"""Part 5: examples/oomd.py, the systemd-oomd-like daemon, at 1,000 cgroups:
its polls through one pymemcg Reader against the same daemon reading the
cgroup files, and the daemon's CPU at systemd-oomd's intervals.

A poll is timed in the state where it reads the most, which is when it
matters: a watched cgroup above its pressure limit (systemd-oomd then reads
the watched cgroup and every kill candidate below it each second; the
pymemcg daemon also reads the watched cgroup's memory.pressure then, to
confirm it), and
memory and swap above the swap limit (it then reads every candidate each
150 ms). Both daemons are the example's own Oomd with its two sources, so the
logic is the same line for line; only the reads differ. Quiet polls (nothing
above a limit) read one cgroup, and /proc/meminfo for swap: they are
reported too.

On cgroup v1 the daemon refuses to run (pressure, memory.swap.current,
memory.min/low, memory.oom.group and cgroup.kill are v2's), and so is timed
on what v1 has: the files side reads v1's memory.stat and
memory.usage_in_bytes per cgroup (2 files instead of v2's 7), the pymemcg
side reads the same stats (those v1 lacks are unavailable and cost nothing).
That ratio is v1's, below what v2 gives; `python -m pymemcg_bench oomd` in a
v2 guest measures v2's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, List

from pymemcg.cgroupfs import memory_mount
from pymemcg.reader import Reader

from . import REPO, log
from .cgroups import BenchCgroups, make_tree, remove_tree
from .exporter import interleaved

OOMD_SIZE = 1_000
V1_FILES = {"stat": "memory.stat", "current": "memory.usage_in_bytes"}


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oomd_example", REPO / "examples" / "oomd.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def enable_memory(top: str) -> None:
    """cgroup v2: the memory controller in every cgroup of the tree (its
    files appear only where the parent enables it), parents first."""
    parents = [os.path.dirname(top)] + [d for d, subs, _ in os.walk(top) if subs]
    for d in parents:
        with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
            f.write("+memory")


@dataclass
class OomdResult:
    size: int
    version: int
    candidates: int
    same_candidates: bool
    read_method: str
    costs: Dict[str, Dict[str, float]]      # method -> {"cpu", "real"} seconds per poll


def measure_oomd(cgroups: BenchCgroups, rounds: int, size: int = OOMD_SIZE) -> OomdResult:
    oomd = load_example()
    mount = memory_mount()
    assert mount is not None
    base = mount.mountpoint.rstrip("/")
    top = cgroups.path("oomd")
    try:
        make_tree(top, size)
        if mount.version == 2:
            enable_memory(top)
        rel = top[len(base):]
        with Reader(stats=oomd.STATS, backend="bpf") as reader:
            files = oomd.FileSource(base) if mount.version == 2 else \
                oomd.FileSource(base, V1_FILES)
            daemons = {"pymemcg": oomd.Oomd(oomd.PymemcgSource(base, reader), base, [], [rel]),
                       "files": oomd.Oomd(files, base, [], [rel])}
            got = {}
            for name, d in daemons.items():
                d.refresh([rel])
                got[name] = {p: (c.current, c.pgscan) for p, c in d.cands.items()}
            # v1's memory.stat has no pgscan: compared where the files have it
            same = got["pymemcg"].keys() == got["files"].keys() and all(
                got["pymemcg"][p][0] == cur and scans in (None, got["pymemcg"][p][1])
                for p, (cur, scans) in got["files"].items())

            def poll(d: Any, quiet: bool, swap: bool) -> Callable[[], None]:
                def run() -> None:
                    if swap:
                        d.poll_swap(0.0)            # /proc/meminfo: below the limit here
                    else:
                        watched = d.source.monitored([rel])
                        if not quiet:               # above the limit: confirmed
                            d.source.confirm(watched[rel])
                    if not quiet:
                        d.refresh([rel])
                return run
            methods = {}
            for name, d in daemons.items():
                methods[f"{name} pressure"] = (poll(d, False, False), 5 if name == "files" else 50)
                methods[f"{name} swap"] = (poll(d, False, True), 5 if name == "files" else 50)
                methods[f"{name} quiet pressure"] = (poll(d, True, False), 2000)
                methods[f"{name} quiet swap"] = (poll(d, True, True), 2000)
            log(f"oomd polls of {size:,} cgroups: {rounds} rounds")
            costs = interleaved(methods, rounds)
            return OomdResult(size, mount.version, len(got["pymemcg"]), same,
                              reader.read_method, costs)
    finally:
        failed = remove_tree(top)
        if failed:
            log("could NOT remove: " + "; ".join(failed))


def oomd_markdown(r: OomdResult) -> List[str]:
    c = {m: v["cpu"] for m, v in r.costs.items()}
    ms = 1e3

    def share(side: str, quiet: str = "") -> float:
        return c[f"{side} {quiet}pressure"] / 1.0 + c[f"{side} {quiet}swap"] / 0.15

    where = ("cgroup v2" if r.version == 2 else
             "cgroup v1: the files side reads memory.stat and memory.usage_in_bytes per "
             "cgroup (v1 has none of memory.pressure, memory.swap.current, memory.min, "
             "memory.low, memory.oom.group), so this ratio is v1's, below v2's")
    lines = ["### A memory daemon: examples/oomd.py", "",
             f"systemd-oomd's rules over {r.size:,} cgroups ({r.candidates:,} kill candidates), "
             f"the same daemon reading through one pymemcg Reader ({r.read_method}) and "
             f"reading the files; {where}. A busy poll reads the watched cgroup (pressure) or "
             f"/proc/meminfo (swap) and every candidate, as systemd-oomd does each poll while "
             f"a limit is exceeded; a quiet poll reads only the first. CPU of this process "
             f"per poll (user + system), median round. Both read the same candidates with "
             f"the same values: {'yes' if r.same_candidates else 'NO'}.", "",
             "| poll | files | pymemcg | files / pymemcg |", "|---|---:|---:|---:|"]
    for kind in ("pressure", "swap", "quiet pressure", "quiet swap"):
        f, p = c[f"files {kind}"], c[f"pymemcg {kind}"]
        # a quiet swap poll reads /proc/meminfo alone, the same both ways
        ratio = "same reads" if kind == "quiet swap" else f"{f / p:.1f}x"
        lines.append(f"| {kind} | {f * ms:.3f} ms | {p * ms:.3f} ms | {ratio} |")
    lines += ["", "The daemon's CPU at systemd-oomd's intervals (pressure every 1 s, swap "
                  "every 150 ms), as a share of one core:", "",
              "| state | files | pymemcg |", "|---|---:|---:|",
              f"| both limits exceeded (every poll reads every candidate) | "
              f"{share('files') * 100:.2f}% | {share('pymemcg') * 100:.2f}% |",
              f"| quiet | {share('files', 'quiet ') * 100:.3f}% | "
              f"{share('pymemcg', 'quiet ') * 100:.3f}% |", ""]
    return lines
