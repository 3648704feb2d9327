#!/usr/bin/env python3
"""Reader.read_many against a loop of Reader.read, per cgroup, at N cgroups.

Makes N empty cgroups under this process's own memory cgroup (or --base),
reads them with one Reader (BPF backend, no shared pins) both ways, the two
methods taking turns in rounds so that both see the same host, and prints
nanoseconds per cgroup (the best round and the median) and their ratio, with
os.pread + parse of each cgroup's memory.stat as a reference. Removes the
cgroups it made. Root; run from the checkout after `make develop`:

    .venv/bin/python bench/read_many.py            # N = 50
    .venv/bin/python bench/read_many.py --n 200 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import pymemcg
from pymemcg.cgroupfs import own_memory_cgroup


def parse_memory_stat(data: bytes) -> Dict[str, int]:
    out = {}
    for line in data.splitlines():
        key, _, value = line.partition(b" ")
        out[key.decode()] = int(value)
    return out


def rounds(methods: Dict[str, Callable[[], object]], calls: Dict[str, int], per_call: int,
           count: int) -> Dict[str, List[float]]:
    """ns per cgroup of each method in each round; the methods take turns."""
    out: Dict[str, List[float]] = {name: [] for name in methods}
    for _ in range(count):
        for name, fn in methods.items():
            n = calls[name]
            start = time.perf_counter_ns()
            for _ in range(n):
                fn()
            out[name].append((time.perf_counter_ns() - start) / (n * per_call))
    return out


def measure(n: int = 50, rounds_: int = 15, calls_: int = 200, base: Optional[str] = None
            ) -> Dict[str, object]:
    """Both methods at n cgroups made under `base` (default: our own memory
    cgroup) and removed: the result main() prints, as a dict."""
    base = os.path.join(base or own_memory_cgroup(), f"pymemcg-bench-many-{os.getpid()}")
    os.mkdir(base)
    paths = []
    try:
        for i in range(n):
            path = os.path.join(base, f"c{i}")
            os.mkdir(path)
            paths.append(path)
        with pymemcg.Reader(backend="bpf", shared_pins=False) as reader:
            stat_fds = [os.open(os.path.join(p, "memory.stat"), os.O_RDONLY) for p in paths]
            try:
                read, read_many = reader.read, reader.read_many

                # each takes one value of each record: read_many's records are
                # unpacked on first use, read()'s when made
                def loop():
                    for p in paths:
                        read(p).get("anon")

                def many():
                    for rec in read_many(paths):
                        rec.get("anon")

                def text():
                    for fd in stat_fds:
                        parse_memory_stat(os.pread(fd, 65536, 0))

                # first calls prove each path and keep its route: not measured
                for rec, path in zip(read_many(paths), paths):
                    assert rec is not None and rec.id == os.stat(path).st_ino, path
                loop()
                calls = {"read_many": calls_, "read loop": calls_,
                         "memory.stat": max(1, calls_ // 4)}
                got = rounds({"read loop": loop, "read_many": many, "memory.stat": text},
                             calls, n, rounds_)
                method = reader.read_method
            finally:
                for fd in stat_fds:
                    os.close(fd)
    finally:
        for path in paths:
            os.rmdir(path)
        os.rmdir(base)

    best = {k: min(v) for k, v in got.items()}
    median = {k: statistics.median(v) for k, v in got.items()}
    return {
        "n": n, "rounds": rounds_, "calls": calls_, "read_method": method,
        "kernel": os.uname().release, "python": sys.version.split()[0],
        "best_ns_per_cgroup": {k: round(v) for k, v in best.items()},
        "median_ns_per_cgroup": {k: round(v) for k, v in median.items()},
        "ratio_best": round(best["read loop"] / best["read_many"], 2),
        "ratio_median": round(median["read loop"] / median["read_many"], 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50, help="cgroups (default 50)")
    ap.add_argument("--rounds", type=int, default=15, help="rounds of each method (default 15)")
    ap.add_argument("--calls", type=int, default=200,
                    help="read_many calls per round; the read loop reads as many cgroups")
    ap.add_argument("--base", help="make the cgroups under this cgroup (default: our own)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = ap.parse_args(argv)
    result = measure(args.n, args.rounds, args.calls, args.base)
    best = {k: float(v) for k, v in result["best_ns_per_cgroup"].items()}
    median = {k: float(v) for k, v in result["median_ns_per_cgroup"].items()}
    method = result["read_method"]
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.n} cgroups, {args.rounds} rounds, Linux {result['kernel']}, "
          f"Python {result['python']}; read(): {method}")
    print(f"{'method':<14}{'best ns/cgroup':>16}{'median':>10}")
    for name in ("read loop", "read_many", "memory.stat"):
        print(f"{name:<14}{best[name]:>16.0f}{median[name]:>10.0f}")
    print(f"ratio read loop / read_many: {result['ratio_best']}x (best), "
          f"{result['ratio_median']}x (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
