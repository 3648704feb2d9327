"""Part 5: what a fleet runs. Prometheus scrapes (CPU per scrape, BPF vs the
text backend), Reader.read_many against a loop of read(), and the anchor: the
upstream proposal's 1,111-cgroup tree read both ways.

Every tree is made under this process's memory cgroup (cgroups.py) for its
turn and removed after it. Methods take turns in rounds; figures are medians
of the rounds.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from pymemcg.cli.bench import walk_tree_text
from pymemcg.reader import Reader

from . import REPO, STATS, log
from .cgroups import BenchCgroups, make_tree, remove_tree

SCRAPE_SIZES = (100, 1_000, 10_000)
SCRAPE_WORK = 20_000          # cgroups scraped per round by the BPF writer
TEXT_WORK = 2_000             # ... by the text backend and by prometheus_client
CLIENT_MAX = 1_000            # prometheus_client's own exposition: up to this size

#: the upstream selftest proposal's tree and its result (60-CPU VM)
ANCHOR_SHAPE = (10, 10, 10)   # 1 + 10 + 100 + 1,000 = 1,111 cgroups
ANCHOR_UPSTREAM = {"memory.stat": 156.8e-3, "bpf": 4.2e-3, "ratio": 36.9}   # as reported


def cpu_and_real(fn: Callable[[], object], n: int) -> tuple:
    """(CPU seconds, real seconds) per call of fn over n calls: process_time
    counts this process's user and system time, the kernel walk included."""
    c0, r0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - c0) / n, (time.perf_counter() - r0) / n


def interleaved(methods: Dict[str, tuple], rounds: int) -> Dict[str, Dict[str, float]]:
    """methods: name -> (fn, calls per round). The methods take turns (A B A B);
    returns name -> {"cpu", "real": medians per call, "cpu_min"}."""
    cpu: Dict[str, List[float]] = {m: [] for m in methods}
    real: Dict[str, List[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for name, (fn, n) in methods.items():
            c, r = cpu_and_real(fn, n)
            cpu[name].append(c)
            real[name].append(r)
    return {m: {"cpu": statistics.median(cpu[m]), "real": statistics.median(real[m]),
                "cpu_min": min(cpu[m])} for m in methods}


# --- scrapes ---

@dataclass
class ScrapeResult:
    """One tree size: per scrape, by method ("bpf": the text writer on BPF,
    "text": the same writer on the text backend, "client": prometheus_client's
    generate_latest of the collector on BPF)."""

    size: int
    costs: Dict[str, Dict[str, float]]
    body_bytes: int
    calls: Dict[str, int]
    same_as_client: Optional[bool]      # the writer parsed == the client parsed (one snapshot)


def measure_scrapes(cgroups: BenchCgroups, rounds: int, sizes=SCRAPE_SIZES) -> List[ScrapeResult]:
    from prometheus_client import CollectorRegistry, generate_latest

    from pymemcg.prometheus import MemcgCollector
    out = []
    for size in sizes:
        root = cgroups.path(f"s{size}")
        try:
            make_tree(root, size)
            with MemcgCollector(root, backend="bpf", min_interval=0) as bpf, \
                    MemcgCollector(root, backend="text", min_interval=0) as text:
                registry = CollectorRegistry()
                registry.register(bpf)
                same = None
                if size <= CLIENT_MAX:
                    same = _same_as_client(bpf, registry)
                body = len(bpf.exposition())          # the shape's labels are made here
                text.exposition()
                calls = {"bpf": max(1, SCRAPE_WORK // size), "text": max(1, TEXT_WORK // size)}
                methods = {"bpf": (bpf.exposition_chunks, calls["bpf"]),
                           "text": (text.exposition_chunks, calls["text"])}
                if size <= CLIENT_MAX:
                    calls["client"] = max(1, TEXT_WORK // size)
                    methods["client"] = (lambda: generate_latest(registry), calls["client"])
                log(f"scrapes of {size:,} cgroups: {rounds} rounds of {calls}")
                costs = interleaved(methods, rounds)
                assert bpf.walks > rounds and text.walks > rounds, "every scrape reads the tree"
            out.append(ScrapeResult(size, costs, body, calls, same))
        finally:
            failed = remove_tree(root)
            if failed:
                log("could NOT remove: " + "; ".join(failed))
    return out


def _same_as_client(collector, registry) -> bool:
    """The writer's exposition and prometheus_client's, of one snapshot, read the
    same to prometheus_client's parser."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    def parsed(text: str):
        return {f.name: (f.type, f.documentation,
                         sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
                for f in text_string_to_metric_families(text)}
    collector.shared.min_interval = 3600
    try:
        client = generate_latest(registry).decode()
        return parsed(collector.exposition().decode()) == parsed(client)
    finally:
        collector.shared.min_interval = 0


# --- read_many ---

def measure_read_many(cgroups: BenchCgroups, rounds: int, calls: int, n: int = 50
                      ) -> Dict[str, object]:
    """bench/read_many.py's measurement at N cgroups (its module, imported from bench/)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import read_many
    finally:
        sys.path.pop(0)
    log(f"read_many against read() at {n} cgroups: {rounds} rounds")
    top = os.path.dirname(cgroups.path("many"))   # made on first use
    return read_many.measure(n, rounds, calls, base=top)


# --- the anchor ---

@dataclass
class AnchorResult:
    size: int
    costs: Dict[str, Dict[str, float]]
    calls: Dict[str, int] = field(default_factory=dict)


def make_anchor_tree(top: str, shape=ANCHOR_SHAPE) -> int:
    """top + shape[0] children, each with shape[1], each with shape[2]; returns cgroups."""
    os.mkdir(top)
    level = [top]
    made = 1
    for fanout in shape:
        nxt = []
        for parent in level:
            for i in range(fanout):
                path = os.path.join(parent, f"n{i}")
                os.mkdir(path)
                nxt.append(path)
        made += len(nxt)
        level = nxt
    return made


def measure_anchor(cgroups: BenchCgroups, rounds: int, shape=ANCHOR_SHAPE) -> AnchorResult:
    root = cgroups.path("anchor")
    try:
        size = make_anchor_tree(root, shape)
        with Reader(stats=STATS, backend="bpf") as reader:
            assert len(reader.read_tree(root)) == size
            assert len(walk_tree_text(root)) == size
            calls = {"bpf": 50, "memory.stat": 3}
            log(f"the anchor, {size:,} cgroups: {rounds} rounds of {calls}")
            costs = interleaved({"bpf": (lambda: reader.read_tree(root), calls["bpf"]),
                                 "memory.stat": (lambda: walk_tree_text(root),
                                                 calls["memory.stat"])}, rounds)
        return AnchorResult(size, costs, calls)
    finally:
        failed = remove_tree(root)
        if failed:
            log("could NOT remove: " + "; ".join(failed))


# --- the report ---

def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def report_part5(scrapes: List[ScrapeResult], many: Optional[Dict[str, object]],
                 anchor: Optional[AnchorResult], tree_splits: Dict[int, Dict[str, float]],
                 rounds: int) -> List[str]:
    lines = ["## 5. Scrapes, read_many, the anchor", ""]
    if scrapes:
        lines += [
            "### Prometheus scrapes",
            "",
            "CPU time of this process per scrape (`time.process_time`: user + system, the "
            "kernel's walk included), median of "
            f"{rounds} rounds in which the methods take turns. *writer*: "
            "`MemcgCollector.exposition()`, the text format that `pymemcg export` serves, "
            "written from the snapshot with each cgroup's label prefixes kept while the "
            "tree's shape is unchanged; *BPF* and *text* are the same collector on the two "
            "backends. *client*: prometheus_client's `generate_latest` of the same collector "
            "(its own objects, for comparison; up to 1,000 cgroups). Default stats plus "
            "cAdvisor's metrics; the trees' cgroups are empty (cAdvisor's values computed "
            "once per distinct input: idle cgroups share them).",
            "",
            "| cgroups | writer, BPF | writer, text | text ÷ BPF | client, BPF | BPF per "
            "cgroup | body | same as client |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in scrapes:
            b, t = r.costs["bpf"]["cpu"], r.costs["text"]["cpu"]
            c = r.costs.get("client", {}).get("cpu")
            lines.append(f"| {r.size:,} | {_ms(b)} | {_ms(t)} | {t / b:.1f}× | "
                         f"{_ms(c) if c else '-'} | {b / r.size * 1e9:,.0f} ns | "
                         f"{r.body_bytes / 1e6:.1f} MB | "
                         f"{'-' if r.same_as_client is None else r.same_as_client} |")
        lines.append("")
    if many:
        med, best = many["median_ns_per_cgroup"], many["best_ns_per_cgroup"]
        lines += [
            "### Reader.read_many",
            "",
            f"{many['n']} cgroups, {many['rounds']} rounds of {many['calls']} calls "
            "(bench/read_many.py): ns per cgroup.",
            "",
            "| method | median | best |", "|---|---:|---:|",
            *[f"| {k} | {med[k]:,} | {best[k]:,} |" for k in med],
            "",
            f"read() loop ÷ read_many: **{many['ratio_median']}×** median, "
            f"{many['ratio_best']}× best.",
            "",
        ]
    if anchor:
        b, m = anchor.costs["bpf"], anchor.costs["memory.stat"]
        up = ANCHOR_UPSTREAM
        lines += [
            "### The anchor: the upstream proposal's tree",
            "",
            f"{anchor.size:,} cgroups (1 + 10 + 100 + 1,000 in the full run), a snapshot of every cgroup's "
            "stats: Python walking the tree and parsing each memory.stat against "
            "`Reader.read_tree`; median of the rounds (the proposal measured C/BPF on a "
            "60-CPU VM).",
            "",
            "| | memory.stat walked + parsed | BPF | ratio |", "|---|---:|---:|---:|",
            f"| here, real time | {_ms(m['real'])} | {_ms(b['real'])} | "
            f"{m['real'] / b['real']:.1f}× |",
            f"| here, CPU time | {_ms(m['cpu'])} | {_ms(b['cpu'])} | "
            f"{m['cpu'] / b['cpu']:.1f}× |",
            f"| upstream proposal | {_ms(up['memory.stat'])} | {_ms(up['bpf'])} | "
            f"{up['ratio']:.1f}× |",
            "",
        ]
    if tree_splits:
        lines += ["### Where a tree snapshot's time goes, by size", ""]
        lines += tree_split_table(tree_splits)
    return lines


#: rows of the split table: (key in TreeResult.split, label)
SPLIT_STEPS = (
    ("floor", "kernel floor: the iterator's walk, null program (C)"),
    ("c-walk", "our walk: session + overflow copy (C)"),
    ("session", "session (Python, through cffi)"),
    ("records", "+ the records kept (bytes)"),
    ("read_tree", "read_tree"),
)


def tree_split_table(tree_splits: Dict[int, Dict[str, float]]) -> List[str]:
    """The per-cgroup split of a snapshot's time by tree size, with the
    kernel's floor (bench.md section 5 and profile.md)."""
    sizes = sorted(tree_splits)
    lines = [
        "Per cgroup, best round (median round in brackets where the run kept it), "
        "all in the same rounds: *kernel floor*, one session of a six-instruction "
        "iterator program that only counts the cgroups it is called for (bench/memcg_bench.c "
        "`null-walk`): what the cgroup iterator's walk itself costs, which no program can "
        "remove; *our walk*, the same session of the memcg program plus the overflow copy, "
        "in C; then `read_tree` taken apart in Python: the session alone, + the overflow "
        "copy into the snapshot's bytes, + paths and the Snapshot (the whole `read_tree`). "
        "Our walk minus the floor is the per-cgroup work of our program (its loads of "
        "`struct mem_cgroup`, `memcg_vmstats`, the page counters, the kernfs name, and the "
        "record's write).",
        "",
        "| step | " + " | ".join(f"{s:,} cgroups" for s in sizes) + " | growth |",
        "|---|" + "---:|" * (len(sizes) + 1),
    ]
    for step, label in SPLIT_STEPS:
        if not all(step in tree_splits[s] for s in sizes):
            continue
        per = [tree_splits[s][step] / s for s in sizes]
        med = [tree_splits[s].get(step + "-median") for s in sizes]
        cells = [f"{p * 1e9:,.0f} ns" + (f" ({m / s * 1e9:,.0f})" if m else "")
                 for p, m, s in zip(per, med, sizes)]
        grow = f"{per[-1] / per[0]:.2f}×" if per[0] else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {grow} |")
    lines.append("")
    return lines
