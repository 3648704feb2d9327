"""Parts 1 and 2: one cgroup read a million times, and trees of 1 to 10,000
cgroups, by every method; and Reader.read and read_tree taken apart."""

from __future__ import annotations

import functools
import gc
import os
import statistics
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from pymemcg.cli.bench import (READ_SIZE, Cost, read_stat_pread, time_loop, timed_rounds,
                               walk_tree_text)
from pymemcg.reader import Reader

from . import STATS, log
from .c_side import CBench
from .cgroups import BenchCgroups, make_tree, remove_tree


def compare_with_text(snapshot, root: str) -> int:
    """Both methods give the same numbers: every value the BPF snapshot has
    equals memory.stat's (through pymemcg's text backend) for each cgroup of
    an idle tree. Returns how many values were compared; raises if any differ."""
    with Reader(stats=list(snapshot.selection.names), backend="text") as text:
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


def settled_compare(read_tree: Callable[[str], object], root: str, tries: int = 5) -> int:
    """compare_with_text of a fresh snapshot until one agrees: the two reads are
    moments apart, and the page counter of a cgroup just made can still move
    between them (a per-CPU charge batch drained meanwhile, on a busy host).
    A real difference persists and is raised after `tries` attempts."""
    for attempt in range(tries):
        try:
            return compare_with_text(read_tree(root), root)
        except RuntimeError as e:
            if attempt == tries - 1:
                raise
            log(f"retrying the comparison with memory.stat: {e}")
            time.sleep(1.0)
    raise AssertionError("unreachable")


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
        # partial, not lambda: no Python frame of the bench's own around each call
        methods: List[Dict[str, Callable[[], object]]] = [
            {"bpf": functools.partial(reader.read, r.path),
             "pread": functools.partial(os.pread, fd, READ_SIZE, 0),
             "pread+parse": functools.partial(read_stat_pread, fd)}
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
    best: Dict[str, float] = field(default_factory=dict)    # seconds per snapshot, best round


def overflow_map_bytes(reader: Reader) -> Optional[int]:
    """Bytes of the loaded program's overflow map (internals: None if they moved)."""
    try:
        prog = reader._backend._links.prog  # type: ignore[union-attr]
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


#: more than every cache level of the machines this runs on
EVICT_BYTES = 64 << 20
_evict_buffers: List[bytearray] = []


def evict_caches() -> None:
    """Push the kernel's and our own data out of the CPU caches (and the
    TLBs): copy EVICT_BYTES from one buffer into another."""
    if not _evict_buffers:
        _evict_buffers.extend((bytearray(b"\x01" * EVICT_BYTES), bytearray(EVICT_BYTES)))
    _evict_buffers[1][:] = _evict_buffers[0]


def cold_then_warm(methods: Dict[str, Callable[[], object]], iterations: int,
                   per: Dict[str, List[float]], cpu: Dict[str, List[float]]) -> None:
    """One round: each method takes one snapshot with the caches evicted first
    (NAME-cold), then `iterations` back to back (NAME), each regime alike at
    every size; appends seconds per snapshot to per[...] and user + sys to cpu[...]."""
    for name, fn in methods.items():
        evict_caches()
        real, user, sys_ = time_loop(fn, 1)
        per.setdefault(name + "-cold", []).append(real)
        cpu.setdefault(name + "-cold", []).append(user + sys_)
        real, user, sys_ = time_loop(fn, iterations)
        per.setdefault(name, []).append(real / iterations)
        cpu.setdefault(name, []).append((user + sys_) / iterations)


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
        settled_compare(read_tree, root)
        peak, retained = snapshot_memory(reader, root)
        methods = {"bpf": lambda: read_tree(root), "text": lambda: walk_tree_text(root)}
        per: Dict[str, List[float]] = {}
        cpu: Dict[str, List[float]] = {}
        for _ in range(rounds):
            cold_then_warm(methods, iterations, per, cpu)
            if cbench is not None:
                costs, info = cbench.run("tree", root, iterations, 1,
                                         capacity=max(1024, 2 * size))
                for name, cost in costs.items():
                    assert int(info[name]["units"]) == size, info[name]
                    per.setdefault("c-" + name, []).append(cost.per_op)
                    cpu.setdefault("c-" + name, []).append(cost.cpu_per_op)
        split = split_tree(reader, root, iterations, rounds) if size in (1000, 10_000) else {}
        if split:
            # the C walks of the same rounds, best round as split_tree's: ours,
            # and the kernel's floor (the iterator's walk with a null program)
            for step, method in (("c-walk", "c-bpf-walk"), ("floor", "c-null-walk")):
                if per.get(method):
                    split[step] = min(per[method])
                    split[step + "-median"] = statistics.median(per[method])
    finally:
        t0 = time.perf_counter()
        failed = remove_tree(root)
        rmdir_s = time.perf_counter() - t0
        if failed:
            log("could NOT remove: " + "; ".join(failed))
    return TreeResult(size, iterations, {k: statistics.median(v) for k, v in per.items()},
                      mkdir_s, rmdir_s, peak, retained, overflow_map_bytes(reader), split,
                      {k: statistics.median(v) for k, v in cpu.items()},
                      {k: min(v) for k, v in per.items()})


def split_tree(reader: Reader, root: str, iterations: int, rounds: int) -> Dict[str, float]:
    """read_tree's time taken apart, seconds per snapshot (best round): the session
    alone, + the overflow copy and struct unpack of every record, + the paths
    (the whole read_tree). Uses the backend's internals; {} if they moved."""
    try:
        be = reader._backend
        from pymemcg.programs import ORDER_DESCENDANTS_PRE
        links, walks = be._links, be._walks
        link = links.link(links.roots[root], ORDER_DESCENDANTS_PRE)
        methods = {"session": lambda: walks.sessions.run(link), "records": lambda: walks._walk(link),
                   "read_tree": lambda: reader.read_tree(root)}
    except (AttributeError, KeyError, ImportError):
        return {}
    costs = timed_rounds(methods, iterations * rounds, rounds)
    return {name: c.best for name, c in costs.items()}


def split_read(reader: Reader, cgroup: str, reads: int, rounds: int) -> Dict[str, float]:
    """Reader.read's time taken apart: seconds per call of each step added in turn
    (best round: the differences of small numbers need the least noisy figure).

    Uses the backend's internals (its fetch slot, or link fd and buffer) to
    call the shim through cffi; {} if those have moved. Keys: "call" (the
    shim call through cffi), "call+unpack", "Reader.read", and where
    Reader.read reads through pymemcg._records, "records" (its C call: the
    same run and the Record made in C).
    """
    reader.read(cgroup)
    try:
        be = reader._backend
        route = be._routes[cgroup]
        link = route.target
        if be._fetch is not None:
            run, proof = be._fetch_read, route.proof
            record, unpack = be._fetch_record, be._unpack_record

            def call():
                return run(proof)

            def call_unpack():
                run(proof)
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
    in_c = getattr(be, "_reads", None)
    if in_c is not None:
        methods["records"] = lambda: in_c.read(cgroup)
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
