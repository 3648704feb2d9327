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

from pymemcg.catalog import DEFAULT_STATS
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


def _same_as_client(collector, registry, ours=None) -> bool:
    """The writer's exposition (or ours(), pymemcg's of the registry) and
    prometheus_client's of the registry, of one snapshot, read the same to
    prometheus_client's parser."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    def parsed(text: str):
        return {f.name: (f.type, f.documentation,
                         sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
                for f in text_string_to_metric_families(text)}
    collector.shared.min_interval = 3600
    try:
        client = generate_latest(registry).decode()
        mine = ours() if ours is not None else collector.exposition()
        return parsed(mine.decode()) == parsed(client)
    finally:
        collector.shared.min_interval = 0


# --- embedding in a daemon ---

EMBED_SIZE = 1_000
EMBED_WORK = 10_000           # cgroups per round by the cheap methods on BPF
#: per round: (method, what it is), in the report's order
EMBED_METHODS = (
    ("exposition", "pymemcg's exposition: `MemcgCollector.exposition()` (`pymemcg export`)"),
    ("client", "the collector in a daemon's registry, prometheus_client's `generate_latest`"),
    ("drop-in", "the same registry, `pymemcg.prometheus.generate_latest` (what its "
                "`make_wsgi_app` / `make_asgi_app` / `start_http_server` serve)"),
    ("client-om", "the registry in OpenMetrics (what Prometheus asks for), "
                  "prometheus_client's `openmetrics.exposition.generate_latest`"),
    ("drop-in-om", "the registry in OpenMetrics, pymemcg's drop-ins"),
    ("otel", "OpenTelemetry: `MemcgInstrumentor()` (the default, container.* "
             "instruments), one `InMemoryMetricReader` collection"),
    ("otel-memcg", "OpenTelemetry with memcg.* too "
                   "(`MemcgInstrumentor(stats=pymemcg.DEFAULT_STATS)`)"),
)
#: the OpenTelemetry methods and the stats each observes as memcg.*
OTEL_METHODS = (("otel", ()), ("otel-memcg", DEFAULT_STATS))


@dataclass
class EmbedResult:
    """CPU per scrape / collection at one tree size, by "method/backend";
    otel_ours: pymemcg's share of a collection (its callbacks, the tree read
    included; median of the collections) by "method/backend"; points: data
    points per collection, by "method/backend"."""

    size: int
    costs: Dict[str, Dict[str, float]]
    calls: Dict[str, int]
    otel_ours: Dict[str, float] = field(default_factory=dict)
    points: Dict[str, int] = field(default_factory=dict)
    same_as_client: Optional[bool] = None   # the drop-in parsed == prometheus_client parsed


def _daemon_registry(collector):
    """A daemon's registry: a counter and a histogram of its own, then the collector."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    requests = Counter("daemon_requests", "requests served", ["path"], registry=registry)
    latency = Histogram("daemon_request_seconds", "request latency", registry=registry)
    for i in range(20):
        requests.labels(f"/{i}").inc(i)
        latency.observe(i / 100)
    registry.register(collector)
    return registry


def _timed_instrumentor():
    """MemcgInstrumentor counting the CPU seconds of its own callbacks (the tree
    read included) in `ours`: pymemcg's share of a collection; `last`: the
    last collection's MetricsData."""
    from pymemcg.otel import MemcgInstrumentor

    class Timed(MemcgInstrumentor):
        ours = 0.0
        last = None
        shares: List[float]

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.shares = []

        def _callback(self, instrument, observe):
            inner = super()._callback(instrument, observe)

            def timed(options):
                c0 = time.process_time()
                out = list(inner(options))
                self.ours += time.process_time() - c0
                return out
            return timed
    return Timed


def measure_embedding(cgroups: BenchCgroups, rounds: int, size: int = EMBED_SIZE
                      ) -> EmbedResult:
    """Each way of embedding pymemcg, BPF and text backends, taking turns."""
    from prometheus_client import generate_latest as client_latest
    from prometheus_client.openmetrics.exposition import generate_latest as client_om

    from pymemcg import prometheus as pm
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:
        MeterProvider = None
        log("embedding: no OpenTelemetry rows (opentelemetry-sdk is not installed)")
    root = cgroups.path(f"embed{size}")
    opened: List[object] = []
    try:
        make_tree(root, size)
        methods: Dict[str, tuple] = {}
        calls: Dict[str, int] = {}
        instrumentors = {}
        same = None
        for backend in ("bpf", "text"):
            collector = pm.MemcgCollector(root, backend=backend, min_interval=0)
            opened.append(collector)
            registry = _daemon_registry(collector)
            if backend == "bpf":
                same = _same_as_client(collector, registry, lambda: pm.generate_latest(registry))
            cheap = max(1, EMBED_WORK // size) if backend == "bpf" else 1
            for method, fn, n in (
                    ("exposition", collector.exposition_chunks, cheap),
                    ("client", lambda r=registry: client_latest(r), 1),
                    ("drop-in", lambda r=registry: pm.generate_latest(r), cheap),
                    ("client-om", lambda r=registry: client_om(r), 1),
                    ("drop-in-om", lambda r=registry: pm.exposition_chunks(r, pm.OPENMETRICS),
                     cheap)):
                fn()                                   # the shape's labels are made here
                methods[f"{method}/{backend}"] = (fn, n)
                calls[f"{method}/{backend}"] = n
            if MeterProvider is None:
                continue
            for method, stats in OTEL_METHODS:
                reader = InMemoryMetricReader()
                provider = MeterProvider(metric_readers=[reader])
                inst = _timed_instrumentor()(root, stats=stats, backend=backend)
                inst.instrument(meter_provider=provider)
                opened.append((inst, provider))
                instrumentors[f"{method}/{backend}"] = inst
                reader.get_metrics_data()
                methods[f"{method}/{backend}"] = (_collection(inst, reader), 1)
                calls[f"{method}/{backend}"] = 1
        log(f"embedding, {size:,} cgroups: {rounds} rounds of {calls}")
        for inst in instrumentors.values():
            inst.shares.clear()
        costs = interleaved(methods, rounds)
        otel_ours, points = {}, {}
        for key, inst in instrumentors.items():
            otel_ours[key] = statistics.median(inst.shares)
            points[key] = _points(inst.last)
        return EmbedResult(size, costs, calls, otel_ours, points, same)
    finally:
        for thing in opened:
            if isinstance(thing, tuple):
                thing[0].uninstrument()
                thing[1].shutdown()
            else:
                thing.close()
        failed = remove_tree(root)
        if failed:
            log("could NOT remove: " + "; ".join(failed))


def _collection(inst, reader) -> Callable[[], None]:
    """One collection of `reader`, pymemcg's share of it appended to
    inst.shares (a median of them is robust to a collector's pause falling
    in one of our callbacks)."""
    def collect() -> None:
        before = inst.ours
        inst.last = reader.get_metrics_data()
        inst.shares.append(inst.ours - before)
    return collect


def _points(data) -> int:
    """Data points in one collection's MetricsData."""
    return sum(len(m.data.data_points) for rm in data.resource_metrics
               for sm in rm.scope_metrics for m in sm.metrics)


def report_embedding(r: EmbedResult, rounds: int) -> List[str]:
    """The embedding table: each way, BPF against text in the same rounds."""
    lines = [
        "### Embedding in a daemon",
        "",
        f"{r.size:,} cgroups (empty ones, default stats plus cAdvisor's metrics), CPU time "
        f"of this process per scrape or collection, median of {rounds} rounds in which "
        "every method on both backends takes its turn. The daemon's registry holds a "
        "counter and a histogram of its own beside the collector. "
        f"Drop-in read the same as prometheus_client's own exposition: {r.same_as_client}.",
        "",
        "| path | BPF | text | text ÷ BPF |",
        "|---|---:|---:|---:|",
    ]
    for method, what in EMBED_METHODS:
        b = r.costs.get(f"{method}/bpf")
        t = r.costs.get(f"{method}/text")
        if b is None or t is None:
            continue
        lines.append(f"| {what} | {_ms(b['cpu'])} | {_ms(t['cpu'])} | "
                     f"{t['cpu'] / b['cpu']:.1f}× |")
    if r.otel_ours:
        lines += [
            "",
            "Where an OpenTelemetry collection's time goes: *pymemcg* is the "
            "instrumentor's callbacks (the tree read, the values, one Observation per "
            "data point), *SDK* the rest (opentelemetry-sdk turning each observation into "
            "a Measurement, its attributes cleaned and hashed, aggregation, exemplars).",
            "",
            "| | data points | pymemcg | SDK | SDK per data point |",
            "|---|---:|---:|---:|---:|",
        ]
        for method, stats in OTEL_METHODS:
            for backend in ("bpf", "text"):
                key = f"{method}/{backend}"
                if key not in r.otel_ours:
                    continue
                ours, points = r.otel_ours[key], r.points[key]
                sdk = r.costs[key]["cpu"] - ours
                what = "default" if not stats else "with memcg.*"
                lines.append(f"| {what}, {'BPF' if backend == 'bpf' else 'text'} | "
                             f"{points:,} | {_ms(ours)} | {_ms(sdk)} | "
                             f"{sdk / points * 1e6:.1f} µs |")
    lines.append("")
    return lines


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
                 rounds: int, embedding: Optional[EmbedResult] = None) -> List[str]:
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
    if embedding is not None:
        lines += report_embedding(embedding, rounds)
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
