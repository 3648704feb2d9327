"""`pymemcg bench`: how much faster pymemcg reads this host's cgroups than
Python reading memory.stat, measured here with the installed package alone.

Two comparisons, each within one run so that its ratio holds for this host as
it is now: one cgroup (ROOT) read with Reader.read against os.pread + parse of
its memory.stat (the file kept open), and ROOT's tree read with
Reader.read_tree against a walk that opens, reads and parses the memory.stat
of every cgroup in it. Nothing is made or changed: the cgroups are the host's
own, as they are. The methods take turns in rounds, so that a busy spell of
the machine falls on both alike; per-call figures are the median round.

The project's full benchmark (C, trees of up to 10,000 cgroups made for it,
perf profiles; it writes docs/bench.md) needs a source checkout: bench/ and
`make bench`. It measures with the timing and the memory.stat controls below,
so that both benchmarks mean the same by them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, TextIO, Tuple, Union

from .. import __version__
from ..errors import ReadError
from ..reader import Reader
from .format import Style, colour_wanted, kernel_release
from .options import default_root, selection
from .running import EXIT_INTERRUPTED, EXIT_OK, Stop, open_reader, stop_on_sigterm

#: the stats read when --stats is not given (the full benchmark's selection too)
STATS = ("anon", "file", "shmem", "usage", "pgfault", "pgmajfault", "file_mapped",
         "inactive_file")
READ_SIZE = 65536                # bytes asked of one read of memory.stat
ROUNDS = 5
SECONDS = 1.0                    # per method and comparison


# --- timing ---

@dataclass
class Cost:
    """What `count` operations of one method cost, in seconds.

    real, user and sys are totals over every round (as time(1) reports
    them); per_op is the median round's real time per operation.
    """

    count: int
    real: float
    user: float
    sys: float
    rounds: List[float] = field(default_factory=list)   # real seconds per op, each round

    @property
    def per_op(self) -> float:
        # imported here: the parser reads this module's defaults on every run
        import statistics
        return statistics.median(self.rounds)

    @property
    def best(self) -> float:
        """The fastest round's real seconds per operation."""
        return min(self.rounds)

    @property
    def cpu_per_op(self) -> float:
        """user + sys seconds per operation, over all rounds."""
        return (self.user + self.sys) / self.count

    def add(self, n: int, real: float, user: float, sys_: float) -> None:
        self.count += n
        self.real += real
        self.user += user
        self.sys += sys_
        self.rounds.append(real / n)


def _cpu() -> Tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def time_loop(fn: Callable[[], object], n: int) -> Tuple[float, float, float]:
    """(real, user, sys) seconds of n calls of fn, garbage collector off."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        u0, s0 = _cpu()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        u1, s1 = _cpu()
    finally:
        if gc_was_enabled:
            gc.enable()
    return t1 - t0, u1 - u0, s1 - s0


def timed_rounds(methods: Dict[str, Callable[[], object]], count: Union[int, Mapping[str, int]],
                 rounds: int) -> Dict[str, Cost]:
    """count calls of each method (or count[name] of each), in `rounds` chunks that
    the methods take in turn; at least one call per round."""
    counts = count if isinstance(count, Mapping) else dict.fromkeys(methods, count)
    for fn in methods.values():
        fn()  # warm up: links attached, names learned, dentries cached
    costs = {name: Cost(0, 0.0, 0.0, 0.0) for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            chunk = max(1, counts[name] // rounds)
            costs[name].add(chunk, *time_loop(fn, chunk))
    return costs


def calls_for(fn: Callable[[], object], seconds: float) -> int:
    """About how many calls of fn take `seconds` here (fn is warmed up first)."""
    fn()
    n = 1
    while True:
        took = time_loop(fn, n)[0]
        if took >= 0.05 or took * 4 >= seconds:
            return max(1, int(seconds * n / took)) if took > 0 else n
        n *= 4


def fmt_time(seconds: float, micro: str = "µs") -> str:
    """0.0000123 -> '12.3 µs' (ns, µs, ms or s); `micro` spells the µs."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} {micro}"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


# --- the controls: Python reading memory.stat ---

def parse_memory_stat(data: bytes) -> Dict[str, int]:
    """memory.stat bytes -> {key: int value}, every 'key value' line.

    The fastest plain-Python parse we found (split once, pair the words).
    """
    words = data.decode("ascii").split()
    return dict(zip(words[::2], map(int, words[1::2])))


def read_stat_pread(fd: int) -> Dict[str, int]:
    """pread of an fd kept open, then parse. Returns the parsed dict."""
    return parse_memory_stat(os.pread(fd, READ_SIZE, 0))


def read_stat_open(path: str) -> Dict[str, int]:
    """open + read + close + parse of `path` (a memory.stat file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, READ_SIZE)
    finally:
        os.close(fd)
    return parse_memory_stat(data)


def walk_tree_text(root: str) -> Dict[str, Dict[str, int]]:
    """cgroup dir -> parsed memory.stat, for `root` and every cgroup below it.

    An os.scandir walk; each memory.stat is opened, read, closed and parsed.
    A cgroup removed during the walk is left out, as a BPF walk leaves it.
    """
    out: Dict[str, Dict[str, int]] = {}
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            out[path] = read_stat_open(path + "/memory.stat")
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except FileNotFoundError:
            if path == root:
                raise
    return out


# --- the command ---

def compare(reader_fn: Callable[[], object], text_fn: Callable[[], object], seconds: float,
            rounds: int) -> Dict[str, Cost]:
    """{"pymemcg": cost, "memory.stat": cost}, about `seconds` of calls each."""
    methods = {"pymemcg": reader_fn, "memory.stat": text_fn}
    counts = {name: max(rounds, calls_for(fn, seconds)) for name, fn in methods.items()}
    return timed_rounds(methods, counts, rounds)


def _part(costs: Dict[str, Cost], cgroups: int) -> Dict[str, Any]:
    ours, theirs = costs["pymemcg"], costs["memory.stat"]
    return {"cgroups": cgroups,
            **{name: {"per_call": c.per_op, "cpu_per_call": c.cpu_per_op, "calls": c.count}
               for name, c in costs.items()},
            "speedup": theirs.per_op / ours.per_op,
            "cpu_speedup": theirs.cpu_per_op / ours.cpu_per_op if ours.cpu_per_op > 0 else None}


def run(reader: Reader, root: str, seconds: float, rounds: int) -> Dict[str, Any]:
    """Both comparisons on ROOT, as JSON-ready data (seconds per call)."""
    reader.read(root)
    stat_path = os.path.join(root, "memory.stat")
    try:
        fd = os.open(stat_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ReadError(f"cannot open {stat_path} ({e.strerror}): the comparison reads it; "
                        f"pass a ROOT that has one") from None
    try:
        single = compare(lambda: reader.read(root), lambda: read_stat_pread(fd), seconds,
                         rounds)
    finally:
        os.close(fd)
    cgroups = len(reader.read_tree(root))
    tree = compare(lambda: reader.read_tree(root), lambda: walk_tree_text(root), seconds,
                   rounds)
    return {"version": __version__, "kernel": kernel_release(),
            "cgroup_version": reader.cgroup_version, "backend": reader.backend,
            "read_method": reader.read_method, "root": root, "stats": list(reader.stats),
            "local": reader.local, "rounds": rounds, "read": _part(single, 1),
            "read_tree": _part(tree, cgroups)}


LABELS = {"read": ("Reader.read", "os.pread + parse of memory.stat"),
          "read_tree": ("Reader.read_tree", "walk + parse of every memory.stat")}


def write_report(out: TextIO, result: Dict[str, Any], style: Style) -> None:
    """The result as a table: per call, CPU per call and calls of each method,
    then how many times faster pymemcg is, by real time and by CPU time."""
    out.write(style(f"pymemcg {result['version']} bench", "bold") +
              f": Linux {result['kernel']}, cgroup v{result['cgroup_version']}, backend "
              f"{result['backend']} ({result['read_method']}), {len(result['stats'])} stats, "
              f"{result['rounds']} rounds\n")
    rows: List[Tuple[str, ...]] = [("", "per call", "CPU per call", "calls")]
    for part, (ours, theirs) in LABELS.items():
        r = result[part]
        rows.append((f"one cgroup: {result['root']}" if part == "read" else
                     f"tree of {r['cgroups']} cgroups: {result['root']}",))
        for label, key in ((ours, "pymemcg"), (theirs, "memory.stat")):
            c = r[key]
            rows.append((f"  {label}", fmt_time(c["per_call"], "us"),
                         fmt_time(c["cpu_per_call"], "us"), f"{c['calls']:,}"))
        cpu = f"{r['cpu_speedup']:.1f}x" if r["cpu_speedup"] is not None else "-"
        rows.append((f"  -> {ours} {r['speedup']:.1f}x faster (CPU time: {cpu})",))
    width = max(len(r[0]) for r in rows if len(r) > 1)
    cols = [max(len(r[i]) for r in rows if len(r) > 1) for i in range(1, 4)]
    for i, r in enumerate(rows):
        if len(r) == 1:
            out.write(r[0] + "\n")
            continue
        line = "  ".join([r[0].ljust(width)] + [c.rjust(w) for c, w in zip(r[1:], cols)])
        out.write((style(line, "bold") if i == 0 else line).rstrip() + "\n")


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    names = selection(args, STATS)
    root = default_root(args.root)
    with stop_on_sigterm():
        try:
            with open_reader(names, args.local, args.backend, args.flush) as reader:
                result = run(reader, root, args.seconds, args.rounds)
        except Stop:
            return EXIT_INTERRUPTED
    if args.format == "json":
        json.dump(result, out, indent=2)
        out.write("\n")
    else:
        write_report(out, result, Style(colour_wanted(out, args.color)))
    return EXIT_OK
