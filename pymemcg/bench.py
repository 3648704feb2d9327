"""Benchmark: pymemcg's BPF reads against memory.stat, in C and in Python (issue 4).

    python -m pymemcg.bench [--quick] [--out FILE] [--plot FILE] [--profile FILE]
    python -m pymemcg.bench specs [--stats a,b,...]     # stat specs for bench/memcg_bench
    python -m pymemcg.bench loop METHOD PATH COUNT      # one method alone, for profilers

Four parts, all on this machine's real cgroups, as root:

1. The seed patch's experiment: 1M reads of one cgroup's memory.stat (an fd
   kept open, seek to 0 before each read, no parsing) against 1M iterator
   sessions on a link made once (create, read, close), reported as real,
   user and sys time like time(1). In C (bench/memcg_bench.c on the
   project's loader, csrc/pmc_shim.c) and in Python (Reader.read against
   os.pread of memory.stat, with and without parsing), for the hierarchy
   root and for a leaf.
2. Scaling: snapshots of trees of 1 to 10,000 cgroups made under this
   process's memory cgroup: Reader.read_tree against a Python walk that
   parses every memory.stat and a C walk that reads them without parsing
   (and the C floor of a BPF walk). Time per snapshot and per cgroup, and
   the Python memory one snapshot takes.
3. Where the time goes: perf (cpu-clock; this VM has no hardware counters)
   on the C and Python fast paths, and a split of Reader.read's time.
4. The issue's speed goals, each marked met or not with its numbers.

Methods take turns in rounds (a noisy spell of the machine falls on all of
them alike); per-operation figures are the median round. Totals are sums of
clock_gettime/perf_counter (real) and getrusage (user, sys) over the rounds,
in seconds. The cgroups made for the run live under
<own memory cgroup>/pymemcg-bench-<pid> and are removed in a finally
block, children first, also on Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .cgroupfs import memory_mount, own_memory_cgroup
from .cli.bench import (READ_SIZE, STATS, Cost, fmt_time, read_stat_pread, time_loop,
                        timed_rounds, walk_tree_text)
from .cli.format import human_bytes
from .reader import Reader

READS = 1_000_000                # part 1: reads of one cgroup per method
QUICK_READS = 50_000
ROUNDS = 10                      # part 1: chunks the reads are split into
TREE_SIZES = (1, 10, 100, 1_000, 10_000)
TREE_WORK = 20_000               # part 2: cgroups visited per method per round
QUICK_TREE_WORK = 2_000
TREE_ROUNDS = 5
BENCH_PREFIX = "pymemcg-bench-"

REPO = Path(__file__).resolve().parent.parent
C_SOURCE = REPO / "bench" / "memcg_bench.c"
C_BINARY = REPO / "build" / "memcg_bench"

# the issue's goals
GOAL_API_VS_PARSE = 6.0          # Reader.read at least 6x faster than pread + parse
GOAL_API_VS_C = 2.0              # ... and within 2x of C's iterator session
GOAL_SYS_SAVED = 0.80            # C: 80% less sys time than memory.stat
GOAL_TREE_1000 = 50.0            # 1,000-cgroup snapshot 50x faster than the Python walk


@dataclass(frozen=True)
class Settings:
    """How much work a run does."""

    reads: int = READS            # part 1, per method and cgroup
    rounds: int = ROUNDS          # part 1
    tree_work: int = TREE_WORK    # part 2, cgroups per method and round
    tree_rounds: int = TREE_ROUNDS
    profile_s: float = 3.0        # part 3, seconds per profile

    @classmethod
    def quick(cls) -> "Settings":
        return cls(QUICK_READS, ROUNDS, QUICK_TREE_WORK, 3, 1.0)


def log(msg: str) -> None:
    """Progress on stderr, so that stdout carries only the Markdown."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- the C side ---

def compare_with_text(snapshot, root: str) -> int:
    """Both methods give the same numbers: every value the BPF snapshot has
    equals memory.stat's (through pymemcg's text backend) for each cgroup of
    an idle tree. Returns how many values were compared; raises if any differ."""
    with Reader(stats=list(snapshot.layout.names), backend="text") as text:
        other = text.read_tree(root)
    if sorted(other) != sorted(snapshot):
        raise RuntimeError(f"BPF and text walks of {root} saw different cgroups")
    compared, differ = 0, {}
    for path in snapshot:
        bpf, txt = snapshot[path].as_dict(), other[path].as_dict()
        for name, v in bpf.items():
            if v is None or txt.get(name) is None:
                continue
            compared += 1
            if v != txt[name]:
                differ[(path, name)] = (v, txt[name])
    if differ:
        raise RuntimeError(f"BPF != memory.stat (bpf, text): {differ}")
    return compared


def spec_lines(stats: Sequence[str] = STATS) -> List[str]:
    """'name kind slot item flags scale' per stat, as this kernel resolves it.

    The selection bench/memcg_bench loads, the same that Reader(stats) loads.
    """
    from . import bpf, layout
    mount = memory_mount()
    version = mount.version if mount else 2
    lines = [f"# pymemcg {__version__}, kernel {os.uname().release}, cgroup v{version}: "
             f"name kind slot item flags scale"]
    for r in layout.resolve(list(stats), bpf.kernel_facts(), version, bpf.PAGE_SIZE):
        lines.append(f"{r.stat.name} {r.kind} {r.slot} {r.item} {r.flags} {r.scale}")
    return lines


def build_c() -> Tuple[Optional[Path], str]:
    """(path of bench/memcg_bench built by `make bench-c`, or None, and why not)."""
    if not C_SOURCE.exists():
        return None, f"{C_SOURCE} is missing (not a source checkout)"
    try:
        proc = subprocess.run(["make", "-s", "-C", str(REPO), "bench-c"], capture_output=True,
                              text=True)
    except OSError as e:
        return None, f"make failed to run: {e}"
    if proc.returncode != 0 or not C_BINARY.exists():
        return None, f"`make bench-c` failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
    return C_BINARY, ""


class CBench:
    """Runs bench/memcg_bench with this kernel's specs of STATS."""

    def __init__(self, binary: Path) -> None:
        self.binary = str(binary)
        self.specs = str(binary.parent / "bench-specs.txt")
        with open(self.specs, "w") as f:
            f.write("\n".join(spec_lines()) + "\n")

    def argv(self, mode: str, path: str, count: int, rounds: int,
             methods: Optional[Sequence[str]] = None, capacity: int = 0) -> List[str]:
        argv = [self.binary]
        if methods:
            argv += ["-m", ",".join(methods)]
        if capacity:
            argv += ["-c", str(capacity)]
        return argv + [mode, self.specs, path, str(count), str(rounds)]

    def run(self, mode: str, path: str, count: int, rounds: int,
            methods: Optional[Sequence[str]] = None, capacity: int = 0
            ) -> Tuple[Dict[str, Cost], Dict[str, Dict[str, str]]]:
        """Costs per method, and the 'method=' and 'record' lines as dicts."""
        proc = subprocess.run(self.argv(mode, path, count, rounds, methods, capacity),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memcg_bench {mode} {path} failed: {proc.stderr.strip()}")
        costs: Dict[str, Cost] = {}
        info: Dict[str, Dict[str, str]] = {}
        for line in proc.stdout.splitlines():
            head, _, rest = line.partition(" ")
            if head == "skip":  # "skip method=NAME reason=free text"
                info.setdefault("skipped", {})[rest.split()[0].partition("=")[2]] = \
                    rest.partition("reason=")[2]
                continue
            kv = dict(item.split("=", 1) for item in rest.split())
            if head == "record":
                info["record"] = kv
            elif head.startswith("method="):
                kv["method"] = head[len("method="):]
                info[kv["method"]] = kv
                costs[kv["method"]] = Cost(int(kv["count"]), float(kv["real"]), float(kv["user"]),
                                           float(kv["sys"]),
                                           [float(x) for x in kv["rounds"].split(",")])
        return costs, info


# --- cgroups made for the run ---

def plan_tree(total: int) -> List[str]:
    """Relative paths of `total - 1` cgroups below a top one, parents first.

    About sqrt(total) children of the top and the rest spread over them as
    grandchildren (10,000 = 1 + 99 + 9,900, about 100 x 100).
    """
    if total <= 1:
        return []
    fanout = max(1, math.isqrt(total - 1))
    mids = [f"g{i:03d}" for i in range(fanout)]
    leaves = [f"{mids[i % fanout]}/c{i:05d}" for i in range(total - 1 - fanout)]
    return mids + leaves


def make_tree(top: str, total: int) -> float:
    """mkdir `top` and total - 1 cgroups below it; returns the seconds it took."""
    t0 = time.perf_counter()
    os.mkdir(top)
    for rel in plan_tree(total):
        os.mkdir(os.path.join(top, rel))
    return time.perf_counter() - t0


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


class BenchCgroups:
    """The directory <own memory cgroup>/pymemcg-bench-<pid> for the run's cgroups.

    Made on first use; on exit it is removed with everything below it, and
    no signal may stop that half way.
    """

    def __init__(self, base: str) -> None:
        self.top = os.path.join(base, f"{BENCH_PREFIX}{os.getpid()}")
        self._old: Dict[int, object] = {}

    def path(self, name: str) -> str:
        if not os.path.isdir(self.top):
            os.mkdir(self.top)
        return os.path.join(self.top, name)

    def __enter__(self) -> "BenchCgroups":
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, _raise_interrupt)
        self._old[signal.SIGINT] = signal.getsignal(signal.SIGINT)
        return self

    def __exit__(self, *exc) -> None:
        for sig in self._old:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if os.path.isdir(self.top):
                failed = remove_tree(self.top)
                log("removed the benchmark cgroups" if not failed else
                    "could NOT remove: " + "; ".join(failed))
        finally:
            for sig, handler in self._old.items():
                signal.signal(sig, handler)


# --- part 1: one cgroup, the seed's experiment ---

@dataclass
class SingleResult:
    """Part 1 for one cgroup: C and Python costs by method name."""

    label: str
    path: str
    stat_bytes: int               # bytes of one memory.stat read
    session_bytes: Optional[int]  # bytes of one iterator session (record + trailer)
    c: Dict[str, Cost]
    py: Dict[str, Cost]


def measure_single(cgroups: List[Tuple[str, str]], reader: Reader, cbench: Optional[CBench],
                   reads: int, rounds: int) -> List[SingleResult]:
    """Part 1 for each (label, path): C stat-seek, stat-pread and bpf; Python bpf, pread
    and pread+parse; `reads` of each.

    Rounds are outermost: each round runs every method on every cgroup, the
    C program (one process per round and cgroup) and Python alike, so that a
    spell of load on this shared machine falls on all of them.
    """
    chunk = reads // rounds
    results, fds = [], []
    try:
        for label, path in cgroups:
            stat_path = os.path.join(path, "memory.stat")
            with open(stat_path, "rb") as f:
                whole = f.read()
            fd = os.open(stat_path, os.O_RDONLY | os.O_CLOEXEC)
            fds.append(fd)
            # one read must return the whole file, or the controls would do less work
            assert os.pread(fd, READ_SIZE, 0).count(b"\n") == whole.count(b"\n"), "short pread"
            results.append(SingleResult(label, path, len(whole), None, {}, {}))
        methods = [{"bpf": lambda p=r.path: reader.read(p),
                    "pread": lambda fd=fd: os.pread(fd, READ_SIZE, 0),
                    "pread+parse": lambda fd=fd: read_stat_pread(fd)}
                   for r, fd in zip(results, fds)]
        for r, ms in zip(results, methods):
            for name, fn in ms.items():
                fn()  # warm up: the link attached, the path hash learned
                r.py[name] = Cost(0, 0.0, 0.0, 0.0)
        for i in range(rounds):
            log(f"one cgroup: round {i + 1} of {rounds}, {chunk:,} reads per method and cgroup")
            for r, ms in zip(results, methods):
                if cbench is not None:
                    costs, info = cbench.run("single", r.path, chunk, 1)
                    if r.session_bytes is None:
                        _check_same(info, reader.read(r.path))
                        r.session_bytes = int(info["bpf"]["bytes"])
                    for name, cost in costs.items():
                        r.c.setdefault(name, Cost(0, 0.0, 0.0, 0.0)).add(
                            cost.count, cost.real, cost.user, cost.sys)
                for name, fn in ms.items():
                    r.py[name].add(chunk, *time_loop(fn, chunk))
    finally:
        for fd in fds:
            os.close(fd)
    return results


def _check_same(info: Dict[str, Dict[str, str]], rec) -> None:
    """The C program loaded the same selection: same cgroup, same valid stats."""
    if int(info["record"]["id"]) != rec.id or int(info["record"]["valid"]) != rec.valid:
        raise RuntimeError(f"C and Python disagree: {info['record']} vs {rec}")


# --- part 2: trees ---

@dataclass
class TreeResult:
    """Part 2 for one tree size: seconds per snapshot by method, and memory."""

    size: int
    iterations: int
    per_snapshot: Dict[str, float]
    mkdir_s: float
    rmdir_s: float
    py_peak: int              # bytes traced by tracemalloc while read_tree runs
    py_retained: int          # bytes the Snapshot keeps
    overflow_map: Optional[int]   # bytes of the BPF overflow map after the read
    split: Dict[str, float] = field(default_factory=dict)   # split_tree(), seconds
    cpu: Dict[str, float] = field(default_factory=dict)     # user + sys per snapshot, median


def overflow_map_bytes(reader: Reader) -> Optional[int]:
    """Bytes of the loaded program's overflow map (internals: None if they moved)."""
    try:
        prog = reader._backend._state["prog"]  # type: ignore[union-attr]
        return prog.capacity * prog.record_size
    except (AttributeError, KeyError, TypeError):
        return None


def snapshot_memory(reader: Reader, root: str) -> Tuple[int, int]:
    """(peak, retained) bytes Python allocates for one read_tree of root."""
    gc.collect()
    tracemalloc.start()
    try:
        snap = reader.read_tree(root)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del snap
    return peak, retained


def measure_tree(size: int, cgroups: BenchCgroups, reader: Reader, cbench: Optional[CBench],
                 work: int, rounds: int) -> TreeResult:
    """Snapshots of a tree of `size` cgroups, made for it and removed afterwards."""
    root = cgroups.path(f"t{size}")
    iterations = max(1, work // size)
    try:
        mkdir_s = make_tree(root, size)
        log(f"tree of {size:,}: made in {mkdir_s:.2f} s; {iterations} snapshots x {rounds} "
            f"rounds per method")
        read_tree = reader.read_tree
        n = len(read_tree(root))  # also grows the overflow map where needed
        assert n == size, f"BPF walk saw {n} cgroups, not {size}"
        assert len(walk_tree_text(root)) == size
        compare_with_text(read_tree(root), root)
        peak, retained = snapshot_memory(reader, root)
        methods = {"bpf": lambda: read_tree(root), "text": lambda: walk_tree_text(root)}
        per: Dict[str, List[float]] = {}
        cpu: Dict[str, List[float]] = {}
        for _ in range(rounds):
            for name, fn in methods.items():
                real, user, sys_ = time_loop(fn, iterations)
                per.setdefault(name, []).append(real / iterations)
                cpu.setdefault(name, []).append((user + sys_) / iterations)
            if cbench is not None:
                costs, info = cbench.run("tree", root, iterations, 1,
                                         capacity=max(1024, 2 * size))
                for name, cost in costs.items():
                    assert int(info[name]["units"]) == size, info[name]
                    per.setdefault("c-" + name, []).append(cost.per_op)
                    cpu.setdefault("c-" + name, []).append(cost.cpu_per_op)
        split = split_tree(reader, root, iterations, rounds) if size == 1000 else {}
    finally:
        t0 = time.perf_counter()
        failed = remove_tree(root)
        rmdir_s = time.perf_counter() - t0
        if failed:
            log("could NOT remove: " + "; ".join(failed))
    return TreeResult(size, iterations, {k: statistics.median(v) for k, v in per.items()},
                      mkdir_s, rmdir_s, peak, retained, overflow_map_bytes(reader), split,
                      {k: statistics.median(v) for k, v in cpu.items()})


def split_tree(reader: Reader, root: str, iterations: int, rounds: int) -> Dict[str, float]:
    """read_tree's time taken apart, seconds per snapshot (best round): the session
    alone, + the overflow copy and struct unpack of every record, + the paths
    (the whole read_tree). Uses the backend's internals; {} if they moved."""
    try:
        be = reader._backend
        from .bpf import ORDER_DESCENDANTS_PRE
        link = be._link(be._roots[root], ORDER_DESCENDANTS_PRE)
        methods = {"session": lambda: be._session(link), "records": lambda: be._walk(link),
                   "read_tree": lambda: reader.read_tree(root)}
    except (AttributeError, KeyError, ImportError):
        return {}
    costs = timed_rounds(methods, iterations * rounds, rounds)
    return {name: c.best for name, c in costs.items()}


# --- part 3: where the time goes ---

@dataclass
class Profile:
    """One perf profile: sample shares (percent) by DSO, by symbol, inclusive."""

    title: str
    command: str
    samples: str              # as perf says it: '12K'
    dso: List[Tuple[float, str]]
    self_syms: List[Tuple[float, str]]
    inclusive: Dict[str, float]


#: (label, symbol prefix) of kernel functions whose inclusive share tells a story
LANDMARKS = [
    ("read() syscalls", "ksys_read"),
    ("memory.stat: making the text (memory_stat_show)", "memory_stat_show"),
    ("  of which printf formatting (vsnprintf)", "vsnprintf"),
    ("open() of files (do_sys_openat2)", "do_sys_openat2"),
    ("directory listings (iterate_dir)", "iterate_dir"),
    ("iterator creation: bpf(BPF_ITER_CREATE) (__sys_bpf)", "__sys_bpf"),
    ("  of which the anon-inode file (anon_inode_getfile)", "anon_inode_getfile"),
    ("  of which the seq_file and its private data (prepare_seq_file)", "prepare_seq_file"),
    ("iterator read: the walk (bpf_seq_read)", "bpf_seq_read"),
    ("  of which the BPF program runs (bpf_iter_run_prog)", "bpf_iter_run_prog"),
    ("  of which the 32 KiB seq buffer (__kvmalloc_node)", "__kvmalloc_node"),
    ("close() and the file's release (__x64_sys_close)", "__x64_sys_close"),
]

_PCT = r"\s+([\d.]+)%"


def perf_works() -> Tuple[bool, str]:
    """Can `perf record -e cpu-clock` sample here? (ok, why not)."""
    if shutil.which("perf") is None:
        return False, "perf is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o",
                               os.path.join(tmp, "p"), "--", "true"], capture_output=True,
                              text=True)
    if proc.returncode != 0:
        return False, f"perf record failed: {proc.stderr.strip()[-300:]}"
    return True, ""


def perf_profile(title: str, argv: List[str], delay_ms: int = 500) -> Profile:
    """perf record (cpu-clock, call graphs) of argv, skipping its first delay_ms."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        rec = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-g",
                              "-D", str(delay_ms), "-o", data, "--"] + argv,
                             capture_output=True, text=True)
        if rec.returncode != 0:
            raise RuntimeError(f"perf record {argv[0]} failed: {rec.stderr.strip()[-300:]}")

        def report(*opts: str) -> str:
            return subprocess.run(["perf", "report", "-i", data, "--stdio", "-g", "none"]
                                  + list(opts), capture_output=True, text=True).stdout

        head = report("--no-children", "--sort", "dso")
        samples = re.search(r"# Samples: (\d+\w?)", head)
        dso = [(float(p), d.strip()) for p, d in re.findall(r"^" + _PCT + r"\s+(\S.*)$", head, re.M)]
        syms = [(float(p), s.strip()) for p, s in
                re.findall(r"^" + _PCT + r"\s+\S+\s+\[[.k]\]\s+(\S+)", report(
                    "--no-children", "--sort", "dso,sym"), re.M)]
        inclusive: Dict[str, float] = {}
        for p, _self, s in re.findall(r"^" + _PCT + _PCT + r"\s+\[[.k]\]\s+(\S+)",
                                      report("--children", "--sort", "sym"), re.M):
            inclusive.setdefault(s, float(p))
    command = " ".join(argv).replace(sys.executable, "python").replace(str(REPO) + "/", "")
    return Profile(title, command, samples.group(1) if samples else "0", dso, syms, inclusive)


def landmark(profile: Profile, prefix: str) -> float:
    """Inclusive share (percent) of the first symbol named `prefix` or `prefix`_*."""
    for name, pct in profile.inclusive.items():
        if name == prefix or name.startswith(prefix + "_"):
            return pct
    return 0.0


def kernel_share(profile: Profile) -> float:
    """Percent of samples in the kernel, BPF programs included."""
    return sum(p for p, d in profile.dso if d.startswith("[kernel") or d.startswith("bpf_prog_"))


def measure_profiles(cbench: Optional[CBench], mount: str, cgroups: BenchCgroups,
                     est: Dict[str, float], seconds: float) -> List[Profile]:
    """perf profiles of the fast paths: C one cgroup both ways, Python Reader.read and
    pread + parse, and the tree reads of 1,000 cgroups.

    est: seconds per operation of each job, measured earlier (keys as below);
    each job runs for about `seconds` past its start-up.
    """
    me = [sys.executable, "-m", "pymemcg.bench", "loop"]

    def n(key: str) -> int:
        return max(1, int((seconds + 1.0) / est[key]))

    root = cgroups.path("profile")
    jobs = []
    if cbench is not None:
        jobs += [("C: memory.stat lseek + read, root cgroup",
                  cbench.argv("single", mount, n("c-stat"), 1, ["stat-seek"])),
                 ("C: BPF iterator session (create, read, close), root cgroup",
                  cbench.argv("single", mount, n("c-bpf"), 1, ["bpf"]))]
        if "c-fetch" in est:
            jobs.append(("C: BPF_PROG_RUN of memcg_fetch, root cgroup",
                         cbench.argv("single", mount, n("c-fetch"), 1, ["bpf-fetch"])))
    jobs += [("Python: Reader.read, root cgroup", me + ["read", mount, str(n("py-read"))]),
             ("Python: os.pread + parse of memory.stat, root cgroup",
              me + ["pread-parse", mount, str(n("py-parse"))])]
    if cbench is not None:
        jobs += [("C: walk + read of 1,000 memory.stat files",
                  cbench.argv("tree", root, n("c-stat-walk"), 1, ["stat-walk"])),
                 ("C: BPF walk of 1,000 cgroups (one session + overflow copy)",
                  cbench.argv("tree", root, n("c-bpf-walk"), 1, ["bpf-walk"]))]
    jobs += [("Python: Reader.read_tree of 1,000 cgroups", me + ["tree", root, str(n("bpf"))]),
             ("Python: walk + parse of 1,000 memory.stat files",
              me + ["text-tree", root, str(n("text"))])]
    out = []
    make_tree(root, 1000)
    try:
        for title, argv in jobs:
            log(f"profile: {title}")
            out.append(perf_profile(title, argv))
    finally:
        failed = remove_tree(root)
        if failed:
            log("could NOT remove: " + "; ".join(failed))
    return out


def split_read(reader: Reader, cgroup: str, reads: int, rounds: int) -> Dict[str, float]:
    """Reader.read's time taken apart: seconds per call of each step added in turn
    (best round: the differences of small numbers need the least noisy figure).

    Uses the backend's internals (its fetch slot, or link fd and buffer) to
    call the shim the way Reader.read does; {} if those have moved. Keys:
    "call" (the shim call through cffi), "call+unpack", "Reader.read".
    """
    reader.read(cgroup)
    try:
        be = reader._backend
        link = be._by_path[cgroup].target
        if be._fetch is not None:
            run, ptr, index = be._fetch_run, be._fetch_ptr, link.index
            record, unpack = be._fetch_record, be._unpack_record

            def call():
                return run(ptr, index)

            def call_unpack():
                run(ptr, index)
                return unpack(record)
        else:
            session, fd, cbuf, buf, size = (be._read_session, link.fd, be._cbuf, be._buf,
                                            be._buflen)
            unpack = be._unpack_single

            def call():
                return session(fd, cbuf, size)

            def call_unpack():
                session(fd, cbuf, size)
                return unpack(buf)
    except (AttributeError, KeyError):
        return {}
    methods = {"call": call, "call+unpack": call_unpack,
               "Reader.read": lambda: reader.read(cgroup)}
    costs = timed_rounds(methods, reads, rounds)
    return {name: c.best for name, c in costs.items()}


def loop(method: str, path: str, count: int) -> None:
    """Run one method `count` times (for profilers): read, pread-parse, tree, text-tree."""
    if method in ("read", "tree"):
        with Reader(stats=STATS, backend="bpf") as reader:
            fn: Callable[[], object] = reader.read if method == "read" else reader.read_tree
            fn(path)
            time_loop(lambda: fn(path), count)
    elif method == "text-tree":
        time_loop(lambda: walk_tree_text(path), count)
    elif method == "pread-parse":
        fd = os.open(os.path.join(path, "memory.stat"), os.O_RDONLY)
        time_loop(lambda: read_stat_pread(fd), count)
    else:
        raise SystemExit(f"unknown method {method!r}")


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


def os_name() -> str:
    """PRETTY_NAME of /etc/os-release, or platform.platform()."""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def mem_total() -> str:
    """MemTotal of /proc/meminfo, in GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return "?"


def _bytes(n: float) -> str:
    """1536 -> '1.5 KiB', for averages too (280.4 -> '280 B')."""
    return human_bytes(round(n))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if b > 0 else "-"


C_LABELS = {
    "stat-seek": "memory.stat: lseek(0) + read (the seed's control)",
    "stat-pread": "memory.stat: pread(0)",
    "bpf": "BPF: iterator session (create, read, close) on a link made once",
    "bpf-fetch": "BPF: one `BPF_PROG_RUN` of memcg_fetch on a cgroup stashed once "
                 "(`Reader.read`'s path)",
}
PY_LABELS = {
    "bpf": "pymemcg `Reader.read` (BPF)",
    "pread": "`os.pread` of memory.stat, no parsing",
    "pread+parse": "`os.pread` of memory.stat + parse into a dict",
}
TREE_LABELS = {
    "bpf": "pymemcg `read_tree`",
    "text": "Python: walk + parse each memory.stat",
    "c-stat-walk": "C: walk + read each memory.stat",
    "c-bpf-walk": "C: BPF walk (shim, no Python)",
}


def report_single(results: List[SingleResult], reads: int, rounds: int) -> List[str]:
    """Section 1: the seed's experiment, C and Python tables."""
    head = ["| cgroup | method | real | user | sys | per read | CPU per read | real ÷ BPF "
            "| sys ÷ BPF |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def row(label: str, method: str, cost: Cost, bpf: Cost) -> str:
        return (f"| {label} | {method} | {cost.real:.2f} s | {cost.user:.2f} s | "
                f"{cost.sys:.2f} s | {fmt_time(cost.per_op)} | {fmt_time(cost.cpu_per_op)} | "
                f"{ratio(cost.real, bpf.real)} | {ratio(cost.sys, bpf.sys)} |")

    lines = [
        "## 1. The seed's experiment: one cgroup, 8 stats",
        "",
        f"{reads:,} reads per method and cgroup, in {rounds} rounds; each round runs every "
        "method on every cgroup in turn, C and Python. real/user/sys: totals over all reads, "
        "as time(1) reports them (clock_gettime or perf_counter, and getrusage); per read: "
        "real time, median round; CPU per read: (user + sys) / reads, which load from "
        "other processes does not inflate. \"÷ BPF\": the method's total divided by the BPF "
        "one of the same cgroup and language. Nothing is parsed in C; memory.stat always "
        "returns every line, the iterator only the 8 selected stats.",
        "",
    ]
    if any(r.c for r in results):
        lines += ["### In C (bench/memcg_bench.c on csrc/pmc_shim.c)", ""] + head
        for r in results:
            lines += [row(r.label, C_LABELS[name], cost, r.c["bpf"])
                      for name, cost in r.c.items()]
        seed = "root, seed v2 (another machine, cgroup v2, kfuncs)"
        lines += [f"| {seed} | memory.stat: seek + read | 13.06 s | - | 12.88 s | 13.06 µs | - "
                  f"| 4.8× | 5.3× |",
                  f"| {seed} | BPF: iterator session | 2.72 s | - | 2.45 s | 2.72 µs | - | "
                  f"1.0× | 1.0× |", ""]
        for r in results:
            s, b = r.c["stat-seek"], r.c["bpf"]
            lines.append(f"- {r.label}: the iterator takes {1 - b.sys / s.sys:.0%} less sys "
                         f"time and {1 - b.real / s.real:.0%} less real time than memory.stat "
                         f"(seed v2: 81% and 79%); memory.stat here is {r.stat_bytes} bytes, "
                         f"one iterator session {r.session_bytes} bytes.")
            f = r.c.get("bpf-fetch")
            if f:
                lines.append(f"- {r.label}: one `BPF_PROG_RUN` of memcg_fetch takes "
                             f"{1 - f.sys / s.sys:.0%} less sys time and "
                             f"{1 - f.real / s.real:.0%} less real time than memory.stat, "
                             f"{ratio(b.real, f.real)} less real time than the session.")
        lines.append("")
    lines += ["### In Python (the public API against Python reading memory.stat)", ""] + head
    for r in results:
        lines += [row(r.label, PY_LABELS[name], cost, r.py["bpf"]) for name, cost in r.py.items()]
    lines += ["", "Cgroups: " + "; ".join(f"{r.label} = `{r.path}` ({r.stat_bytes}-byte "
                                            f"memory.stat)" for r in results) + ".", ""]
    return lines


def growth(trees: List[TreeResult], method: str) -> Tuple[float, float]:
    """(cost of a 1-cgroup snapshot, marginal seconds per cgroup between the two largest)."""
    ts = sorted((t.size, t.per_snapshot[method]) for t in trees if method in t.per_snapshot)
    fixed = ts[0][1]
    (n1, t1), (n2, t2) = ts[-2], ts[-1]
    return fixed, (t2 - t1) / (n2 - n1)


def report_trees(trees: List[TreeResult], rounds: int, work: int) -> List[str]:
    """Section 2: per snapshot, per cgroup, growth, memory."""
    methods = [m for m in TREE_LABELS if all(m in t.per_snapshot for t in trees)]
    head = "| cgroups | " + " | ".join(TREE_LABELS[m] for m in methods) + \
        " | Python walk ÷ pymemcg | C walk ÷ pymemcg |"
    sep = "|---:|" + "---:|" * (len(methods) + 2)

    def ratios(t: TreeResult) -> str:
        c = t.per_snapshot.get("c-stat-walk")
        return (f"{ratio(t.per_snapshot['text'], t.per_snapshot['bpf'])} | "
                f"{ratio(c, t.per_snapshot['bpf']) if c else '-'}")

    lines = [
        "## 2. Scaling: snapshots of trees of 1 to 10,000 cgroups",
        "",
        "Each tree (a top cgroup, about √n children, the rest grandchildren; 10,000 = "
        "1 + 99 + 9,900) was made under this process's memory cgroup for its turn and "
        f"removed after it. Figures: median of {rounds} rounds in which the methods take turns; "
        "each round runs as many snapshots as make about "
        f"{work:,} cgroups. All methods list the tree anew each time "
        "(Python `os.scandir`, C `readdir`, BPF the kernel's walk); the BPF snapshot includes "
        "the paths of every cgroup.",
        "",
        "Time per snapshot:",
        "",
        head, sep,
    ]
    for t in trees:
        lines.append(f"| {t.size:,} | " + " | ".join(fmt_time(t.per_snapshot[m]) for m in methods)
                     + f" | {ratios(t)} |")
    lines += ["", "Time per cgroup:", "", head, sep]
    for t in trees:
        lines.append(f"| {t.size:,} | " + " | ".join(fmt_time(t.per_snapshot[m] / t.size)
                                                     for m in methods) + f" | {ratios(t)} |")
    lines += ["", "How cost grows: a 1-cgroup snapshot (the fixed cost) and the marginal cost of "
              "one more cgroup (between the two largest trees):", "",
              "| method | 1-cgroup snapshot | each further cgroup |", "|---|---:|---:|"]
    for m in methods:
        fixed, marginal = growth(trees, m)
        lines.append(f"| {TREE_LABELS[m]} | {fmt_time(fixed)} | {fmt_time(marginal)} |")
    lines += ["", "Memory of one pymemcg snapshot (Python heap traced by tracemalloc during "
              "`read_tree`; the overflow map is kernel memory, mmaped, reused by every read) "
              "and the cost of making the trees:", "",
              "| cgroups | peak during read_tree | per cgroup | kept by the Snapshot | per cgroup "
              "| overflow map | mkdir all | rmdir all |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in trees:
        ovf = _bytes(t.overflow_map) if t.overflow_map is not None else "?"
        lines.append(f"| {t.size:,} | {_bytes(t.py_peak)} | {_bytes(t.py_peak / t.size)} | "
                     f"{_bytes(t.py_retained)} | {_bytes(t.py_retained / t.size)} | {ovf} | "
                     f"{t.mkdir_s:.2f} s | {t.rmdir_s:.2f} s |")
    lines.append("")
    return lines


def _named(profiles: List[Profile], start: str) -> Optional[Profile]:
    return next((p for p in profiles if p.title.startswith(start) and p.dso), None)


def _self(p: Profile, pred: Callable[[str], bool]) -> float:
    """Self share (percent) of the symbols that pred accepts."""
    return sum(pct for pct, s in p.self_syms if pred(s))


PRINTF = ("vsnprintf", "format_decode", "number", "string", "strlen", "widen_string",
          "seq_buf_printf")


def profile_summary(profiles: List[Profile], split: Dict[str, float],
                    c_session: Optional[float], tree_split: Dict[str, float],
                    split_how: str = "read call") -> List[str]:
    """Findings, as sentences with the measured shares."""
    out = []
    p = _named(profiles, "C: memory.stat")
    if p:
        fmt = _self(p, lambda s: s in PRINTF or s.startswith("put_dec"))
        out.append(f"- **memory.stat (C)**: {kernel_share(p):.0f}% of the samples are in the "
                   f"kernel; making the text (`memory_stat_show`) takes "
                   f"{landmark(p, 'memory_stat_show'):.0f}%, of which the printf machinery "
                   f"(vsnprintf, format_decode, number, string, strlen, put_dec*, "
                   f"seq_buf_printf; self time) {fmt:.0f}%, as in the seed's profile.")
    p = _named(profiles, "C: BPF iterator")
    if p:
        prog = _self(p, lambda s: s.startswith("bpf_prog_"))
        out.append(f"- **Iterator session (C)**: {kernel_share(p):.0f}% kernel. Creating the "
                   f"iterator (`bpf(BPF_ITER_CREATE)`: an anon-inode file, a seq_file) takes "
                   f"{landmark(p, '__sys_bpf'):.0f}%, the read {landmark(p, 'bpf_seq_read'):.0f}% "
                   f"(running the program {landmark(p, 'bpf_iter_run_prog'):.0f}%, of which its "
                   f"own code {prog:.0f}%; allocating the 32 KiB seq buffer "
                   f"{landmark(p, '__kvmalloc_node'):.0f}%), close "
                   f"{landmark(p, '__x64_sys_close'):.0f}%. Reading the stats is the small "
                   f"part: the fixed cost of a session (a file, a seq_file and a buffer made "
                   f"and freed each time) dominates.")
    p = _named(profiles, "C: BPF_PROG_RUN")
    if p:
        out.append(f"- **BPF_PROG_RUN of memcg_fetch (C)**: {kernel_share(p):.0f}% kernel; "
                   f"the program's run (`bpf_prog_test_run_syscall`) "
                   f"{landmark(p, 'bpf_prog_test_run_syscall'):.0f}%, of which its own code "
                   f"{_self(p, lambda s: s.startswith('bpf_prog_')):.0f}%: no file, no "
                   f"seq_file, no buffer.")
    p = _named(profiles, "Python: Reader.read")
    if p:
        py = sum(pct for pct, d in p.dso if "python" in d or d.startswith("_struct"))
        out.append(f"- **Reader.read (Python)**: {kernel_share(p):.0f}% kernel (the "
                   f"{split_how}), {py:.0f}% the interpreter and struct, the rest libc, cffi "
                   f"and the shim.")
    if split:
        parts = [f"one {split_how} through cffi {fmt_time(split['call'])}",
                 f"+ struct unpack {fmt_time(split['call+unpack'] - split['call'])}",
                 f"+ the rest of `Reader.read` (lock, path lookup, checks, the Record) "
                 f"{fmt_time(split['Reader.read'] - split['call+unpack'])}"]
        c = f"; the C program's session, best round: {fmt_time(c_session)}" if c_session else ""
        out.append("- **Reader.read taken apart** (per call, best round): " + ", ".join(parts)
                   + f" = {fmt_time(split['Reader.read'])}{c}.")
    p = _named(profiles, "Python: os.pread")
    if p:
        out.append(f"- **pread + parse (Python)**: {kernel_share(p):.0f}% kernel (making the "
                   f"text), {100 - kernel_share(p):.0f}% user space (decode, split, int(), "
                   f"the dict).")
    p = _named(profiles, "C: BPF walk")
    if p:
        copy = _self(p, lambda s: s.startswith("copy_from_kernel_nofault"))
        out.append(f"- **BPF walk of 1,000 (C)**: {kernel_share(p):.0f}% kernel; the program "
                   f"runs take {landmark(p, 'bpf_iter_run_prog'):.0f}%, of which "
                   f"`bpf_probe_read_kernel` copies (`copy_from_kernel_nofault`, self) "
                   f"{copy:.0f}% and the program's own code "
                   f"{_self(p, lambda s: s.startswith('bpf_prog_')):.0f}%.")
    p = _named(profiles, "Python: Reader.read_tree")
    if p:
        out.append(f"- **read_tree of 1,000 (Python)**: {kernel_share(p):.0f}% kernel (the "
                   f"walk), {100 - kernel_share(p):.0f}% user space: unpacking 1,000 records "
                   f"and building and indexing their paths.")
    if tree_split:
        t = tree_split
        out.append(f"- **read_tree of 1,000 taken apart** (per snapshot, best round): the "
                   f"session {fmt_time(t['session'])}, + copying the overflow records and "
                   f"unpacking all 1,000 {fmt_time(t['records'] - t['session'])}, + the paths "
                   f"and the Snapshot {fmt_time(t['read_tree'] - t['records'])} = "
                   f"{fmt_time(t['read_tree'])}.")
    p = _named(profiles, "Python: walk")
    if p:
        out.append(f"- **walk + parse of 1,000 memory.stat (Python)**: {kernel_share(p):.0f}% "
                   f"kernel (open {landmark(p, 'do_sys_openat2'):.0f}%, directory listings "
                   f"{landmark(p, 'iterate_dir'):.0f}%, making the text "
                   f"{landmark(p, 'memory_stat_show'):.0f}%), the rest Python.")
    return out


def report_profiles(profiles: List[Profile], split: Dict[str, float],
                    c_session: Optional[float], tree_split: Dict[str, float],
                    why_not: str, split_how: str = "read call") -> List[str]:
    """The profile section of bench.md."""
    lines = ["## 3. Where the time goes", ""]
    if why_not:
        lines += [f"No perf profile: {why_not}.", ""]
    lines += profile_summary(profiles, split, c_session, tree_split, split_how)
    lines += ["", "perf record -e cpu-clock -F 2000 -g (software clock: this VM has no hardware "
              "counters), first 0.5 s (start-up, BPF load) skipped; details per profile in "
              "[profile.md](profile.md).", ""]
    return lines


def profile_markdown(profiles: List[Profile], header: List[str]) -> str:
    """docs/profile.md: per profile, DSO shares, inclusive landmarks, top symbols."""
    lines = ["# pymemcg benchmark: profiles", ""] + header + [
        "Each profile: `perf record -e cpu-clock -F 2000 -g -D 500` (software clock, call "
        "graphs, the first 0.5 s skipped) of one method alone, then `perf report` by DSO, by "
        "symbol (self time) and, for chosen kernel functions, inclusive time (the function and "
        "what it calls). Shares are percent of all samples.", ""]
    for p in profiles:
        lines += [f"## {p.title}", "", f"`{p.command}` ({p.samples} samples)", "",
                  "| DSO | share |", "|---|---:|"]
        lines += [f"| `{d}` | {pct:.1f}% |" for pct, d in p.dso[:6]]
        marks = [(label, landmark(p, sym)) for label, sym in LANDMARKS]
        marks = [(label, pct) for label, pct in marks if pct >= 0.5]
        if marks:
            lines += ["", "| kernel function (inclusive) | share |", "|---|---:|"]
            lines += [f"| {label.replace('  of which', '↳ of which')} | {pct:.1f}% |"
                      for label, pct in marks]
        lines += ["", "| symbol (self) | share |", "|---|---:|"]
        lines += [f"| `{s}` | {pct:.1f}% |" for pct, s in p.self_syms[:15]]
        lines.append("")
    return "\n".join(lines)


@dataclass
class Goal:
    text: str
    measured: str
    met: bool
    score: Optional[float] = None   # achieved / needed: >= 1 is met

    @property
    def verdict(self) -> str:
        """'yes' or 'no', flagged when within 10% of the target (run-to-run noise here)."""
        word = "yes" if self.met else "no"
        close = self.score is not None and 0.9 <= self.score < 1.1
        return f"{word} (within 10% of the target)" if close else word


def goals(single: List[SingleResult], trees: List[TreeResult]) -> List[Goal]:
    """The issue's speed goals against the measurements."""
    out = []
    for r in single:
        a, p = r.py["bpf"], r.py["pread+parse"]
        api, parse = a.per_op, p.per_op
        out.append(Goal(f"{r.label}: `Reader.read` ≥ {GOAL_API_VS_PARSE:.0f}× faster than Python "
                        f"pread + parse", f"{ratio(parse, api)} ({fmt_time(api)} vs "
                        f"{fmt_time(parse)}); CPU time {ratio(p.cpu_per_op, a.cpu_per_op)}",
                        parse / api >= GOAL_API_VS_PARSE, parse / api / GOAL_API_VS_PARSE))
        if r.c:
            c = r.c["bpf"]
            out.append(Goal(f"{r.label}: `Reader.read` within {GOAL_API_VS_C:.0f}× of C's "
                            f"iterator session", f"{ratio(api, c.per_op)} ({fmt_time(api)} vs "
                            f"{fmt_time(c.per_op)}); CPU time "
                            f"{ratio(a.cpu_per_op, c.cpu_per_op)}",
                            api / c.per_op <= GOAL_API_VS_C, GOAL_API_VS_C * c.per_op / api))
    for r in single:
        if r.c:
            # the loader's own single read: BPF_PROG_RUN where it loads, else the session
            how = "bpf-fetch" if "bpf-fetch" in r.c else "bpf"
            s, b = r.c["stat-seek"].sys, r.c[how].sys
            session = r.c["bpf"].sys
            out.append(Goal(f"{r.label}, C: ≥ {GOAL_SYS_SAVED:.0%} less sys time than "
                            f"memory.stat reads", f"{1 - b / s:.0%} less with "
                            f"{'BPF_PROG_RUN' if how == 'bpf-fetch' else 'a session'} "
                            f"({b:.2f} s vs {s:.2f} s; an iterator session: "
                            f"{1 - session / s:.0%} less)", 1 - b / s >= GOAL_SYS_SAVED,
                            (1 - b / s) / GOAL_SYS_SAVED))
    t = next((t for t in trees if t.size == 1000), None)
    if t:
        x = t.per_snapshot["text"] / t.per_snapshot["bpf"]
        out.append(Goal(f"1,000-cgroup snapshot ≥ {GOAL_TREE_1000:.0f}× faster than Python "
                        f"walking memory.stat", f"{x:.1f}× ({fmt_time(t.per_snapshot['bpf'])} "
                        f"vs {fmt_time(t.per_snapshot['text'])}); CPU time "
                        f"{ratio(t.cpu['text'], t.cpu['bpf'])}", x >= GOAL_TREE_1000,
                        x / GOAL_TREE_1000))
    big = max(trees, key=lambda t: t.size) if trees else None
    if big and big.size >= 10_000:
        per = [t.py_peak / t.size for t in trees if t.size >= 100]
        flat = max(per) / min(per) <= 1.5
        out.append(Goal("10,000 cgroups in one snapshot, memory proportional to the records",
                        f"read in {fmt_time(big.per_snapshot['bpf'])}; Python peak "
                        f"{_bytes(big.py_peak)} = {_bytes(big.py_peak / big.size)} per "
                        f"cgroup ({', '.join(_bytes(x) for x in per)} per cgroup from 100 "
                        f"up)", flat))
    return out


WHAT_WOULD_CHANGE = """\
What moved the single-read goals: an iterator session has a fixed cost (an anon-inode
file, a seq_file and a 32 KiB buffer made and freed per read) that a read through it cannot
go under. `Reader.read` therefore reads one cgroup with a `SEC("syscall")` program run by
`BPF_PROG_RUN` (bpf_src/memcg_fetch.bpf.c) on a `struct cgroup` reference that an iterator
session stashed once: one `bpf()` call, no file (Linux 6.4+; iterator sessions below).
What moved the tree goal: a walk whose shape (ids, parents, names) did not change reuses
the last snapshot's paths and index. Where more could come from (details in section 3 and
[profile.md](profile.md)):

- **Trees**: build a Snapshot's paths lazily, on the first lookup
  by path, instead of for every changed tree; in the BPF program read only the
  selected slots with direct loads (`bpf_rdonly_cast` to `struct mem_cgroup`, available
  on 6.18) instead of `bpf_probe_read_kernel` copies of the whole `state[]`/`events[]`
  arrays per cgroup, and build overflow records in place in the map instead of copying
  them from the per-CPU scratch."""


def report(single: List[SingleResult], trees: List[TreeResult], profiles: List[Profile],
           split: Dict[str, float], why_no_profile: str, why_no_c: str,
           settings: Settings, others: float, read_method: str = "") -> Tuple[str, List[str]]:
    """(the Markdown of bench.md, its environment lines)."""
    mount = memory_mount()
    env = [
        f"- machine: {os_name()}, {platform.machine()}, {cpu_model()} ({os.cpu_count()} CPUs), "
        f"{mem_total()} RAM{', a VM' if _is_vm() else ''}",
        f"- kernel: {os.uname().release}",
        f"- cgroup: v{mount.version} (memory controller at {mount.mountpoint})" if mount else
        "- cgroup: none",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"pymemcg {__version__}; C: {_cc_version()}",
        f"- stats: {', '.join(STATS)}",
        f"- `Reader.read` reads one cgroup by: {read_method or 'unknown'}",
        f"- run: {time.strftime('%Y-%m-%d %H:%M %Z')}; other processes and kernel threads "
        f"on this shared machine kept {others:.2f} of its {os.cpu_count()} CPUs busy on "
        f"average during the run (real times include that interference, CPU-time figures "
        f"do not)",
        "",
    ]
    lines = ["# pymemcg benchmark", "", "Written by `python -m pymemcg.bench` (`make bench`). "
             "BPF reads against memory.stat, in C and in Python; the issue's goals are in "
             "section 4.", ""] + env
    if why_no_c:
        lines += [f"No C results: {why_no_c}.", ""]
    lines += report_single(single, settings.reads, settings.rounds)
    if trees:
        lines += report_trees(trees, settings.tree_rounds, settings.tree_work)
        lines += ["![cost per snapshot against tree size](bench.png)", ""]
    # split_read measured the leaf (the last cgroup), best rounds
    c_session = single[-1].c["bpf"].best if single and single[-1].c else None
    tree_split = next((t.split for t in trees if t.split), {})
    how = "BPF_PROG_RUN" if read_method.startswith("BPF_PROG_RUN") else "iterator session"
    lines += report_profiles(profiles, split, c_session, tree_split, why_no_profile, how)
    lines += ["## 4. The issue's speed goals", "", "| goal | measured | met |", "|---|---|---|"]
    for g in goals(single, trees):
        lines.append(f"| {g.text} | {g.measured} | {g.verdict} |")
    lines += ["", WHAT_WOULD_CHANGE, ""]
    return "\n".join(lines), env


def busy_cpu_seconds() -> Tuple[float, float]:
    """(CPU seconds the whole machine was busy, of which this process and its children)
    since boot, from /proc/stat and getrusage; their growth over the run shows how much
    other jobs competed with the benchmark."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]  # user nice system irq softirq
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        ours += ru.ru_utime + ru.ru_stime
    return busy / os.sysconf("SC_CLK_TCK"), ours


def _is_vm() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " hypervisor" in f.read()
    except OSError:
        return False


def _cc_version() -> str:
    try:
        out = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else "?"
    except OSError:
        return "?"


def plot(trees: List[TreeResult], path: str) -> str:
    """PNG of cost per snapshot (and per cgroup) against tree size; '' or why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'pymemcg[bench]')"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    sizes = [t.size for t in trees]
    for m, label in TREE_LABELS.items():
        if not all(m in t.per_snapshot for t in trees):
            continue
        style = "o-" if m in ("bpf", "text") else "s--"
        label = label.replace("`", "")
        ax1.plot(sizes, [t.per_snapshot[m] for t in trees], style, label=label)
        ax2.plot(sizes, [t.per_snapshot[m] / t.size for t in trees], style, label=label)
    for ax, title in ((ax1, "seconds per snapshot"), (ax2, "seconds per cgroup")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cgroups in the tree")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(f"pymemcg read_tree vs memory.stat, kernel {os.uname().release}, cgroup v1"
                 if memory_mount() and memory_mount().version == 1 else
                 f"pymemcg read_tree vs memory.stat, kernel {os.uname().release}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ""


# --- main ---

def run(args) -> int:
    """The whole benchmark; writes the Markdown to stdout and the files asked for."""
    st = Settings.quick() if args.quick else Settings()
    mount = memory_mount()
    own = own_memory_cgroup()
    if mount is None or own is None:
        print("bench: this host has no memory cgroup hierarchy", file=sys.stderr)
        return 2
    binary, why_no_c = build_c()
    if binary is None:
        log(f"no C side: {why_no_c}")
    ok, why_no_profile = perf_works() if not args.no_profile else (False, "--no-profile")
    remove_stale_trees(own)
    t_start, busy0 = time.perf_counter(), busy_cpu_seconds()
    with BenchCgroups(own) as cgroups, Reader(stats=STATS, backend="bpf") as reader:
        read_method = reader.read_method
        cbench = CBench(binary) if binary else None
        try:
            # part 1: the hierarchy root, and this process's cgroup if it is a leaf
            leaf = own
            if any(e.is_dir() for e in os.scandir(own)):
                leaf = cgroups.path("leaf")
                os.mkdir(leaf)
            single = measure_single([("root", mount.mountpoint), ("leaf", leaf)], reader,
                                    cbench, st.reads, st.rounds)
            log("Reader.read taken apart")
            split = split_read(reader, leaf, st.reads // 5, st.rounds)
            # part 2
            trees = [measure_tree(n, cgroups, reader, cbench, st.tree_work, st.tree_rounds)
                     for n in TREE_SIZES]
            # part 3
            est = {"py-read": single[0].py["bpf"].per_op,
                   "py-parse": single[0].py["pread+parse"].per_op}
            est.update(next(t for t in trees if t.size == 1000).per_snapshot)
            if single[0].c:
                est.update({"c-stat": single[0].c["stat-seek"].per_op,
                            "c-bpf": single[0].c["bpf"].per_op})
                if "bpf-fetch" in single[0].c:
                    est["c-fetch"] = single[0].c["bpf-fetch"].per_op
            profiles = measure_profiles(cbench, mount.mountpoint, cgroups, est,
                                        st.profile_s) if ok else []
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
    log(f"done in {time.perf_counter() - t_start:.0f} s")
    busy1 = busy_cpu_seconds()
    others = ((busy1[0] - busy0[0]) - (busy1[1] - busy0[1])) / (time.perf_counter() - t_start)
    text, env = report(single, trees, profiles, split, why_no_profile, why_no_c, st,
                       max(0.0, others), read_method)
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    plot_path = args.plot or (os.path.splitext(args.out)[0] + ".png" if args.out else None)
    if plot_path:
        why = plot(trees, plot_path)
        log(f"no plot: {why}" if why else f"plot written to {plot_path}")
    profile_path = args.profile or (os.path.join(os.path.dirname(args.out) or ".", "profile.md")
                                    if args.out else None)
    if profile_path and profiles:
        with open(profile_path, "w") as f:
            f.write(profile_markdown(profiles, env))
        log(f"profiles written to {profile_path}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["specs"]:
        p = argparse.ArgumentParser(prog="python -m pymemcg.bench specs",
                                    description="this kernel's specs of the selected stats, "
                                                "one 'name kind slot item flags scale' line "
                                                "each, for bench/memcg_bench")
        p.add_argument("--stats", default=",".join(STATS), help="comma-separated stat names")
        a = p.parse_args(argv[1:])
        from .errors import Error
        try:
            print("\n".join(spec_lines(a.stats.split(","))))
        except Error as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
        return 0
    if argv[:1] == ["loop"]:
        p = argparse.ArgumentParser(prog="python -m pymemcg.bench loop",
                                    description="run one method COUNT times, for profilers")
        p.add_argument("method", choices=["read", "pread-parse", "tree", "text-tree"])
        p.add_argument("path")
        p.add_argument("count", type=int)
        a = p.parse_args(argv[1:])
        loop(a.method, a.path, a.count)
        return 0
    p = argparse.ArgumentParser(prog="python -m pymemcg.bench",
                                description=__doc__.split("\n")[0],
                                epilog="also: `python -m pymemcg.bench specs` and "
                                       "`python -m pymemcg.bench loop` (see the module's "
                                       "docstring)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_READS:,} reads instead of {READS:,}, smaller tree loops, "
                        f"shorter profiles")
    p.add_argument("--out", metavar="FILE", help="also write the Markdown to FILE")
    p.add_argument("--plot", metavar="PNG", help="the plot (default: FILE.png beside --out)")
    p.add_argument("--profile", metavar="FILE",
                   help="the perf profiles (default: profile.md beside --out)")
    p.add_argument("--no-profile", action="store_true", help="skip the perf profiles")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
