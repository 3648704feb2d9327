#!/usr/bin/env python3
"""Soak: many reads through one pymemcg Reader, watching fds and RSS.

    python tools/soak.py                      # 10^6 single reads, 10^6 tree reads
    python tools/soak.py --reads 100000 --tree-reads 10000

Makes a small tree of temporary memory cgroups under this process's own
memory cgroup (removed at the end), reads it with the BPF backend, and prints
the fd count and RSS every --report-every reads. After a warm-up, the fd set
must not change and RSS must not grow by more than --rss-slack-kib: it prints
PASS or FAIL and exits 0 or 1. Needs root (make soak).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import uuid

import pymemcg
from pymemcg.cgroupfs import own_memory_cgroup

TREE = ["a", "a/b", "a/b/c", "a/d", "e", "e/f", "g"]


def fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=1_000_000, help="single reads (Reader.read)")
    ap.add_argument("--tree-reads", type=int, default=1_000_000,
                    help="tree reads (Reader.read_tree of an 8-cgroup tree)")
    ap.add_argument("--warmup", type=int, default=5_000, help="reads of each kind before the "
                    "baseline is taken")
    ap.add_argument("--report-every", type=int, default=100_000)
    ap.add_argument("--rss-slack-kib", type=int, default=4096,
                    help="allowed RSS growth after warm-up")
    ap.add_argument("--backend", default="bpf", choices=["bpf", "text"])
    args = ap.parse_args(argv)

    own = own_memory_cgroup()
    if own is None:
        print("soak: no memory cgroup hierarchy on this host", file=sys.stderr)
        return 2
    base = os.path.join(own, f"pymemcg-soak-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    made = [base]
    os.mkdir(base)
    ok = True
    try:
        for rel in TREE:
            p = os.path.join(base, rel)
            os.mkdir(p)
            made.append(p)
        singles = made[1:]
        n_paths = len(singles)
        fds_start = fds()
        with pymemcg.Reader(stats=["usage", "limit", "anon", "file", "shmem", "pgfault",
                                   "pgmajfault", "oom_kill"], backend=args.backend) as r:
            read, read_tree = r.read, r.read_tree
            for i in range(args.warmup):
                read(singles[i % n_paths])
                read_tree(base)
            gc.collect()
            fd0, rss0 = fds(), rss_kib()
            print(f"soak: backend {r.backend} (single reads: {r.read_method}), "
                  f"{len(TREE) + 1} cgroups under {base}")
            print(f"{'phase':>6} {'reads':>9} {'fds':>4} {'rss KiB':>8} {'+KiB':>6} "
                  f"{'us/read':>8}")
            print(f"{'warm':>6} {0:>9} {len(fd0):>4} {rss0:>8} {0:>6} {'-':>8}")

            def phase(name: str, total: int, one) -> None:
                nonlocal ok
                done = 0
                while done < total:
                    n = min(args.report_every, total - done)
                    t0 = time.perf_counter()
                    one(n, done)
                    dt = time.perf_counter() - t0
                    done += n
                    now_fds, now_rss = fds(), rss_kib()
                    print(f"{name:>6} {done:>9} {len(now_fds):>4} {now_rss:>8} "
                          f"{now_rss - rss0:>6} {dt / n * 1e6:>8.2f}", flush=True)
                    if now_fds != fd0:
                        print(f"soak: fds changed: +{sorted(now_fds - fd0)} "
                              f"-{sorted(fd0 - now_fds)}")
                        ok = False

            def singles_n(n: int, offset: int) -> None:
                for i in range(offset, offset + n):
                    read(singles[i % n_paths])

            def trees_n(n: int, offset: int) -> None:
                for _ in range(n):
                    snap = read_tree(base)
                if len(snap) != len(TREE) + 1:
                    raise AssertionError(f"tree of {len(snap)} cgroups, expected {len(TREE) + 1}")

            phase("single", args.reads, singles_n)
            phase("tree", args.tree_reads, trees_n)
            gc.collect()
            grew = rss_kib() - rss0
            if grew > args.rss_slack_kib:
                print(f"soak: RSS grew by {grew} KiB after warm-up (allowed {args.rss_slack_kib})")
                ok = False
        if fds() - fds_start:
            print(f"soak: fds left after close: {sorted(fds() - fds_start)}")
            ok = False
    finally:
        for p in reversed(made):
            for _ in range(50):
                try:
                    os.rmdir(p)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
