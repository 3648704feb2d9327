"""A daemon's snapshot: 1,000 cgroups with pressure, protections, limits,
events and cgroup.stat selected beside memory.stat's stats, read by
`Reader(for_trees=True).read_tree` against Python reading and parsing the
files that carry the same signals.

The Python side is the control a competent daemon would write: for each
cgroup its directory is opened once, each file is opened relative to it
(`os.open(name, dir_fd=...)`), read with one `os.read` and closed, and only
the selected values are parsed (bytes split once; `int()` of the values
wanted, not of every key). Which files: exactly those pymemcg's text
backend reads for the selection on this host's cgroup version
(memory_stat.text_availability), so a signal the host has no file for is
read by neither the control nor the text backend:

- cgroup v2: memory.stat, memory.current, memory.max, memory.min,
  memory.low, memory.high, memory.pressure, memory.events, cgroup.stat;
- cgroup v1: memory.stat (total_* keys), memory.usage_in_bytes,
  memory.limit_in_bytes, memory.soft_limit_in_bytes,
  memory.memsw.limit_in_bytes, memory.failcnt, memory.oom_control
  (oom_kill). v1 has no memory.pressure, memory.events, memory.min/low/high
  or cgroup.stat: BPF serves memory.events' counters and cgroup.stat's
  numbers there (the kernel keeps them on v1 too), the control cannot, so
  on v1 pymemcg returns more values per cgroup than the control does.

Both sides read the same idle tree and are checked to agree on every value
both have before the timing. Methods take turns in rounds; figures are
medians of the rounds.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from pymemcg import catalog
from pymemcg.cgroupfs import memory_mount
from pymemcg.decode import MAX, RAW_MAX
from pymemcg.memory_stat import (CGROUP_STAT_KEYS, EVENTS_KEYS, PRESSURE_FILE, number_files,
                                 printed_keys, text_availability)
from pymemcg.reader import Reader

from . import STATS, log
from .cgroups import BenchCgroups, make_tree, remove_tree
from .measure import cold_then_warm

SIGNALS_SIZE = 1_000
GOAL_SIGNALS = 50.0        # the snapshot at least 50x faster than the files read in Python

#: the selection: the benchmark's memory.stat stats, then pressure, the
#: protections and limits, memory.events' counters (and v1's failcnt), cgroup.stat
SIGNAL_STATS: Tuple[str, ...] = (
    *STATS,
    *(catalog.pressure_name(line, f) for line in catalog.PRESSURE_LINES
      for f in ("total", *catalog.PRESSURE_WINDOWS)),
    "memory_min", "memory_low", "memory_high", "limit", "soft_limit", "memsw_limit",
    "low", "high", "max", "oom", "oom_kill", "oom_group_kill", "failcnt",
    "nr_descendants", "nr_dying_descendants",
)

READ_SIZE_STAT = 65536       # bytes asked of one read of memory.stat
READ_SIZE_SMALL = 4096       # ... of every other file (a line or a few)

Values = Dict[str, int]


# --- the control: Python reading the files ---

@dataclass
class FilePlan:
    """What the control reads on this host: file name -> the parser of the
    selected values it carries; and the stats no file carries here."""

    version: int
    parsers: Dict[str, Callable[[bytes, Values], None]]
    files_of: Dict[str, str] = field(default_factory=dict)     # stat -> file
    no_file: Dict[str, str] = field(default_factory=dict)      # stat -> why

    def read_cgroup(self, dfd: int) -> Values:
        """The selected values of the cgroup whose directory is open as dfd."""
        out: Values = {}
        for fname, parse in self.parsers.items():
            fd = os.open(fname, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
            try:
                data = os.read(fd, READ_SIZE_STAT if fname == "memory.stat" else READ_SIZE_SMALL)
            finally:
                os.close(fd)
            parse(data, out)
        return out

    def walk(self, root: str) -> Dict[str, Values]:
        """cgroup directory -> its values, for root and every cgroup below it."""
        out: Dict[str, Values] = {}
        stack = [root]
        read_cgroup = self.read_cgroup
        while stack:
            path = stack.pop()
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                out[path] = read_cgroup(dfd)
            finally:
                os.close(dfd)
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        return out


def _keyed(keys: Dict[bytes, str]) -> Callable[[bytes, Values], None]:
    """A parser of 'key value' lines that converts only `keys` (file key -> stat)."""
    wanted = list(keys.items())

    def parse(data: bytes, out: Values) -> None:
        words = data.split()
        pairs = dict(zip(words[::2], words[1::2]))
        for key, name in wanted:
            value = pairs.get(key)
            if value is not None:
                out[name] = int(value)
    return parse


def _number(name: str) -> Callable[[bytes, Values], None]:
    """A parser of a one-number file; "max" is the page counter's maximum, as
    the v1 files print it and the records hold it."""
    def parse(data: bytes, out: Values) -> None:
        out[name] = RAW_MAX if data == b"max\n" else int(data)
    return parse


def _pressure(names: List[str]) -> Callable[[bytes, Values], None]:
    """A parser of memory.pressure: total= in microseconds, avgN=5.23 as 523."""
    wanted = {(line.encode(), fld.encode()): catalog.pressure_name(line, fld)
              for line in catalog.PRESSURE_LINES
              for fld in ("total", *catalog.PRESSURE_WINDOWS)
              if catalog.pressure_name(line, fld) in names}

    def parse(data: bytes, out: Values) -> None:
        for line in data.splitlines():
            head, *fields = line.split()
            for f in fields:
                key, _, value = f.partition(b"=")
                name = wanted.get((head, key))
                if name is not None:
                    out[name] = int(value) if key == b"total" else int(value.replace(b".", b""))
    return parse


def file_plan(names: Tuple[str, ...], version: int, mountpoint: str) -> FilePlan:
    """The files the control reads for `names` on cgroup `version`: those the
    text backend reads (text_availability), each parsed for what is selected."""
    keys = printed_keys(mountpoint)
    plan = FilePlan(version, {})
    by_file: Dict[str, List[str]] = {}
    for n in names:
        ok, where = text_availability(n, version, False, keys)
        if ok:
            plan.files_of[n] = where
            by_file.setdefault(where, []).append(n)
        else:
            plan.no_file[n] = where
    numbers = number_files(version)
    for fname, stats in by_file.items():
        if fname == "memory.stat":
            plan.parsers[fname] = _keyed({
                (("total_" + catalog.STATS[n].v1_key) if version == 1
                 else catalog.STATS[n].v2_key).encode(): n for n in stats})
        elif fname == PRESSURE_FILE:
            plan.parsers[fname] = _pressure(stats)
        elif fname in ("memory.events", "memory.oom_control"):
            plan.parsers[fname] = _keyed({k.encode(): n for k, n in EVENTS_KEYS.items()
                                          if n in stats})
        elif fname == "cgroup.stat":
            plan.parsers[fname] = _keyed({k.encode(): n for k, n in CGROUP_STAT_KEYS.items()
                                          if n in stats})
        elif len(stats) == 1 and numbers.get(stats[0]) == fname:
            plan.parsers[fname] = _number(stats[0])
        else:
            raise RuntimeError(f"the control has no parser for {fname} ({stats})")
    return plan


# --- the measurement ---

@dataclass
class SignalsResult:
    """Seconds per snapshot by method ("bpf": read_tree; "bpf+columns":
    read_tree and every selected column taken out of it; "files": the
    control), medians; CPU the same in user + sys; values per cgroup each side
    returns; the plan."""

    size: int
    version: int
    iterations: int
    rounds: int
    per_snapshot: Dict[str, float]
    cpu: Dict[str, float]
    best: Dict[str, float]
    bpf_served: List[str]     # the stats BPF has a value of
    file_values: int
    compared: int
    plan: FilePlan
    read_method: str


def compare(snapshot, files: Dict[str, Values]) -> int:
    """Every value both sides have is equal (a limit not set is MAX in the
    snapshot, the page counter's maximum in the files); returns how many were
    compared."""
    mountpoint = memory_mount().mountpoint
    if len(snapshot) != len(files):
        raise RuntimeError(f"BPF saw {len(snapshot)} cgroups, the files {len(files)}")
    compared, differ = 0, {}
    for path, vals in files.items():
        rel = "/" + os.path.relpath(path, mountpoint)
        rec = snapshot["/" if rel == "/." else rel]
        for name, v in vals.items():
            b = rec.get(name)
            if b is None:
                continue
            compared += 1
            if (RAW_MAX if b is MAX else b) != v:
                differ[(rel, name)] = (b, v)
    if differ:
        raise RuntimeError(f"BPF != the files (bpf, files): {dict(list(differ.items())[:10])}")
    return compared


def measure_signals(cgroups: BenchCgroups, iterations: int, rounds: int,
                    size: int = SIGNALS_SIZE) -> SignalsResult:
    """The tree made for it, both sides checked to agree, then `rounds` rounds
    in which each method takes `iterations` snapshots back to back (after
    one with the caches evicted first)."""
    mount = memory_mount()
    root = cgroups.path(f"signals{size}")
    plan = file_plan(SIGNAL_STATS, mount.version, mount.mountpoint)
    try:
        make_tree(root, size)
        with Reader(stats=SIGNAL_STATS, backend="bpf", for_trees=True) as reader:
            read_tree = reader.read_tree
            columns = reader.stats

            def with_columns():
                return read_tree(root).columns(columns)

            compared, last = 0, None
            for attempt in range(5):
                try:
                    snap = read_tree(root)
                    files = plan.walk(root)
                    compared = compare(snap, files)
                    break
                except RuntimeError as e:
                    last = e
                    log(f"retrying the comparison with the files: {e}")
                    time.sleep(1.0)
            else:
                raise RuntimeError(f"BPF and the files disagree: {last}")
            assert len(snap) == size, f"BPF walk saw {len(snap)} cgroups, not {size}"
            bpf_served = [n for n, v in snap.records[-1].as_dict().items() if v is not None]
            file_values = len(next(iter(files.values())))
            log(f"signals, {size:,} cgroups: {len(bpf_served)} values per cgroup through BPF, "
                f"{file_values} from {len(plan.parsers)} files; {compared:,} compared, "
                f"equal; {rounds} rounds of {iterations} snapshots")
            methods = {"bpf": lambda: read_tree(root), "bpf+columns": with_columns,
                       "files": lambda: plan.walk(root)}
            per: Dict[str, List[float]] = {}
            cpu: Dict[str, List[float]] = {}
            for _ in range(rounds):
                cold_then_warm(methods, iterations, per, cpu)
            read_method = reader.read_method
    finally:
        failed = remove_tree(root)
        if failed:
            log("could NOT remove: " + "; ".join(failed))
    return SignalsResult(size, mount.version, iterations, rounds,
                         {k: statistics.median(v) for k, v in per.items()},
                         {k: statistics.median(v) for k, v in cpu.items()},
                         {k: min(v) for k, v in per.items()},
                         bpf_served, file_values, compared, plan, read_method)


SIGNALS_LABELS = {
    "bpf": "pymemcg `Reader(for_trees=True).read_tree`",
    "bpf+columns": "the same + `Snapshot.columns()` of every selected stat",
    "files": "Python: walk + read and parse the files",
}


def signals_markdown(r: SignalsResult) -> List[str]:
    """The section: what each side reads, time and CPU per snapshot, ratios."""
    from pymemcg.cli.bench import fmt_time

    files = sorted(set(r.plan.files_of.values()), key=lambda f: (f != "memory.stat", f))
    bpf_only = [n for n in r.plan.no_file if n in r.bpf_served]
    lines = [
        f"## 2b. A daemon's snapshot: {r.size:,} cgroups with pressure, protections and events",
        "",
        f"Stats selected ({len(SIGNAL_STATS)}): {', '.join(SIGNAL_STATS)}. Cgroup v{r.version}; "
        f"pymemcg reads by {r.read_method}. The Python side opens each cgroup's directory "
        "once, then opens (relative to it), reads once and closes each file below, and "
        "converts only the selected values (the files the text backend reads for this "
        f"selection on cgroup v{r.version}): {', '.join(f'`{f}`' for f in files)}.",
        "",
        f"Values per cgroup: {len(r.bpf_served)} through BPF, {r.file_values} from the files; "
        f"{r.compared:,} values both have were compared on the idle tree before the timing, "
        "all equal." + (
            f" No file on this host carries {', '.join(sorted(r.plan.no_file))}"
            + (f"; BPF serves {', '.join(sorted(bpf_only))} all the same (the kernel keeps "
               "them)" if bpf_only else "") + "." if r.plan.no_file else ""),
    ]
    lines += [
        "",
        f"Median of {r.rounds} rounds in which the methods take turns; in each, one snapshot "
        f"after the caches were evicted, then {r.iterations} back to back.",
        "",
        "| method | per snapshot | CPU per snapshot | caches evicted first | files ÷ method "
        "| the same, CPU | the same, caches evicted |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    f, fc, fcold = r.per_snapshot["files"], r.cpu["files"], r.per_snapshot["files-cold"]
    for m, label in SIGNALS_LABELS.items():
        p, c, cold = r.per_snapshot[m], r.cpu[m], r.per_snapshot[m + "-cold"]
        lines.append(f"| {label} | {fmt_time(p)} | {fmt_time(c)} | {fmt_time(cold)} | "
                     f"{f / p:.1f}× | {fc / c:.1f}× | {fcold / cold:.1f}× |")
    lines.append("")
    return lines


def signals_goal(r: SignalsResult):
    """The goal row: read_tree against the files, medians (and the columns' and
    the cold snapshot's ratios beside)."""
    from pymemcg.cli.bench import fmt_time

    from .report import Goal
    ps = r.per_snapshot
    x = ps["files"] / ps["bpf"]
    return Goal(f"{r.size:,}-cgroup snapshot with pressure, protections and events ≥ "
                f"{GOAL_SIGNALS:.0f}× faster than Python reading the same files (cgroup "
                f"v{r.version})",
                f"median {x:.1f}× ({fmt_time(ps['bpf'])} vs {fmt_time(ps['files'])}); best "
                f"{r.best['files'] / r.best['bpf']:.1f}×; CPU time "
                f"{r.cpu['files'] / r.cpu['bpf']:.1f}×; with every column taken out "
                f"{ps['files'] / ps['bpf+columns']:.1f}×; caches evicted first "
                f"{ps['files-cold'] / ps['bpf-cold']:.1f}×",
                x >= GOAL_SIGNALS, x / GOAL_SIGNALS)
