"""`python -m pymemcg_bench`: the whole run, and its `specs` and `loop` helpers."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Callable, List, Optional, Tuple, TypeVar, Union

from pymemcg.cgroupfs import memory_mount, own_memory_cgroup
from pymemcg.reader import Reader

from . import (QUICK_READS, READS, STATS, TREE_ROUNDS, TREE_SIZES, TREE_WORK, Settings,
               __doc__ as PACKAGE_DOC, log)
from .c_side import CBench, build_c, spec_lines
from .cgroups import BenchCgroups, remove_stale_trees
from .exporter import (measure_anchor, measure_embedding, measure_read_many, measure_scrapes,
                       report_part5)
from .oomd import measure_oomd, oomd_markdown
from .measure import loop, measure_single, measure_tree, split_read
from .perf import measure_profiles, perf_works
from .rotation import ROTATION_SIZES, measure_rotation, rotation_markdown
from .signals import measure_signals, signals_goal, signals_markdown
from .report import plot, profile_markdown, report
from .startup import measure_startup, report_startup


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


# --- main ---

T = TypeVar("T")


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
    startup_rounds = 5 if args.quick else 15
    # first, in processes of their own: what this one loads is no part of it
    startup = measure_startup(own, mount.mountpoint, mount.version, startup_rounds)
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
            # part 2b: a daemon's selection, against the files that carry it
            signals = measure_signals(cgroups, max(1, st.tree_work // 1000), st.tree_rounds)
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
            # part 5
            scrapes, why_no_scrapes, embedding = [], "", None
            try:
                import prometheus_client  # noqa: F401
            except ImportError:
                why_no_scrapes = "prometheus_client is not installed (the prometheus extra)"
                log(f"no scrapes: {why_no_scrapes}")
            if not why_no_scrapes:
                scrapes = measure_scrapes(cgroups, st.tree_rounds)
                embedding = measure_embedding(cgroups, st.tree_rounds)
            many = measure_read_many(cgroups, st.tree_rounds * 3, 200 if not args.quick else 50)
            anchor = measure_anchor(cgroups, st.tree_rounds)
            rotation = measure_rotation(cgroups, st.tree_rounds, cbench=cbench)
            oomd = measure_oomd(cgroups, st.tree_rounds)
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
    log(f"done in {time.perf_counter() - t_start:.0f} s")
    busy1 = busy_cpu_seconds()
    others = ((busy1[0] - busy0[0]) - (busy1[1] - busy0[1])) / (time.perf_counter() - t_start)
    part5 = report_part5(scrapes, many, anchor,
                         {t.size: t.split for t in trees if t.split}, st.tree_rounds,
                         embedding)
    if why_no_scrapes:
        part5 += [f"No scrapes: {why_no_scrapes}.", ""]
    part5 += rotation_markdown(rotation)
    part5 += oomd_markdown(oomd)
    text, env = report(single, trees, profiles, split, why_no_profile, why_no_c, st,
                       max(0.0, others), read_method, part5, scrapes, many, signals, rotation)
    text = text.rstrip("\n") + "\n\n" + "\n".join(report_startup(startup, startup_rounds,
                                                                  mount.mountpoint))
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
            f.write(profile_markdown(profiles, env,
                                     {t.size: t.split for t in trees if t.split}))
        log(f"profiles written to {profile_path}")
    return 0


def in_own_cgroups(measure: Callable[[BenchCgroups], T]) -> Union[T, int]:
    """measure(cgroups of this run's own, removed afterwards), or an exit status."""
    own = own_memory_cgroup()
    if memory_mount() is None or own is None:
        print("bench: this host has no memory cgroup hierarchy", file=sys.stderr)
        return 2
    remove_stale_trees(own)
    with BenchCgroups(own) as cgroups:
        try:
            return measure(cgroups)
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130


def run_rotation(rounds: int, sizes: List[int]) -> int:
    """Only the rotation table, in cgroups of this run's own; Markdown to stdout."""
    binary, why_no_c = build_c()
    if binary is None:
        print(f"bench: no C floor: {why_no_c}", file=sys.stderr)
    cbench = CBench(binary) if binary is not None else None
    results = in_own_cgroups(lambda cgroups: measure_rotation(cgroups, rounds, sizes, cbench))
    if isinstance(results, int):
        return results
    sys.stdout.write("\n".join(rotation_markdown(results)) + "\n")
    return 0


def run_signals(rounds: int, iterations: int) -> int:
    """Only part 2b (a daemon's snapshot against the files) and its goal; Markdown
    to stdout."""
    result = in_own_cgroups(lambda cgroups: measure_signals(cgroups, iterations, rounds))
    if isinstance(result, int):
        return result
    goal = signals_goal(result)
    lines = [f"Linux {os.uname().release}", ""] + signals_markdown(result) + [
        "| goal | measured | met |", "|---|---|---|",
        f"| {goal.text} | {goal.measured} | {goal.verdict} |"]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def run_oomd(rounds: int) -> int:
    """Only the memory daemon's table (examples/oomd.py); Markdown to stdout."""
    result = in_own_cgroups(lambda cgroups: measure_oomd(cgroups, rounds))
    if isinstance(result, int):
        return result
    sys.stdout.write("\n".join(oomd_markdown(result)) + "\n")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["specs"]:
        p = argparse.ArgumentParser(prog="python -m pymemcg_bench specs",
                                    description="this kernel's specs of the selected stats, "
                                                "one 'name kind slot item flags scale' line "
                                                "each, for bench/memcg_bench")
        p.add_argument("--stats", default=",".join(STATS), help="comma-separated stat names")
        a = p.parse_args(argv[1:])
        from pymemcg.errors import Error
        try:
            print("\n".join(spec_lines(a.stats.split(","))))
        except Error as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
        return 0
    if argv[:1] == ["loop"]:
        p = argparse.ArgumentParser(prog="python -m pymemcg_bench loop",
                                    description="run one method COUNT times, for profilers")
        p.add_argument("method", choices=["read", "pread-parse", "tree", "text-tree"])
        p.add_argument("path")
        p.add_argument("count", type=int)
        a = p.parse_args(argv[1:])
        loop(a.method, a.path, a.count)
        return 0
    if argv[:1] == ["rotation"]:
        p = argparse.ArgumentParser(prog="python -m pymemcg_bench rotation",
                                    description="only the poller's rotation table (part 5)")
        p.add_argument("--rounds", type=int, default=TREE_ROUNDS,
                       help=f"rounds per size (default {TREE_ROUNDS}; --quick runs 3)")
        p.add_argument("--sizes", default=",".join(map(str, ROTATION_SIZES)),
                       help="comma-separated numbers of cgroups")
        a = p.parse_args(argv[1:])
        return run_rotation(a.rounds, [int(n) for n in a.sizes.split(",")])
    if argv[:1] == ["signals"]:
        p = argparse.ArgumentParser(prog="python -m pymemcg_bench signals",
                                    description="only a daemon's snapshot against the files "
                                                "(part 2b)")
        p.add_argument("--rounds", type=int, default=TREE_ROUNDS,
                       help=f"rounds (default {TREE_ROUNDS})")
        p.add_argument("--iterations", type=int, default=TREE_WORK // 1000,
                       help=f"snapshots per method and round (default {TREE_WORK // 1000})")
        a = p.parse_args(argv[1:])
        return run_signals(a.rounds, a.iterations)
    if argv[:1] == ["oomd"]:
        p = argparse.ArgumentParser(prog="python -m pymemcg_bench oomd",
                                    description="only the memory daemon's table (part 5): "
                                                "examples/oomd.py on pymemcg against the files")
        p.add_argument("--rounds", type=int, default=TREE_ROUNDS,
                       help=f"rounds (default {TREE_ROUNDS})")
        return run_oomd(p.parse_args(argv[1:]).rounds)
    p = argparse.ArgumentParser(prog="python -m pymemcg_bench",
                                description=PACKAGE_DOC.split("\n")[0],
                                epilog="also: `python -m pymemcg_bench specs`, "
                                       "`python -m pymemcg_bench loop`, `python -m "
                                       "pymemcg_bench rotation`, `python -m pymemcg_bench "
                                       "signals` and `python -m pymemcg_bench oomd` (see the "
                                       "package's docstring)")
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
