"""The report: docs/bench.md (tables, findings, the goals), docs/profile.md
and the plot."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pymemcg import __version__
from pymemcg.cgroupfs import memory_mount
from pymemcg.cli.bench import Cost, fmt_time
from pymemcg.cli.format import human_bytes

from . import STATS, Settings
from .exporter import tree_split_table
from .measure import SingleResult, TreeResult
from .rotation import RotationResult
from .perf import LANDMARKS, Profile, kernel_share, landmark
from .signals import signals_goal, signals_markdown

# the speed goals of section 4
GOAL_API_VS_PARSE = 10.0         # Reader.read at least 10x faster than pread + parse
GOAL_API_VS_C = 2.0              # ... and within 2x of C's one-call read (the session where
                                 # the one-call program does not load)
GOAL_SYS_SAVED = 0.80            # C: 80% less sys time than memory.stat
GOAL_TREE_1000 = 100.0           # 1,000-cgroup snapshot 100x faster than the Python walk
GOAL_TREE_SHARE = 0.20           # Python's share of a snapshot on top of the C walk, at 1,000
                                 # and 10,000 cgroups (the kernel's own walk grows 2x between
                                 # them on this cache hierarchy: no flat-cost goal)
GOAL_NO_CLIFF = 1.5              # a poller's rotation: per-cgroup cost at 1,000 and 10,000
                                 # within 1.5x of 100's
GOAL_SCRAPE = 10.0               # a 1,000-cgroup scrape: 10x less CPU than on the text backend
GOAL_SCRAPE_LINEAR = 1.5         # ... and per-cgroup CPU at 10,000 within 1.5x of 1,000's
GOAL_READ_MANY = 3.0             # read_many at N = 50: 3x faster per cgroup than read()


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
    "bpf-fetch": "BPF: one `BPF_PROG_RUN` of memcg_fetch on a cgroup stashed once, its "
                 "path proven once (`Reader.read`'s path)",
    "bpf-fetch-hash": "BPF: the same, the run hashing the path (a read after a cgroup "
                      "rename)",
}
PY_LABELS = {
    "bpf": "pymemcg `Reader.read` (BPF)",
    "pread": "`os.pread` of memory.stat, no parsing",
    "pread+parse": "`os.pread` of memory.stat + parse into a dict",
}
TREE_LABELS = {
    "bpf": "pymemcg `read_tree`",
    "text": "Python: walk + parse each memory.stat",
    "bpf-cold": "pymemcg `read_tree`, caches evicted first",
    "text-cold": "Python walk, caches evicted first",
    "c-stat-walk": "C: walk + read each memory.stat",
    "c-bpf-walk": "C: BPF walk (shim, no Python)",
    "c-null-walk": "C: the iterator's walk with a null program (the kernel's floor)",
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
            h = r.c.get("bpf-fetch-hash")
            if f and h:
                lines.append(f"- {r.label}: a run that hashes the path (after a rename) takes "
                             f"{fmt_time(h.cpu_per_op - f.cpu_per_op)} more CPU per read "
                             f"({fmt_time(h.cpu_per_op)} vs {fmt_time(f.cpu_per_op)}).")
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
        " | Python walk ÷ pymemcg | the same, caches evicted | C walk ÷ pymemcg |"
    sep = "|---:|" + "---:|" * (len(methods) + 3)

    def ratios(t: TreeResult) -> str:
        c = t.per_snapshot.get("c-stat-walk")
        cold = t.per_snapshot.get("text-cold"), t.per_snapshot.get("bpf-cold")
        return (f"{ratio(t.per_snapshot['text'], t.per_snapshot['bpf'])} | "
                f"{ratio(*cold) if all(cold) else '-'} | "
                f"{ratio(c, t.per_snapshot['bpf']) if c else '-'}")

    lines = [
        "## 2. Scaling: snapshots of trees of 1 to 10,000 cgroups",
        "",
        "Each tree (a top cgroup, about √n children, the rest grandchildren; 10,000 = "
        "1 + 99 + 9,900) was made under this process's memory cgroup for its turn and "
        f"removed after it. Figures: median of {rounds} rounds in which the methods take turns; "
        "in each round, a method's first snapshot follows a copy of 64 MiB that pushes the "
        "kernel's and our data out of the CPU caches (\"caches evicted first\": what a sampler "
        "that reads every few seconds meets), then it runs as many snapshots back to back as "
        f"make about {work:,} cgroups (the plain columns). All methods list the tree anew each time "
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
    if split and "records" in split:
        c = f"; the C program's session, best round: {fmt_time(c_session)}" if c_session else ""
        out.append(f"- **Reader.read taken apart** (per call, best round): one {split_how} and "
                   f"the Record made in C (`pymemcg._records`) {fmt_time(split['records'])}, "
                   f"+ `Reader.read`'s Python layer (the closed check, the call) "
                   f"{fmt_time(split['Reader.read'] - split['records'])} = "
                   f"{fmt_time(split['Reader.read'])}; the same run through cffi "
                   f"{fmt_time(split['call'])}, and its record unpacked by struct "
                   f"{fmt_time(split['call+unpack'])}{c}.")
    elif split:
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
                   f"walk), {100 - kernel_share(p):.0f}% user space: copying 1,000 records "
                   f"into the snapshot's bytes and comparing the tree's shape (ids, parents, "
                   f"name hashes) with the last walk's.")
    if tree_split:
        t = tree_split
        out.append(f"- **read_tree of 1,000 taken apart** (per snapshot, best round): the "
                   f"session {fmt_time(t['session'])}, + copying the overflow records and "
                   f"all 1,000 into the snapshot's bytes "
                   f"{fmt_time(t['records'] - t['session'])}, + the paths and the Snapshot "
                   f"{fmt_time(t['read_tree'] - t['records'])} = {fmt_time(t['read_tree'])}"
                   + (f"; the kernel's floor, a walk of the same tree with a null program: "
                      f"{fmt_time(t['floor'])}" if "floor" in t else "") + ".")
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


def profile_markdown(profiles: List[Profile], header: List[str],
                     tree_splits: Optional[Dict[int, Dict[str, float]]] = None) -> str:
    """docs/profile.md: per profile, DSO shares, inclusive landmarks, top
    symbols; first the kernel's floor of a tree walk against ours, by size."""
    lines = ["# pymemcg benchmark: profiles", ""] + header
    if tree_splits:
        lines += ["## A tree walk against the kernel's floor", ""] + \
            tree_split_table(tree_splits) + [FLOOR_NOTE, ""]
    lines += [
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


def _best_ratio(t: TreeResult, slow: str, fast: str) -> str:
    """'; best N×': the two methods' best rounds, where the run kept them."""
    if slow in t.best and fast in t.best:
        return f"; best {t.best[slow] / t.best[fast]:.1f}×"
    return ""


def rotation_goals(rotation: Sequence[RotationResult]) -> List[Goal]:
    """No cliff: a poller's per-cgroup CPU at 1,000 and 10,000 cgroups
    against 100's, as the target says it, and against how much the kernel's
    own floor (the same rotation in C) grows between the same sizes."""
    by_size = {r.size: r for r in rotation}
    base = by_size.get(100)
    bigger = [by_size[n] for n in (1_000, 10_000) if n in by_size]
    if base is None or not bigger:
        return []
    out = []
    literal, against_floor = [], []
    worst_literal = worst_floor = 0.0
    for c_method, method in (("fetch-each", "read()"), ("fetch-many", "read_many()")):
        grows = [r.cpu_per_cgroup[method] / base.cpu_per_cgroup[method] for r in bigger]
        worst_literal = max(worst_literal, *grows)
        literal.append(f"{method} " + ", ".join(f"{g:.2f}×" for g in grows))
        if all(c_method in r.c_cpu_per_cgroup for r in [base, *bigger]):
            floor = [r.c_cpu_per_cgroup[c_method] / base.c_cpu_per_cgroup[c_method]
                     for r in bigger]
            rel = [g / f for g, f in zip(grows, floor)]
            worst_floor = max(worst_floor, *rel)
            against_floor.append(f"{method} " + ", ".join(
                f"{g:.2f}× where C grows {f:.2f}× ({x:.2f})" for g, f, x in zip(grows, floor, rel)))
    sizes = " and ".join(f"{r.size:,}" for r in bigger)
    out.append(Goal(f"no cliff: per-cgroup CPU of read() and read_many() polling {sizes} "
                    f"cgroups in rotation within {GOAL_NO_CLIFF}× of 100's",
                    "; ".join(literal), worst_literal <= GOAL_NO_CLIFF,
                    GOAL_NO_CLIFF / worst_literal))
    if against_floor:
        out.append(Goal(f"no cliff, against the kernel's floor: that growth within "
                        f"{GOAL_NO_CLIFF}× of the growth of the same rotation in C (the same "
                        f"shim calls, no Python)", "; ".join(against_floor),
                        worst_floor <= GOAL_NO_CLIFF, GOAL_NO_CLIFF / worst_floor))
    return out


def goals(single: List[SingleResult], trees: List[TreeResult], scrapes=(), many=None,
          signals=None, rotation: Sequence[RotationResult] = ()) -> List[Goal]:
    """The speed goals against the measurements: each says what it
    compares (median rounds, with the best rounds beside where the run has
    them); met is judged on the medians."""
    out = []
    for r in single:
        a, p = r.py["bpf"], r.py["pread+parse"]
        api, parse = a.per_op, p.per_op
        out.append(Goal(f"{r.label}: `Reader.read` ≥ {GOAL_API_VS_PARSE:.0f}× faster than Python "
                        f"pread + parse", f"median {ratio(parse, api)} ({fmt_time(api)} vs "
                        f"{fmt_time(parse)}); best {ratio(p.best, a.best)}; CPU time "
                        f"{ratio(p.cpu_per_op, a.cpu_per_op)}",
                        parse / api >= GOAL_API_VS_PARSE, parse / api / GOAL_API_VS_PARSE))
        if r.c:
            # C's read by the same method as Reader.read's: one BPF_PROG_RUN
            # where memcg_fetch loads, else an iterator session
            how = "bpf-fetch" if "bpf-fetch" in r.c else "bpf"
            c = r.c[how]
            what = "one-call read (`BPF_PROG_RUN`)" if how == "bpf-fetch" else \
                "iterator session"
            out.append(Goal(f"{r.label}: `Reader.read` within {GOAL_API_VS_C:.0f}× of C's "
                            f"{what}", f"median {ratio(api, c.per_op)} "
                            f"({fmt_time(api)} vs {fmt_time(c.per_op)}); best "
                            f"{ratio(a.best, c.best)}; CPU time "
                            f"{ratio(a.cpu_per_op, c.cpu_per_op)} "
                            f"({fmt_time(a.cpu_per_op)} vs {fmt_time(c.cpu_per_op)})",
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
                            f"(sys totals over all rounds: {b:.2f} s vs {s:.2f} s; an iterator session: "
                            f"{1 - session / s:.0%} less)", 1 - b / s >= GOAL_SYS_SAVED,
                            (1 - b / s) / GOAL_SYS_SAVED))
    t = next((t for t in trees if t.size == 1000), None)
    if t:
        x = t.per_snapshot["text"] / t.per_snapshot["bpf"]
        best = _best_ratio(t, "text", "bpf")
        cold = ""
        if "bpf-cold" in t.per_snapshot and "text-cold" in t.per_snapshot:
            cold = (f"; each with the caches evicted first "
                    f"{ratio(t.per_snapshot['text-cold'], t.per_snapshot['bpf-cold'])} "
                    f"({fmt_time(t.per_snapshot['bpf-cold'])} vs "
                    f"{fmt_time(t.per_snapshot['text-cold'])})")
        out.append(Goal(f"1,000-cgroup snapshot ≥ {GOAL_TREE_1000:.0f}× faster than Python "
                        f"walking memory.stat", f"median {x:.1f}× "
                        f"({fmt_time(t.per_snapshot['bpf'])} vs "
                        f"{fmt_time(t.per_snapshot['text'])}){best}; CPU time "
                        f"{ratio(t.cpu['text'], t.cpu['bpf'])}{cold}", x >= GOAL_TREE_1000,
                        x / GOAL_TREE_1000))
    if signals is not None:
        out.append(signals_goal(signals))
    big = max(trees, key=lambda t: t.size) if trees else None
    # read_tree against the same session run from the same process through
    # cffi, in the same rounds, best round each (the split): what Python adds
    # on top of the kernel's walk. The C walk in a process of its own is
    # shown beside it: the kernel's walk itself runs up to a third slower or
    # faster from one process than from the other on this VM, from run to
    # run, which a difference between the two would count as Python's
    walked = [t for t in trees if t.size in (1_000, 10_000) and
              {"session", "read_tree"} <= set(t.split)]
    if walked:
        shares = [1 - t.split["session"] / t.split["read_tree"] for t in walked]
        out.append(Goal(f"Python's share of a snapshot on top of the walk (`read_tree` against "
                        f"the same session and overflow copy from the same process; best rounds "
                        f"of the same rounds) < {GOAL_TREE_SHARE:.0%} at 1,000 and 10,000 "
                        f"cgroups", "; ".join(
                            f"{t.size:,}: {share:.1%} ({fmt_time(t.split['read_tree'])} vs "
                            f"{fmt_time(t.split['session'])})" +
                            (f", the C walk in its own process {fmt_time(t.split['c-walk'])}"
                             if "c-walk" in t.split else "")
                            for share, t in zip(shares, walked)),
                        max(shares) < GOAL_TREE_SHARE,
                        GOAL_TREE_SHARE / max(max(shares), 1e-9)))
    if rotation:
        out += rotation_goals(rotation)
    by_size = {r.size: r for r in scrapes}
    if 1000 in by_size:
        r = by_size[1000]
        x = r.costs["text"]["cpu"] / r.costs["bpf"]["cpu"]
        out.append(Goal(f"a 1,000-cgroup scrape: ≥ {GOAL_SCRAPE:.0f}× less CPU than the same "
                        f"collector on the text backend", f"median {x:.1f}× "
                        f"({fmt_time(r.costs['bpf']['cpu'])} vs "
                        f"{fmt_time(r.costs['text']['cpu'])} CPU)", x >= GOAL_SCRAPE,
                        x / GOAL_SCRAPE))
        if 10_000 in by_size:
            b = by_size[10_000]
            g = (b.costs["bpf"]["cpu"] / b.size) / (r.costs["bpf"]["cpu"] / r.size)
            out.append(Goal(f"scrapes grow linearly: CPU per cgroup at 10,000 within "
                            f"{GOAL_SCRAPE_LINEAR}× of 1,000's", f"median {g:.2f}× "
                            f"({fmt_time(b.costs['bpf']['cpu'])} per scrape)",
                            g <= GOAL_SCRAPE_LINEAR, GOAL_SCRAPE_LINEAR / g))
    if many:
        x = many["ratio_median"]
        out.append(Goal(f"read_many at N = 50 ≥ {GOAL_READ_MANY:.0f}× faster per cgroup than "
                        f"read()", f"{x}× median ({many['ratio_best']}× best)",
                        x >= GOAL_READ_MANY, x / GOAL_READ_MANY))
    if big and big.size >= 10_000:
        per = [t.py_peak / t.size for t in trees if t.size >= 100]
        flat = max(per) / min(per) <= 1.5
        out.append(Goal("10,000 cgroups in one snapshot, memory proportional to the records",
                        f"read in {fmt_time(big.per_snapshot['bpf'])}; Python peak "
                        f"{_bytes(big.py_peak)} = {_bytes(big.py_peak / big.size)} per "
                        f"cgroup ({', '.join(_bytes(x) for x in per)} per cgroup from 100 "
                        f"up)", flat))
    return out


FLOOR_NOTE = ("Why even the floor grows per cgroup (a 1,000-cgroup tree stays in this "
              "VM's caches between snapshots, a 10,000-cgroup tree does not), and what a "
              "snapshot costs when the caches were evicted first: [bench.md](bench.md), after "
              "the goals.")

WHAT_WOULD_CHANGE = """\
What moved the single-read goals: an iterator session has a fixed cost (an anon-inode
file, a seq_file and a 32 KiB buffer made and freed per read) that a read through it cannot
go under. `Reader.read` therefore reads one cgroup with a `SEC("syscall")` program run by
`BPF_PROG_RUN` (bpf_src/memcg_fetch.bpf.c) on a `struct cgroup` reference that an iterator
session stashed once: one `bpf()` call, no file (Linux 6.4+; iterator sessions below).
The run takes no context (the cgroup id goes through the program's mmaped .bss) and, while
no cgroup was renamed since the path was proven (a tracepoint program counts renames), it
does not hash the path: the cgroup's being alive proves it; the shim checks the record.
What moved the tree goal: the walk reads only the selected slots of `struct mem_cgroup`
with plain loads (`bpf_rdonly_cast`, Linux 6.2+) instead of `bpf_probe_read_kernel`
copies of the whole `state[]`/`events[]` arrays per cgroup; a snapshot keeps the walk's
records as the kernel wrote them, one bytes object (decode.PackedRecords), whose columns,
ids and shape (ids, parents, name hashes) are read as u64 words with no object per
cgroup, and a Record is made, and its tuple unpacked, only when one is asked for; a walk
whose shape did not change reuses the last snapshot's paths and index (the shape compared
in place). A single read's Record, and read_many's, are made in C (`pymemcg._records`, in
the extension's shared object): through cffi, unpacking a record into ints and making the
Record in Python cost about as much again as the run.

Where a large tree's per-cgroup cost grows (section 5, "Where a tree snapshot's time
goes"): in the kernel, in cache misses. For each cgroup the walk loads fields of its
`struct cgroup`, kernfs node and name, `struct mem_cgroup` and `memcg_vmstats`, and
writes its record: by the BTF offsets of those fields, about 17 cache lines (1 KiB) in
separate allocations for these 8 stats. A 1,000-cgroup tree's (about 1 MiB) stay in this
VM's 1 MiB L2 and 8 MiB L3 between snapshots; a 10,000-cgroup tree's (about 10 MiB) do not. Back to back, a 1,000-cgroup snapshot
therefore runs from the caches and a 10,000-cgroup one from memory, and even the kernel's
floor (the iterator's walk with a program that only counts cgroups) grows 2.0× per cgroup
between them. With the caches evicted before each snapshot, as a sampler that reads every
few seconds finds them, both sizes read from memory and the per-cgroup cost is flat.
perf samples inside the JIT image of the 10,000-cgroup walk fall on dependent loads:
cgroup → mem_cgroup → its vmstats pointer → the stat slots, then the kernfs node.
Measured on this VM in hot loops of the C walk (`build/memcg_bench -m bpf-walk -c 20000
tree build/bench-specs.txt ROOT COUNT 3`, builds interleaved): reading the stats before
the kernfs node and name, whose copy is a helper call the CPU cannot run ahead of, took
the 10,000-cgroup walk from 910-1,000 to 870-880 ns per cgroup (kept); loading the next cgroup's
lines ahead from the current program took another 6% off (not kept: its pointer at the
end of a sibling list is not a cgroup). Python's share (the bytes copy, the shape
compare) is small beside the kernel's."""


def report(single: List[SingleResult], trees: List[TreeResult], profiles: List[Profile],
           split: Dict[str, float], why_no_profile: str, why_no_c: str,
           settings: Settings, others: float, read_method: str = "", part5: List[str] = (),
           scrapes=(), many=None, signals=None,
           rotation: Sequence[RotationResult] = ()) -> Tuple[str, List[str]]:
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
    lines = ["# pymemcg benchmark", "", "Written by `make bench` (bench/pymemcg_bench). "
             "BPF reads against memory.stat, in C and in Python; the speed goals are in "
             "section 4.", ""] + env
    if why_no_c:
        lines += [f"No C results: {why_no_c}.", ""]
    lines += report_single(single, settings.reads, settings.rounds)
    if trees:
        lines += report_trees(trees, settings.tree_rounds, settings.tree_work)
        lines += ["![cost per snapshot against tree size](bench.png)", ""]
    if signals is not None:
        lines += signals_markdown(signals)
    # split_read measured the leaf (the last cgroup), best rounds
    c_session = single[-1].c["bpf"].best if single and single[-1].c else None
    tree_split = next((t.split for t in trees if t.split), {})
    how = "BPF_PROG_RUN" if read_method.startswith("BPF_PROG_RUN") else "iterator session"
    lines += report_profiles(profiles, split, c_session, tree_split, why_no_profile, how)
    lines += ["## 4. The speed goals", "", "| goal | measured | met |", "|---|---|---|"]
    for g in goals(single, trees, scrapes, many, signals, rotation):
        lines.append(f"| {g.text} | {g.measured} | {g.verdict} |")
    lines += ["", WHAT_WOULD_CHANGE, ""]
    lines += list(part5)
    return "\n".join(lines), env


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
