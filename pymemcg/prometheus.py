"""Prometheus metrics for memory cgroups: a prometheus_client collector.

    from prometheus_client import REGISTRY, start_http_server
    from pymemcg.prometheus import MemcgCollector

    REGISTRY.register(MemcgCollector())          # the whole memory hierarchy
    start_http_server(9756)

or, from the shell, `pymemcg export --listen 127.0.0.1:9756`. Needs the
`prometheus` extra (`pip install 'pymemcg[prometheus]'`).

Every scrape reads the subtree once (one `Reader.read_tree`, one BPF
iterator session) and exposes, for each cgroup:

- the metrics cAdvisor exports, under cAdvisor's names and definitions,
  with an `id` label holding the cgroup path relative to the hierarchy root
  as cAdvisor does (`id="/"`, `id="/system.slice/foo.service"`); see
  pymemcg.cadvisor for the exact definition of each;
- every selected raw stat as `memcg_<stat>` with a `cgroup` label (the same
  path): sizes as gauges in bytes, cumulative counts as counters (exposed
  with the `_total` suffix Prometheus client libraries give counters);
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

import logging
import os
import threading
import zlib
from typing import (TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

from .errors import Error, PrometheusClientMissing, quoted
from .errors import ListenError as ListenError  # importable from here as it always was


try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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
                         picked)
from .errors import NoMemoryController, UnknownStat
from .names import escape
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
    reader: an open pymemcg.Reader to use instead of making one; it must
    select every stat needed (see `stats_needed`) and is not closed here.
    Otherwise the collector makes its own Reader (the BPF program loads
    then) and `close()` unloads it. min_interval: seconds during which
    scrapes share one tree read (0: a read per scrape; not finite seconds
    >= 0: BadInterval); see pymemcg.exposition.SharedSnapshot.

    Two ways to serve it: register it in a prometheus_client registry
    (`collect()`), or take `exposition()`, the same metrics as text-format
    bytes written without prometheus_client's objects (what `pymemcg
    export` serves; much cheaper per scrape).
    """

    def __init__(self, root: Optional[str] = None, stats: Sequence[str] = catalog.DEFAULT_STATS,
                 *, local: bool = False, backend: str = "auto", cadvisor: Optional[bool] = None,
                 reader: Optional[Reader] = None, flush: bool = False,
                 min_interval: float = DEFAULT_MIN_INTERVAL) -> None:
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
        self.cadvisor = cadvisor_metrics(mount.version) if cadvisor else []
        self.stats_needed = needed_stats(self.selected, self.cadvisor)
        self._own_reader = reader is None
        if reader is None:
            reader = Reader(stats=self.stats_needed, local=local, backend=backend, flush=flush)
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
                                       flush=flush) if local_stats else None
        except BaseException:
            if self._own_reader:
                reader.close()
            raise
        local_reader = self.local_reader
        self.shared = SharedSnapshot(
            lambda root: self.reader.read_tree(root), self.root, min_interval,
            on_error=self._said_error,
            read_local=(lambda root: local_reader.read_tree(root)) if local_reader else None)
        self._raw = [(name, *self._raw_family(name)) for name in self.selected]
        self.writer = TextWriter(self._raw, self.cadvisor, self._info_labels())
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")
        self._shape_cache: Optional[Tuple[TreeLabels, LabelDicts, LabelDicts]] = None
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

    def _raw_family(self, name: str) -> Tuple[str, str]:
        stat = catalog.STATS[name]
        counter = stat.unit == catalog.COUNT
        help_text = f"{stat.meaning} ({'a count' if counter else 'bytes'}; pymemcg stat " \
                    f"{name}{', local' if self.local else ''})"
        return (COUNTER if counter else GAUGE), help_text

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
        return self.writer.render(self.take())

    def exposition_chunks(self) -> List[bytes]:
        """exposition() in pieces, to be written in order (no copy of the whole)."""
        return self.writer.render_chunks(self.take())

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
            fam = _family(f"memcg_{stat}", mtype, help_text)
            if snap is not None:
                name = exposed_name(f"memcg_{stat}", mtype)
                fam.samples = [Sample(name, d, v) for d, v in
                               zip(raw_dicts, picked(snap.column(stat), labels.rows))
                               if v is not None]
            families.append(fam)

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
        """Close the Reader if this collector made it."""
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
                # level 1: the text's repeated names and labels compress well at
                # the cheapest level already; a higher level costs CPU on every scrape
                z = zlib.compressobj(1, zlib.DEFLATED, 31)   # 31: a gzip stream
                packed = b"".join([*map(z.compress, chunks), z.flush()])
                zipped[0] = (chunks, packed)
            body = [packed]
            headers.append(("Content-Encoding", "gzip"))
        # one tree read's text (and its gzip) is one held body, however many send it
        return Response(200, headers, body, held=chunks)

    return answer


def listen_url(server: BoundedHTTPServer) -> str:
    """http(s)://ADDR:PORT/metrics of a bound server (the real port when 0 was
    asked; https once pymemcg.web_config.secure gave it TLS)."""
    addr, port = server.server_address[:2]
    if addr in ("::", "0.0.0.0"):
        addr = "localhost"
    elif ":" in addr:
        addr = f"[{addr}]"
    return f"{getattr(server, 'scheme', 'http')}://{addr}:{port}/metrics"
