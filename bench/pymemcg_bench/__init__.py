"""The full benchmark: pymemcg's BPF reads against memory.stat, in C and Python.

It needs a source checkout (the C side, bench/memcg_bench.c on the project's
loader, is built by `make bench-c`) and root. `make bench` runs it with
--out docs/bench.md, which writes docs/bench.png and docs/profile.md too.
By hand, with bench/ on PYTHONPATH:

    python -m pymemcg_bench [--quick] [--out FILE] [--plot FILE] [--profile FILE]
    python -m pymemcg_bench specs [--stats a,b,...]     # stat specs for bench/memcg_bench
    python -m pymemcg_bench loop METHOD PATH COUNT      # one method alone, for profilers
    python -m pymemcg_bench rotation [--rounds N] [--sizes 100,1000,10000]
                                                        # only part 5's rotation table
    python -m pymemcg_bench signals [--rounds N] [--iterations N]
                                                        # only part 2b
    python -m pymemcg_bench oomd [--rounds N]           # only part 5's memory daemon table

Five parts, all on this machine's real cgroups:

1. The seed patch's experiment: 1M reads of one cgroup's memory.stat (an fd
   kept open, seek to 0 before each read, no parsing) against 1M iterator
   sessions on a link made once (create, read, close), reported as real,
   user and sys time like time(1). In C (bench/memcg_bench.c on the
   project's loader, csrc/pmc_shim.c) and in Python (Reader.read against
   os.pread of memory.stat, with and without parsing), for the hierarchy
   root and for a leaf (measure.py).
2. Scaling: snapshots of trees of 1 to 10,000 cgroups made under this
   process's memory cgroup (cgroups.py): Reader.read_tree against a Python
   walk that parses every memory.stat and a C walk that reads them without
   parsing (and the C floor of a BPF walk). Time per snapshot and per
   cgroup, and the Python memory one snapshot takes (measure.py).
2b. A daemon's snapshot (signals.py): 1,000 cgroups with pressure,
   protections, limits, memory.events and cgroup.stat selected beside
   memory.stat's stats, `Reader(for_trees=True).read_tree` against Python
   reading and parsing the files that carry them on this host's cgroup
   version (on v1: memory.stat, usage_in_bytes, limit_in_bytes,
   soft_limit_in_bytes, memsw.limit_in_bytes, failcnt, oom_control; v1 has
   no file for pressure, protections, the other events or cgroup.stat).
3. Where the time goes: perf (cpu-clock; this VM has no hardware counters)
   on the C and Python fast paths, and a split of Reader.read's time
   (perf.py).
4. The speed goals, each marked met or not with its numbers (report.py).
5. What a fleet runs (exporter.py): Prometheus scrapes of 100 to 10,000
   cgroups, CPU per scrape of the text writer on BPF against the same
   collector on the text backend (and prometheus_client's own exposition);
   Reader.read_many against a loop of read() at 50 cgroups
   (bench/read_many.py); the upstream proposal's 1,111-cgroup tree read
   both ways; a poller's rotation over 100, 1,000 and 10,000 cgroups:
   read(), read_many() and memory.stat pread + parse per cgroup, against
   the kernel's floor (the same rotation in C, memcg_bench rotation) and
   Python's share on top of it (rotation.py); examples/oomd.py, a daemon
   that decides as systemd-oomd does, polling 1,000 cgroups through pymemcg
   against the same daemon reading the files, and its CPU at systemd-oomd's
   intervals (oomd.py).

And start-up (startup.py), each in a fresh process: Reader() to its first
read() done, then its first read_tree(), `pymemcg snapshot` start to exit,
and the peak memory that loading every program charges to a cgroup of its
own.

Methods take turns in rounds (a noisy spell of the machine falls on all of
them alike); per-operation figures are the median round. Totals are sums of
clock_gettime/perf_counter (real) and getrusage (user, sys) over the rounds,
in seconds. The timing and the Python controls are pymemcg.cli.bench's,
which `pymemcg bench` uses too. The cgroups made for the run live under
<own memory cgroup>/pymemcg-bench-<pid> and are removed in a finally
block, children first, also on Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pymemcg.cli.bench import STATS

__all__ = ["STATS", "REPO", "Settings", "log"]

READS = 1_000_000                # part 1: reads of one cgroup per method
QUICK_READS = 50_000
ROUNDS = 10                      # part 1: chunks the reads are split into
TREE_SIZES = (1, 10, 100, 1_000, 10_000)
TREE_WORK = 20_000               # part 2: cgroups visited per method per round
QUICK_TREE_WORK = 2_000
TREE_ROUNDS = 5

#: the source checkout: bench/ is in it
REPO = Path(__file__).resolve().parent.parent.parent


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
