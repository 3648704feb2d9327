"""Prometheus metrics for memory cgroups: a prometheus_client collector.

    from prometheus_client import REGISTRY
    from pymemcg.prometheus import MemcgCollector, start_http_server

    REGISTRY.register(MemcgCollector())          # the whole memory hierarchy
    start_http_server(9756)

or, from the shell, `pymemcg export --listen 127.0.0.1:9756`. Needs the
`prometheus` extra (`pip install 'pymemcg[prometheus]'`).

generate_latest, make_wsgi_app, make_asgi_app, start_http_server and
write_to_textfile here take prometheus_client's arguments and serve a whole
registry, the daemon's other metrics included, writing each MemcgCollector
with pymemcg's writer (pymemcg.exposition) instead of a Python object per
sample: prometheus_client's functions of those names serve the same
metrics at many times the CPU per scrape (docs/prometheus.md, "In a
daemon's own registry").

Every scrape reads the subtree once (one `Reader.read_tree`, one BPF
iterator session) and exposes, for each cgroup:

- the metrics cAdvisor exports, under cAdvisor's names and definitions,
  with an `id` label holding the cgroup path relative to the hierarchy root
  as cAdvisor does (`id="/"`, `id="/system.slice/foo.service"`); see
  pymemcg.cadvisor for the exact definition of each;
- every selected raw stat as `memcg_<stat>` with a `cgroup` label (the same
  path): sizes as gauges in bytes, cumulative counts as counters (exposed
  with the `_total` suffix Prometheus client libraries give counters);
  pressure in Prometheus' base units, named for them
  (pymemcg.exposition.raw_metric_name): memcg_pressure_some_seconds_total
  (a counter, from pressure_some_total_us), memcg_pressure_some_avg10_ratio
  (a gauge, 0 to 1, from pressure_some_avg10_x100);
- on both, who the cgroup is, read from its path (pymemcg.containers):
  `pod_uid`, `container_id`, `qos`, `unit`. As cAdvisor does with its own
  labels, a scrape carries a label when any of its cgroups has it, and a
  cgroup without it has the value "".

The cAdvisor metrics leave out what cAdvisor does not export (names ending
in ".mount"; CRI-O's sandbox cgroup under the systemd driver); `memcg_*`
cover every cgroup read.

A path label (`id`, `cgroup`, pymemcg_info's `root`) holds the path's text
form (pymemcg.names.escape): the path itself for every name that is valid
UTF-8 without "%" or control characters, "%HH" for each other byte, so
that any name can be exported and no two share a label value.

A value this host cannot read exactly (pymemcg says "unavailable", e.g. the
cgroup v1 root's usage) is left out of the scrape, never exported as 0.
cAdvisor's names describe hierarchical values (its v1 reads `total_*`), so
they are exported only when the reader is hierarchical (local=False).
"""

from __future__ import annotations

import inspect
import logging
import os
import ssl
import threading
import zlib
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, Iterable, Iterator, List,
                    Optional, Sequence, Tuple)
from urllib.parse import parse_qs, urlsplit

from .errors import Error, PrometheusClientMissing, quoted
from .errors import ListenError as ListenError  # importable from here as it always was


try:
    from prometheus_client import exposition as _client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.openmetrics import exposition as _client_openmetrics
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
    from prometheus_client.samples import Sample
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise PrometheusClientMissing(
        f"prometheus_client is not installed ({e}): install the extra with "
        f"`pip install 'pymemcg[prometheus]'`") from None

from . import __version__, catalog, forksafe
from .cadvisor import COUNTER, GAUGE, cadvisor_metrics, needed_local_stats, needed_stats
from .cgroupfs import memory_mount
from .decode import Snapshot
from .exposition import (CGROUPS_HELP, CONTENT_TYPE, DEFAULT_MIN_INTERVAL, DURATION_HELP,
                         ERROR_HELP, INFO_HELP, SharedSnapshot, Taken, TextWriter, TreeLabels,
                         exposed_name, interval_seconds, local_columns, metric_inputs,
                         picked, raw_family, raw_metric_name, raw_metric_values)
from .errors import InvalidArgument, NoMemoryController, StatUnavailable, UnknownStat
from .names import escape
from .exposition import header, label_pairs, openmetrics_header
from .oom_metrics import DEFAULT_RETENTION, HELP as OOM_HELP, LOST_HELP as OOM_LOST_HELP
from .oom_metrics import LOST_NAME as OOM_LOST_NAME, NAME as OOM_NAME
from .oom_metrics import ERROR_HELP as OOM_ERROR_HELP, ERROR_NAME as OOM_ERROR_NAME
from .server_limits import Limits

if TYPE_CHECKING:
    from .http_server import BoundedHTTPServer, Request, Response

# a row's labels, shared by its samples
LabelDicts = List[Dict[str, str]]
from .reader import Reader


_log = logging.getLogger(__name__)


class MemcgCollector:
    """A prometheus_client collector: one snapshot of `root` per scrape
    interval.

    root: the cgroup directory whose subtree is exported (default: the
    memory hierarchy's mountpoint). stats: the raw stats exported as
    memcg_<stat> (default pymemcg.DEFAULT_STATS). cadvisor: also export
    cAdvisor's container_* metrics (default: when local is False).
    numa: also cAdvisor's container_memory_numa_pages (with cadvisor), a
    series per type, scope and node with memory (docs/numa.md).
    reader: an open pymemcg.Reader to use instead of making one; it must
    select every stat needed (see `stats_needed`) and is not closed here.
    Otherwise the collector makes its own Reader (the BPF program loads
    then) and `close()` unloads it. min_interval: seconds during which
    scrapes share one tree read (0: a read per scrape; not finite seconds
    >= 0: BadInterval); see pymemcg.exposition.SharedSnapshot.
    oom_events: container_oom_events_total from OOM kill events (with
    cadvisor; docs/prometheus.md), kept for oom_retention seconds after a
    cgroup is gone, through a kernel ring of oom_ring_pages pages (a power
    of two; default as pymemcg.oom.OomEvents; else BadRingSize).

    Ways to serve it: register it in a prometheus_client registry
    (`collect()`), or take `exposition()`, the same metrics as text-format
    bytes written without prometheus_client's objects (what `pymemcg
    export` serves; much cheaper per scrape). A registry served by this
    module's generate_latest / make_wsgi_app / make_asgi_app /
    start_http_server gets both: the registry's other metrics as
    prometheus_client writes them, this collector's through exposition().
    """

    def __init__(self, root: Optional[str] = None, stats: Sequence[str] = catalog.DEFAULT_STATS,
                 *, local: bool = False, backend: str = "auto", cadvisor: Optional[bool] = None,
                 reader: Optional[Reader] = None, flush: bool = False,
                 min_interval: float = DEFAULT_MIN_INTERVAL, oom_events: bool = False,
                 oom_retention: float = DEFAULT_RETENTION, oom_ring_pages: Optional[int] = None,
                 numa: bool = False) -> None:
        mount = memory_mount()
        if mount is None:
            raise NoMemoryController("no cgroup hierarchy on this host has the memory "
                                     "controller: mount one, or run where one is mounted")
        min_interval = interval_seconds("min_interval", min_interval)  # before any BPF loads
        self.root = root if root is not None else mount.mountpoint
        self.cgroup_version = mount.version
        self.selected = list(stats)
        if reader is not None:
            local = reader.local
        self.local = local
        if cadvisor is None:
            cadvisor = not local
        for asked, metric in ((oom_events, "oom_events counts container_oom_events_total"),
                              (numa, "numa adds container_memory_numa_pages")):
            if asked and not cadvisor:
                raise InvalidArgument(f"{metric}, one of cAdvisor's metrics, which "
                                      "cadvisor=False (the default with local=True) leaves "
                                      "out: pass cadvisor=True, or leave it out")
        if oom_ring_pages is not None and not oom_events:
            raise InvalidArgument("oom_ring_pages sizes the ring of oom_events: pass "
                                  "oom_events=True, or no oom_ring_pages")
        # --- NUMA: a series per type, scope and node, only when asked ---
        nodes = None
        if numa:
            from .numa import memory_nodes, nodes_why
            nodes = memory_nodes()
            if nodes_why(nodes):
                raise StatUnavailable(f"container_memory_numa_pages: {nodes_why(nodes)}")
        self.cadvisor = cadvisor_metrics(mount.version, nodes) if cadvisor else []
        # oom_events: container_oom_events_total from OOM kill events
        # (pymemcg.oom_metrics), not from the cgroups' own oom_kill counts
        if oom_events:
            self.cadvisor = [m for m in self.cadvisor if m.name != OOM_NAME]
        self.stats_needed = needed_stats(self.selected, self.cadvisor)
        self._own_reader = reader is None
        if reader is None:
            reader = Reader(stats=self.stats_needed, local=local, backend=backend, flush=flush,
                            for_trees=True)
        else:
            missing = [s for s in self.stats_needed if s not in reader.stats]
            if missing:
                raise UnknownStat(f"the reader does not select {missing}, which these metrics "
                                  f"need: make it with stats={self.stats_needed}")
        self.reader = reader
        # cAdvisor reads some values from the cgroup's own counts (pymemcg.cadvisor
        # local_needs): a local Reader of its own reads those in the same scrape
        local_stats = needed_local_stats(self.cadvisor)
        try:
            self.local_reader = Reader(stats=local_stats, local=True, backend=backend,
                                       flush=flush, for_trees=True) if local_stats else None
        except BaseException:
            if self._own_reader:
                reader.close()
            raise
        local_reader = self.local_reader
        self.shared = SharedSnapshot(
            lambda root: self.reader.read_tree(root), self.root, min_interval,
            on_error=self._said_error,
            read_local=(lambda root: local_reader.read_tree(root)) if local_reader else None)
        self.oom_rows = None
        if oom_events:
            from .oom_metrics import OomCounts, Rows
            try:
                self.oom_rows = Rows(OomCounts(retention=oom_retention, ring_pages=oom_ring_pages),
                                     self.root[len(mount.mountpoint):] or "/")
            except BaseException:
                self.close()
                raise
        self._raw = [(name, *raw_family(name, self.local)) for name in self.selected]
        self.writer = TextWriter(self._raw, self.cadvisor, self._info_labels())
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")
        self._shape_cache: Optional[Tuple[TreeLabels, LabelDicts, LabelDicts]] = None
        self._openmetrics_writer: Optional[TextWriter] = None
        self.scrapes = 0

    @property
    def min_interval(self) -> float:
        return self.shared.min_interval

    @property
    def walks(self) -> int:
        """Tree reads made so far (scrapes within min_interval share one)."""
        return self.shared.walks

    @property
    def last_error(self) -> Optional[str]:
        """The last tree read's error, if it failed."""
        last = self.shared._last
        return last.error if last is not None else None

    def _said_error(self, e: Error) -> None:
        _log.warning("pymemcg: scrape of %s failed: %s", self.root, e)

    def _info_labels(self) -> Dict[str, str]:
        return {"version": __version__, "backend": self.reader.backend,
                "cgroup_version": str(self.cgroup_version), "kernel": os.uname().release,
                "root": escape(self.root)}

    def take(self) -> Taken:
        """The tree read this scrape uses (shared within min_interval)."""
        with self._lock:
            self.scrapes += 1
        return self.shared.read()

    def exposition(self) -> bytes:
        """One scrape in the Prometheus text format (version 0.0.4), UTF-8."""
        return b"".join(self.exposition_chunks())

    def exposition_chunks(self) -> List[bytes]:
        """exposition() in pieces, to be written in order (no copy of the whole)."""
        taken = self.take()
        return self._with_oom(self.writer.render_chunks(taken), taken, header)

    def _with_oom(self, chunks: List[bytes], taken: Taken,
                  head: Callable[[str, str, str], str]) -> List[bytes]:
        """chunks, then container_oom_events_total from events (oom_events),
        and whether their counting has stopped (then without the counts)."""
        if self.oom_rows is None:
            return chunks
        counting = self.oom_rows.counts.stopped is None
        text = [head(OOM_NAME, COUNTER, OOM_HELP)]
        if taken.snapshot is not None and counting:
            text += [f"{OOM_NAME}{{{label_pairs(names, values)}}} {count}\n"
                     for names, values, count in self.oom_rows.rows(taken.snapshot)]
        text.append(head(OOM_LOST_NAME, COUNTER, OOM_LOST_HELP))
        if counting:
            text.append(f"{OOM_LOST_NAME} {self.oom_rows.counts.missed}\n")
        text.append(head(OOM_ERROR_NAME, GAUGE, OOM_ERROR_HELP))
        text.append(f"{OOM_ERROR_NAME} {0 if counting else 1}\n")
        return [*chunks, "".join(text).encode()]

    def openmetrics_chunks(self) -> List[bytes]:
        """exposition_chunks() in the OpenMetrics text format (1.0.0), without
        the "# EOF" line that ends a whole exposition."""
        writer = self._openmetrics_writer
        if writer is None:
            with self._lock:
                if self._openmetrics_writer is None:
                    self._openmetrics_writer = TextWriter(self._raw, self.cadvisor,
                                                          self._info_labels(), openmetrics=True)
                writer = self._openmetrics_writer
        taken = self.take()
        return self._with_oom(writer.render_chunks(taken), taken, openmetrics_header)

    # --- prometheus_client protocol ---

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples: registering costs no read."""
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self.take()))

    # --- building the families ---

    def _shape(self, snap: Snapshot) -> Tuple[TreeLabels, LabelDicts, LabelDicts]:
        """The tree's labels, and each exported row's label dict for memcg_* and
        for cAdvisor's metrics: made once per shape, shared by every sample
        of the row (prometheus_client only reads them). One tuple, replaced
        whole: concurrent scrapes never see one shape's labels with
        another's dicts."""
        cached = self._shape_cache
        if cached is None or not cached[0].same_shape(snap.shared_paths):
            labels = TreeLabels(snap.shared_paths)
            raw_names = ["cgroup", *labels.raw_names]
            cad_names = ["id", *labels.cadvisor_names]
            cached = self._shape_cache = (
                labels, [dict(zip(raw_names, v)) for v in labels.raw_values],
                [dict(zip(cad_names, v)) for v in labels.cadvisor_values])
        return cached

    def _families(self, taken: Optional[Taken]) -> List[Metric]:
        families: List[Metric] = []
        snap = taken.snapshot if taken is not None else None
        if snap is not None:
            labels, raw_dicts, cad_dicts = self._shape(snap)
        if snap is not None and taken is not None and self.cadvisor:
            columns = local_columns(snap, taken.local, self.writer.local_stats)
        for cm in self.cadvisor:
            fam = _family(cm.name, cm.type, cm.help)
            if snap is not None:
                name = exposed_name(cm.name, cm.type)
                needs = metric_inputs(cm)
                cols = [picked(columns[s] if s in columns else snap.column(s),
                               labels.cadvisor_rows) for s in needs]
                samples = fam.samples
                extra_names = cm.extra_labels
                for d, vals in zip(cad_dicts, zip(*cols)):
                    for extra, value in cm.values(dict(zip(needs, vals)).get):
                        samples.append(Sample(name, {**d, **dict(zip(extra_names, extra))}
                                              if extra_names else d, value))
            families.append(fam)
        for stat, mtype, help_text in self._raw:
            fam = _family(raw_metric_name(stat), mtype, help_text)
            if snap is not None:
                name = exposed_name(raw_metric_name(stat), mtype)
                values = raw_metric_values(stat, picked(snap.column(stat), labels.rows))
                fam.samples = [Sample(name, d, v) for d, v in zip(raw_dicts, values)
                               if v is not None]
            families.append(fam)

        if self.oom_rows is not None:
            counting = self.oom_rows.counts.stopped is None
            fam = CounterMetricFamily(OOM_NAME, OOM_HELP)
            if snap is not None and counting:
                fam.samples = [Sample(OOM_NAME, dict(zip(names, values)), count)
                               for names, values, count in self.oom_rows.rows(snap)]
            lost = CounterMetricFamily(OOM_LOST_NAME, OOM_LOST_HELP)
            oom_error = GaugeMetricFamily(OOM_ERROR_NAME, OOM_ERROR_HELP)
            if taken is not None:
                if counting:
                    lost.add_metric([], self.oom_rows.counts.missed)
                oom_error.add_metric([], 0 if counting else 1)
            families += [fam, lost, oom_error]

        info = GaugeMetricFamily("pymemcg_info", INFO_HELP,
                                 labels=["version", "backend", "cgroup_version", "kernel", "root"])
        cgroups = GaugeMetricFamily("pymemcg_cgroups", CGROUPS_HELP)
        duration = GaugeMetricFamily("pymemcg_snapshot_duration_seconds", DURATION_HELP)
        error = GaugeMetricFamily("pymemcg_scrape_error", ERROR_HELP)
        if taken is not None:
            info.add_metric(list(self._info_labels().values()), 1)
            error.add_metric([], 1 if snap is None else 0)
        if snap is not None and taken is not None:
            cgroups.add_metric([], len(snap))
            duration.add_metric([], taken.seconds)
        families += [info, cgroups, duration, error]
        return families

    def close(self) -> None:
        """Close the Reader if this collector made it, and the OOM events."""
        oom_rows = getattr(self, "oom_rows", None)
        if oom_rows is not None:
            oom_rows.counts.close()
        if self._own_reader:
            self.reader.close()
        if self.local_reader is not None:
            self.local_reader.close()

    def __enter__(self) -> "MemcgCollector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _family(name: str, mtype: str, help_text: str) -> Metric:
    """An empty family of prometheus_client's, samples appended directly."""
    if mtype == GAUGE:
        return GaugeMetricFamily(name, help_text)
    if mtype == COUNTER:
        return CounterMetricFamily(name, help_text)
    # untyped: the samples keep the family's name exactly
    return Metric(name, help_text, "unknown")


# --- the HTTP exporter (`pymemcg export`) ---

def parse_listen(text: str) -> Tuple[str, int]:
    """'127.0.0.1:9756' / ':9756' (every address) / '[::1]:9756' / 'host:0' (a free port)."""
    host, sep, port = text.rpartition(":")
    # ASCII digits only: str.isdigit() also takes "²", which int() does not
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ListenError(f"--listen {quoted(text)}: give ADDR:PORT, e.g. 127.0.0.1:9756, :9756 "
                          f"(every address) or [::1]:9756")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        if "\0" in host:
            raise UnicodeError("a NUL")
        host.encode("idna")  # what the socket module makes of a host name
    except UnicodeError:
        raise ListenError(f"--listen {quoted(text)}: {quoted(host)} is not a host name or "
                          f"address: give one such as 127.0.0.1, ::1 or localhost") from None
    return host, int(port)


def make_server(collector: MemcgCollector, host: str, port: int,
                limits: Optional[Limits] = None) -> BoundedHTTPServer:
    """An HTTP server that serves the collector's exposition() on every path,
    /metrics included (gzip when the client accepts it), within `limits`
    (pymemcg.http_server.Limits: timeouts, a connection cap; default
    Limits()). Bound, not serving yet: call serve_forever(). Raises
    ListenError when the address cannot be bound."""
    from .http_server import BoundedHTTPServer

    try:
        return BoundedHTTPServer(host, port, _handler(collector),
                                 limits if limits is not None else Limits())
    except OSError as e:
        raise ListenError(f"cannot listen on {host or '*'}:{port} ({e.strerror or e}): choose "
                          f"another --listen address or port") from None


def _handler(collector: MemcgCollector) -> Callable[[Request], Response]:
    """The function that answers a request (GET or HEAD of any path): one
    scrape. Runs in the server's one scrape thread, so the gzip cache below
    is used by one thread at a time."""
    from .http_server import Response

    # the gzip of the last body, kept while scrapes share that body
    zipped: List[Tuple[Optional[List[bytes]], bytes]] = [(None, b"")]

    def answer(request: Request) -> Response:
        chunks = collector.exposition_chunks()
        headers = [("Content-Type", CONTENT_TYPE)]
        body = chunks
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            plain, packed = zipped[0]
            if plain is not chunks:
                packed = gzipped(chunks)
                zipped[0] = (chunks, packed)
            body = [packed]
            headers.append(("Content-Encoding", "gzip"))
        # one tree read's text (and its gzip) is one held body, however many send it
        return Response(200, headers, body, held=chunks)

    return answer


def gzipped(chunks: Iterable[bytes]) -> bytes:
    """The chunks, in order, as one gzip stream."""
    # level 1: the text's repeated names and labels compress well at the
    # cheapest level already; a higher level costs CPU on every scrape
    z = zlib.compressobj(1, zlib.DEFLATED, 31)   # 31: a gzip stream
    return b"".join([*map(z.compress, chunks), z.flush()])


def listen_url(server: BoundedHTTPServer) -> str:
    """http(s)://ADDR:PORT/metrics of a bound server (the real port when 0 was
    asked; https once pymemcg.web_config.secure gave it TLS)."""
    addr, port = server.server_address[:2]
    if addr in ("::", "0.0.0.0"):
        addr = "localhost"
    elif ":" in addr:
        addr = f"[{addr}]"
    return f"{getattr(server, 'scheme', 'http')}://{addr}:{port}/metrics"


# --- a prometheus_client registry, its MemcgCollectors written by pymemcg ---
#
# prometheus_client's generate_latest formats every sample of every collector
# in Python, a MemcgCollector's too. The functions below take the same
# arguments as prometheus_client's of the same names and give the same
# exposition (family for family, as its parser reads it), writing each
# MemcgCollector of the registry with its own writer (exposition_chunks()) and
# every other collector with prometheus_client, in the registry's order.

#: formats of an exposition
TEXT, OPENMETRICS = "text", "openmetrics"
_EOF = b"# EOF\n"
_client_escapes = "escaping" in inspect.signature(_client.generate_latest).parameters
_openmetrics_latest: Callable[..., bytes] = _client_openmetrics.generate_latest
#: the escaping under which a name of the legacy character set is rewritten
#: (prometheus_client's "dots" doubles every underscore): prometheus_client
#: writes MemcgCollectors then too
_REWRITES_LEGACY = "dots"


class _Run:
    """Collectors of a registry that are not MemcgCollectors, in order: one
    Collector for prometheus_client's expositions."""

    def __init__(self, collectors: List[Collector]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class _Fixed:
    """A Collector of families already made (a registry's target_info)."""

    def __init__(self, families: List[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _parts(registry: Collector) -> List[Collector]:
    """What registry.collect() collects, in its order: each MemcgCollector on
    its own, runs of the other collectors together. A registry that is not a
    plain CollectorRegistry (a subclass that collects its own way, a
    restricted registry, any other Collector) is one part."""
    if isinstance(registry, MemcgCollector) or type(registry) is not CollectorRegistry:
        return [registry]
    # what CollectorRegistry.collect() reads, under its lock as it does
    with registry._lock:
        collectors = list(registry._collector_to_names)
        target: Optional[Metric] = (registry._target_info_metric()  # type: ignore[no-untyped-call]
                                    if registry._target_info else None)
    parts: List[Collector] = []
    run: List[Collector] = [_Fixed([target])] if target is not None else []
    for collector in collectors:
        if isinstance(collector, MemcgCollector):
            if run:
                parts.append(_Run(run))
                run = []
            parts.append(collector)
        else:
            run.append(collector)
    if run:
        parts.append(_Run(run))
    return parts


def exposition_chunks(registry: Collector, fmt: str = TEXT, escaping: str = "underscores",
                      version: str = "1.0.0") -> List[bytes]:
    """The exposition of `registry` in pieces, to be written in order: fmt
    TEXT (the Prometheus text format, as prometheus_client's generate_latest)
    or OPENMETRICS (as prometheus_client.openmetrics.exposition's, "# EOF"
    last); escaping and version as prometheus_client takes them."""
    out: List[bytes] = []
    for part in _parts(registry):
        if isinstance(part, MemcgCollector) and escaping != _REWRITES_LEGACY:
            out += part.openmetrics_chunks() if fmt == OPENMETRICS else part.exposition_chunks()
        elif fmt == OPENMETRICS:
            body = _openmetrics_latest(part, escaping=escaping, version=version) \
                if _client_escapes else _openmetrics_latest(part)
            out.append(body[:-len(_EOF)] if body.endswith(_EOF) else body)
        else:
            out.append(_client.generate_latest(part, escaping) if _client_escapes
                       else _client.generate_latest(part))
    if fmt == OPENMETRICS:
        out.append(_EOF)
    return out


def generate_latest(registry: Collector = REGISTRY, escaping: str = "underscores") -> bytes:
    """prometheus_client.generate_latest: `registry` in the Prometheus text
    format, UTF-8, its MemcgCollectors written by pymemcg."""
    return b"".join(exposition_chunks(registry, TEXT, escaping))


def write_to_textfile(path: str, registry: Collector, escaping: str = "allow-utf-8",
                      tmpdir: Optional[str] = None) -> None:
    """prometheus_client.write_to_textfile (for node_exporter's textfile
    collector): generate_latest(registry, escaping) written to a file beside
    `path` (or in `tmpdir`, on the same file system), then renamed to `path`."""
    where = os.path.join(tmpdir, os.path.basename(path)) if tmpdir is not None else path
    tmppath = f"{where}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmppath, "wb") as f:
            f.writelines(exposition_chunks(registry, TEXT, escaping))
        os.replace(tmppath, path)
    except BaseException:
        if os.path.exists(tmppath):
            os.remove(tmppath)
        raise


def _accepted_type(accepted: str) -> Tuple[str, str, str]:
    """(media type, version, escaping) of one entry of an Accept header, as
    prometheus_client reads them (an unknown escaping is "underscores")."""
    tokens = accepted.split(";")
    version, escaping = None, None      # each: the first one named
    for token in tokens[1:]:
        key, eq, value = token.strip().partition("=")
        if eq and key == "version" and version is None:
            version = value
        elif eq and key == "escaping" and escaping is None:
            escaping = value if value in ("allow-utf-8", "underscores", "dots", "values") \
                else "underscores"
    return tokens[0].strip(), version or "", escaping or "underscores"


def _version_tuple(version: str) -> Tuple[int, ...]:
    try:
        return tuple(int(x) for x in version.split("."))
    except ValueError:
        return ()


def choose_format(accept: Optional[str]) -> Tuple[str, str, str, str]:
    """(format, escaping, version, Content-Type) for a request's Accept
    header, as prometheus_client's choose_encoder chooses: the first entry
    that is OpenMetrics (version 1.0.0 unless a version >= 1.0.0 is named), or
    text/plain with a version >= 1.0.0, in the header's order (q values
    ignored, as prometheus_client does); else the text format 0.0.4."""
    for accepted in (accept or "").split(","):
        mtype, version, escaping = _accepted_type(accepted)
        if not _client_escapes:
            # an older prometheus_client: OpenMetrics 1.0.0 or text 0.0.4, no escaping
            if mtype == "application/openmetrics-text":
                return OPENMETRICS, "underscores", "1.0.0", _client_openmetrics.CONTENT_TYPE_LATEST
            continue
        if mtype == "application/openmetrics-text":
            if not version:
                return OPENMETRICS, "underscores", "1.0.0", _client_openmetrics.CONTENT_TYPE_LATEST
            if _version_tuple(version) >= (1, 0, 0):
                return (OPENMETRICS, escaping, version,
                        f"application/openmetrics-text; version={version}; charset=utf-8; "
                        f"escaping={escaping}")
        elif mtype == "text/plain" and version and _version_tuple(version) >= (1, 0, 0):
            return (TEXT, escaping, "", "text/plain; version=1.0.0; charset=utf-8; "
                    f"escaping={escaping}")
    return TEXT, "underscores", "", CONTENT_TYPE


def _accepts_gzip(accept_encoding: Optional[str]) -> bool:
    return any(e.split(";")[0].strip().lower() == "gzip"
               for e in (accept_encoding or "").split(","))


def _bake(registry: Collector, accept: Optional[str], accept_encoding: Optional[str],
          params: Dict[str, List[str]], disable_compression: bool
          ) -> Tuple[List[Tuple[str, str]], List[bytes]]:
    """(headers, body pieces) of a scrape, as prometheus_client answers one:
    the format the Accept header chooses, `name[]` parameters restricting the
    families (prometheus_client's restricted registry, which pymemcg does not
    write itself; a registry that cannot be restricted, a bare collector, is
    served whole), gzip when accepted and not disabled."""
    fmt, escaping, version, content_type = choose_format(accept)
    if "name[]" in params and isinstance(registry, CollectorRegistry):
        registry = registry.restricted_registry(params["name[]"])
    body = exposition_chunks(registry, fmt, escaping, version)
    headers = [("Content-Type", content_type)]
    if not disable_compression and _accepts_gzip(accept_encoding):
        body = [gzipped(body)]
        headers.append(("Content-Encoding", "gzip"))
    return headers, body


WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], List[bytes]]


def make_wsgi_app(registry: Collector = REGISTRY, disable_compression: bool = False) -> WSGIApp:
    """prometheus_client.make_wsgi_app: a WSGI app serving `registry`, its
    MemcgCollectors written by pymemcg. Answers as prometheus_client's does:
    GET of any path, OPTIONS, 405 for other methods, an empty /favicon.ico."""

    def prometheus_app(environ: Dict[str, Any], start_response: Callable[..., Any]
                       ) -> List[bytes]:
        method = environ["REQUEST_METHOD"]
        headers: List[Tuple[str, str]]
        if method == "OPTIONS":
            status, headers, body = "200 OK", [("Allow", "OPTIONS,GET")], [b""]
        elif method != "GET":
            status, headers = "405 Method Not Allowed", [("Allow", "OPTIONS,GET")]
            body = [f"# HTTP {status}: {method}; use OPTIONS or GET\n".encode()]
        elif environ.get("PATH_INFO") == "/favicon.ico":
            status, headers, body = "200 OK", [], [b""]
        else:
            status = "200 OK"
            headers, chunks = _bake(registry, environ.get("HTTP_ACCEPT"),
                                    environ.get("HTTP_ACCEPT_ENCODING"),
                                    parse_qs(environ.get("QUERY_STRING", "")),
                                    disable_compression)
            # one piece: a WSGI server sets Content-Length only for a one-item body
            body = [b"".join(chunks)]
        start_response(status, headers)
        return body

    return prometheus_app


ASGIApp = Callable[[Dict[str, Any], Callable[[], Awaitable[Dict[str, Any]]],
                    Callable[[Dict[str, Any]], Awaitable[None]]], Awaitable[None]]


def make_asgi_app(registry: Collector = REGISTRY, disable_compression: bool = False) -> ASGIApp:
    """prometheus_client.make_asgi_app: an ASGI app serving `registry`, its
    MemcgCollectors written by pymemcg. The exposition is written in the
    event loop's thread, as prometheus_client's app does."""

    async def prometheus_app(scope: Dict[str, Any],
                             receive: Callable[[], Awaitable[Dict[str, Any]]],
                             send: Callable[[Dict[str, Any]], Awaitable[None]]) -> None:
        if scope.get("type") != "http":
            raise ValueError(f"pymemcg's metrics app serves HTTP, not {scope.get('type')!r}")
        request_headers = scope.get("headers") or []

        def joined(name: str) -> str:
            return ",".join(v.decode("utf8") for k, v in request_headers
                            if k.decode("utf8").lower() == name)
        headers, chunks = _bake(registry, joined("accept"), joined("accept-encoding"),
                                parse_qs(scope.get("query_string", b"").decode("utf8")),
                                disable_compression)
        payload = await receive()
        if payload.get("type") == "http.request":
            # lower case, as the ASGI specification asks of header names
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(k.lower().encode("utf8"), v.encode("utf8"))
                                    for k, v in headers]})
            await send({"type": "http.response.body", "body": b"".join(chunks)})

    return prometheus_app


def _registry_handler(registry: Collector) -> Callable[[Request], Response]:
    """The answer to a request of pymemcg's HTTP server: a scrape of `registry`."""
    from .http_server import Response

    def answer(request: Request) -> Response:
        url = urlsplit(request.target)
        if url.path == "/favicon.ico":
            return Response(200, [], [])
        headers, body = _bake(registry, request.headers.get("Accept"),
                              request.headers.get("Accept-Encoding"), parse_qs(url.query), False)
        # held: the server bounds how many answers' bodies slow readers keep
        return Response(200, headers, body, held=body)

    return answer


def start_http_server(port: int, addr: str = "0.0.0.0", registry: Collector = REGISTRY,
                      certfile: Optional[str] = None, keyfile: Optional[str] = None,
                      client_cafile: Optional[str] = None, client_capath: Optional[str] = None,
                      protocol: int = ssl.PROTOCOL_TLS_SERVER, client_auth_required: bool = False,
                      tls_min_version: Optional[ssl.TLSVersion] = None,
                      tls_max_version: Optional[ssl.TLSVersion] = None,
                      *, limits: Optional[Limits] = None
                      ) -> Tuple[BoundedHTTPServer, threading.Thread]:
    """prometheus_client.start_http_server: serve `registry` on addr:port
    from a daemon thread, its MemcgCollectors written by pymemcg; TLS when
    certfile and keyfile are given (the other arguments as
    prometheus_client takes them). Returns (server, thread);
    server.shutdown() then server.server_close() stop it.

    The server is pymemcg's (pymemcg.http_server: GET and HEAD, bounded in
    time and connections by `limits`, default Limits()), not a thread per
    connection as prometheus_client's. ListenError (an OSError) when the
    address cannot be bound."""
    from .http_server import BoundedHTTPServer

    ctx = None
    if certfile and keyfile:
        ctx = _ssl_context(certfile, keyfile, protocol, client_cafile, client_capath,
                           client_auth_required, tls_min_version, tls_max_version)
    try:
        server = BoundedHTTPServer(addr, port, _registry_handler(registry),
                                   limits if limits is not None else Limits())
    except OSError as e:
        raise ListenError(f"cannot listen on {addr or '*'}:{port} ({e.strerror or e}): choose "
                          f"another address or port") from None
    if ctx is not None:
        server.ssl_context, server.scheme = ctx, "https"
    thread = threading.Thread(target=server.serve_forever, name="pymemcg-metrics", daemon=True)
    thread.start()
    return server, thread


start_wsgi_server = start_http_server


def _ssl_context(certfile: str, keyfile: str, protocol: int, cafile: Optional[str],
                 capath: Optional[str], client_auth_required: bool,
                 tls_min_version: Optional[ssl.TLSVersion],
                 tls_max_version: Optional[ssl.TLSVersion]) -> ssl.SSLContext:
    """The server's TLS context, as prometheus_client's start_http_server makes it."""
    ctx = ssl.SSLContext(protocol=protocol)
    if cafile is not None or capath is not None:
        ctx.load_verify_locations(cafile, capath)
    else:
        ctx.load_default_certs(purpose=ssl.Purpose.CLIENT_AUTH)
    if client_auth_required:
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(certfile=certfile, keyfile=keyfile)
    if tls_min_version is not None:
        ctx.minimum_version = tls_min_version
    if tls_max_version is not None:
        ctx.maximum_version = tls_max_version
    return ctx
