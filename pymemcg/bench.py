"""Benchmark: pymemcg's BPF reads against Python reading memory.stat.

    python -m pymemcg.bench [--quick] [--out FILE]

Two workloads, both on this machine's real cgroups:

(a) one cgroup (this process's memory cgroup), 8 stats: Reader.read() via
    BPF against two Python controls that read and parse the cgroup's
    memory.stat, (i) with pread on a file descriptor kept open, (ii) with
    open + read + close each time.
(b) a tree of 1,000 cgroups made for the run under this process's memory
    cgroup: Reader.read_tree() via BPF against a Python os.scandir walk
    that reads and parses every memory.stat.

Every figure is the best of REPEATS runs of N iterations timed with
time.perf_counter (garbage collector off while timing, as timeit does).
The cgroups of (b) are removed in a finally block, children before
parents, also on Ctrl-C, SIGTERM or SIGHUP. Needs root and the BPF backend.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import signal
import sys
import time
from typing import Callable, Dict, List, Optional

from . import __version__
from .cgroupfs import memory_mount, own_memory_cgroup
from .reader import Reader

#: the stats read in both workloads
STATS = ("anon", "file", "shmem", "usage", "pgfault", "pgmajfault", "file_mapped",
         "inactive_file")
REPEATS = 5
SINGLE_ITERATIONS = 20000        # reads of one cgroup per repeat (--quick: 2000)
TREE_ITERATIONS = 50             # snapshots of the tree per repeat (--quick: 5)
TREE_SIZE = 1000                 # cgroups in the tree, its parent included
TREE_FANOUT = 10                 # children of the parent; the rest sit below them
BENCH_PREFIX = "pymemcg-bench-"
READ_SIZE = 65536                # bytes asked of one read of memory.stat


def log(msg: str) -> None:
    """Progress on stderr, so that stdout carries only the Markdown."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- timing ---

def best_per_call(methods: Dict[str, Callable[[], object]], iterations: int,
                  repeats: int = REPEATS) -> Dict[str, float]:
    """Seconds per call of each method: the best of `repeats` loops of `iterations` calls.

    The methods take turns, one loop each per repeat, so that a noisy spell
    of the machine does not fall on one method only.
    """
    for fn in methods.values():
        fn()  # warm up: links attached, names learned, dentries cached
    best = {name: float("inf") for name in methods}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                for _ in range(iterations):
                    fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: t / iterations for name, t in best.items()}


# --- the Python controls ---

def parse_memory_stat(data: bytes) -> Dict[str, int]:
    """memory.stat bytes -> {key: int value}, every 'key value' line.

    The fastest plain-Python parse we found (split once, pair the words);
    the per-line loop parse_memory_stat_lines gives the same dict, slower.
    """
    words = data.decode("ascii").split()
    return dict(zip(words[::2], map(int, words[1::2])))


def parse_memory_stat_lines(data: bytes) -> Dict[str, int]:
    """Reference parse, line by line; checks parse_memory_stat once per run."""
    out = {}
    for line in data.decode("ascii").splitlines():
        key, value = line.split(" ")
        out[key] = int(value)
    return out


def read_stat_pread(fd: int) -> Dict[str, int]:
    """Control (i): pread of an fd kept open, then parse. Returns the parsed dict."""
    return parse_memory_stat(os.pread(fd, READ_SIZE, 0))


def read_stat_open(path: str) -> Dict[str, int]:
    """Control (ii): open + read + close + parse of `path` (a memory.stat file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, READ_SIZE)
    finally:
        os.close(fd)
    return parse_memory_stat(data)


def walk_tree_text(root: str) -> Dict[str, Dict[str, int]]:
    """Control of (b): cgroup dir -> parsed memory.stat, for `root` and every cgroup below it.

    An os.scandir walk; each memory.stat is opened, read, closed and parsed.
    """
    out: Dict[str, Dict[str, int]] = {}
    stack = [root]
    while stack:
        path = stack.pop()
        out[path] = read_stat_open(path + "/memory.stat")
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return out


# --- the measurements ---

def measure_single(cgroup: str, iterations: int) -> Dict[str, float]:
    """Workload (a): seconds per read of one cgroup: 'bpf', 'pread' and 'open'."""
    stat_path = os.path.join(cgroup, "memory.stat")
    fd = os.open(stat_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # one read must return the whole file, or the controls would do less work
        with open(stat_path, "rb") as f:
            whole = parse_memory_stat_lines(f.read())
        assert read_stat_pread(fd).keys() == whole.keys(), "short pread of memory.stat"
        assert read_stat_open(stat_path).keys() == whole.keys(), "short read of memory.stat"
        with Reader(stats=STATS, backend="bpf") as reader:
            rec = reader.read(cgroup)
            assert all(v is not None for v in rec.as_dict().values()), rec
            read = reader.read
            return best_per_call({
                "bpf": lambda: read(cgroup),
                "pread": lambda: read_stat_pread(fd),
                "open": lambda: read_stat_open(stat_path),
            }, iterations)
    finally:
        os.close(fd)


def plan_tree(total: int = TREE_SIZE, fanout: int = TREE_FANOUT) -> List[str]:
    """Relative paths of the cgroups below the parent, parents before children.

    The parent plus `fanout` children plus the rest spread over them as
    grandchildren make `total` cgroups in all, two levels deep.
    """
    mids = [f"g{i:02d}" for i in range(fanout)]
    leaves = [f"{mids[i % fanout]}/c{i:04d}" for i in range(total - 1 - fanout)]
    return mids + leaves


def remove_tree(top: str) -> List[str]:
    """rmdir the cgroup `top` and every cgroup below it, children first.

    Returns what could not be removed, as 'path: reason' strings. cgroupfs
    directories hold only kernel files, so rmdir of an empty cgroup is all
    it takes; a cgroup whose last task is still exiting is retried.
    """
    dirs = [dirpath for dirpath, _, _ in os.walk(top)]
    dirs.sort(key=lambda p: p.count("/"), reverse=True)
    failed = []
    for path in dirs:
        for attempt in range(20):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if attempt == 19:
                    failed.append(f"{path}: {e.strerror}")
                else:
                    time.sleep(0.05)
    return failed


def remove_stale_trees(base: str) -> None:
    """Remove pymemcg-bench-<pid> trees under `base` left by runs that were killed."""
    for name in os.listdir(base):
        m = re.fullmatch(re.escape(BENCH_PREFIX) + r"(\d+)", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        top = os.path.join(base, name)
        log(f"removing the cgroups an earlier, killed run left under {top}")
        for failure in remove_tree(top):
            log(f"could NOT remove {failure}")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def measure_tree(base: str, iterations: int) -> Dict[str, float]:
    """Workload (b): seconds per snapshot of a 1,000-cgroup tree: 'bpf' and 'text'.

    The tree is made under `base` and removed before returning, whatever
    happens: the cleanup walks the parent, so a cgroup made just before an
    interrupt is removed too.
    """
    parent = os.path.join(base, f"{BENCH_PREFIX}{os.getpid()}")
    stop_signals = (signal.SIGTERM, signal.SIGHUP)
    old_handlers = {sig: signal.signal(sig, _raise_interrupt) for sig in stop_signals}
    old_handlers[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    try:
        log(f"creating {TREE_SIZE} cgroups under {parent}")
        os.mkdir(parent)
        for rel in plan_tree():
            os.mkdir(os.path.join(parent, rel))
        with Reader(stats=STATS, backend="bpf") as reader:
            snap = reader.read_tree(parent)
            assert len(snap) == TREE_SIZE, f"BPF walk saw {len(snap)} cgroups"
            assert len(walk_tree_text(parent)) == TREE_SIZE
            read_tree = reader.read_tree
            log(f"tree: {iterations} snapshots x {REPEATS} repeats per method")
            return best_per_call({
                "bpf": lambda: read_tree(parent),
                "text": lambda: walk_tree_text(parent),
            }, iterations)
    finally:
        # no signal may stop the cleanup half way
        for sig in (signal.SIGINT,) + stop_signals:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if os.path.isdir(parent):
                failed = remove_tree(parent)
                log("removed the benchmark cgroups" if not failed else
                    "could NOT remove: " + "; ".join(failed))
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)


# --- the report ---

def cpu_model() -> str:
    """'model name' of /proc/cpuinfo (other keys on non-x86), or platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model", "Processor"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt_time(seconds: float) -> str:
    """0.0000123 -> '12.3 µs' (ns, µs, ms or s)."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def fmt_ratio(t: float, base: float) -> str:
    """How many times the BPF time `base` the time `t` is."""
    return f"{t / base:.1f}×"


def report(single: Dict[str, float], tree: Dict[str, float], cgroup: str, version: int,
           mountpoint: str, single_iters: int, tree_iters: int) -> str:
    """The Markdown: environment lines, the table, what each row measures."""
    ncpu = os.cpu_count()
    lines = [
        "# pymemcg benchmark",
        "",
        f"- kernel: {os.uname().release}",
        f"- cgroup: v{version} (memory controller at {mountpoint})",
        f"- CPU: {cpu_model()} ({ncpu} CPUs)",
        f"- Python: {platform.python_version()} ({platform.python_implementation()}), "
        f"pymemcg {__version__}",
        f"- stats: {', '.join(STATS)}",
        f"- timing: best of {REPEATS} runs of {single_iters} reads (one cgroup) or "
        f"{tree_iters} snapshots (tree), time.perf_counter, gc off",
        "",
        "| workload | method | time per read | time per cgroup | time vs BPF |",
        "|---|---|---:|---:|---:|",
    ]
    one = "1 cgroup, 8 stats"
    lines.append(f"| {one} | pymemcg `Reader.read` (BPF) | {fmt_time(single['bpf'])} | "
                 f"{fmt_time(single['bpf'])} | 1.0× (baseline) |")
    lines.append(f"| {one} | Python: `os.pread` of memory.stat on an open fd + parse | "
                 f"{fmt_time(single['pread'])} | {fmt_time(single['pread'])} | "
                 f"{fmt_ratio(single['pread'], single['bpf'])} |")
    lines.append(f"| {one} | Python: open + read + close memory.stat + parse | "
                 f"{fmt_time(single['open'])} | {fmt_time(single['open'])} | "
                 f"{fmt_ratio(single['open'], single['bpf'])} |")
    many = f"tree of {TREE_SIZE:,} cgroups"
    lines.append(f"| {many} | pymemcg `Reader.read_tree` (BPF) | {fmt_time(tree['bpf'])} | "
                 f"{fmt_time(tree['bpf'] / TREE_SIZE)} | 1.0× (baseline) |")
    lines.append(f"| {many} | Python: `os.scandir` walk, open + read + close + parse each "
                 f"memory.stat | {fmt_time(tree['text'])} | {fmt_time(tree['text'] / TREE_SIZE)} "
                 f"| {fmt_ratio(tree['text'], tree['bpf'])} |")
    lines += [
        "",
        f"One cgroup: `{cgroup}` (this process's memory cgroup). Tree: a parent, "
        f"{TREE_FANOUT} children and {TREE_SIZE - 1 - TREE_FANOUT} grandchildren made under it "
        f"for the run and removed afterwards. \"time vs BPF\" is the method's time divided by "
        f"the BPF time of the same workload. The Python controls parse every line of memory.stat "
        f"into a dict of ints (str keys) and read no other file: `usage` lives in a separate file "
        f"(memory.usage_in_bytes / memory.current), so they do less I/O than serving the same "
        f"8 stats would take. BPF times include building the Record objects (and, for the tree, "
        f"their paths).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pymemcg.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"{SINGLE_ITERATIONS // 10} reads and {TREE_ITERATIONS // 10} snapshots "
                        f"per repeat instead of {SINGLE_ITERATIONS} and {TREE_ITERATIONS}")
    p.add_argument("--out", metavar="FILE", help="also write the Markdown to FILE")
    args = p.parse_args(argv)
    single_iters = SINGLE_ITERATIONS // 10 if args.quick else SINGLE_ITERATIONS
    tree_iters = TREE_ITERATIONS // 10 if args.quick else TREE_ITERATIONS

    mount = memory_mount()
    cgroup = own_memory_cgroup()
    if mount is None or cgroup is None:
        print("bench: this host has no memory cgroup hierarchy", file=sys.stderr)
        return 2
    try:
        remove_stale_trees(cgroup)
        log(f"one cgroup: {single_iters} reads x {REPEATS} repeats per method")
        single = measure_single(cgroup, single_iters)
        tree = measure_tree(cgroup, tree_iters)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    text = report(single, tree, cgroup, mount.version, mount.mountpoint, single_iters,
                  tree_iters)
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
