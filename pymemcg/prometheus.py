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
  CADVISOR_METRICS below for the exact definition of each;
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

A value this host cannot read exactly (pymemcg says "unavailable", e.g. the
cgroup v1 root's usage) is left out of the scrape, never exported as 0.
cAdvisor's names describe hierarchical values (its v1 reads `total_*`), so
they are exported only when the reader is hierarchical (local=False).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from .errors import Error


class PrometheusClientMissing(Error, ImportError):
    """prometheus_client is not installed (the `prometheus` extra)."""


class ListenError(Error, OSError):
    """--listen names an address that cannot be parsed or bound."""


try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise PrometheusClientMissing(
        f"prometheus_client is not installed ({e}): install the extra with "
        f"`pip install 'pymemcg[prometheus]'`") from None

from . import __version__, catalog
from .cgroupfs import memory_mount
from .containers import CgroupIdentity, identify
from .decode import Snapshot
from .errors import NoMemoryController, UnknownStat
from .reader import Reader

GAUGE, COUNTER, UNTYPED = "gauge", "counter", "untyped"

_log = logging.getLogger(__name__)

#: cAdvisor treats limits above 2^62 bytes as "unlimited" and exports 0
UNLIMITED_ABOVE = 1 << 62

#: who a cgroup is (pymemcg.containers), as labels after id / cgroup, where known
IDENTITY_LABELS = ("pod_uid", "container_id", "qos", "unit")

Getter = Callable[[str], Optional[int]]


@dataclass(frozen=True)
class CadvisorMetric:
    """One cAdvisor metric: its name, type, help, and how pymemcg computes it."""

    name: str
    type: str
    help: str
    needs: Tuple[str, ...]                      # stats read for it
    # cgroup's stats -> [(extra label values, value)]; a missing input gives []
    values: Callable[[Getter], List[Tuple[Tuple[str, ...], int]]]
    extra_labels: Tuple[str, ...] = ()
    versions: Tuple[int, ...] = (1, 2)          # cgroup versions it exists on


def _one(stat: str) -> Callable[[Getter], List[Tuple[Tuple[str, ...], int]]]:
    def values(get: Getter):
        v = get(stat)
        return [] if v is None else [((), v)]
    return values


def _working_set(get: Getter):
    # cAdvisor: usage - (v1 total_inactive_file | v2 inactive_file), clamped at 0
    usage, inactive = get("usage"), get("inactive_file")
    if usage is None or inactive is None:
        return []
    return [((), max(usage - inactive, 0))]


def _spec_limit(get: Getter):
    limit = get("limit")
    if limit is None:
        return []
    return [((), 0 if limit > UNLIMITED_ABOVE else limit)]


def _failures(get: Getter):
    # cAdvisor exports the same memory.stat pgfault/pgmajfault for both scopes
    out = []
    for stat in ("pgfault", "pgmajfault"):
        v = get(stat)
        if v is not None:
            out += [((stat, "container"), v), ((stat, "hierarchy"), v)]
    return out


def cadvisor_metrics(cgroup_version: int) -> List[CadvisorMetric]:
    """cAdvisor's memory metrics that pymemcg can serve with the same meaning
    (cAdvisor: container/libcontainer/handler.go setMemoryStats and
    metrics/prometheus.go)."""
    swap = "swap" if cgroup_version == 1 else "swap_usage"
    metrics = [
        CadvisorMetric("container_memory_usage_bytes", GAUGE,
                       "Current memory usage in bytes, including all memory regardless of when "
                       "it was accessed (memory.usage_in_bytes / memory.current)",
                       ("usage",), _one("usage")),
        CadvisorMetric("container_memory_max_usage_bytes", GAUGE,
                       "Maximum memory usage recorded in bytes (memory.max_usage_in_bytes / "
                       "memory.peak)", ("peak",), _one("peak")),
        CadvisorMetric("container_memory_working_set_bytes", GAUGE,
                       "Current working set in bytes: usage - inactive_file, clamped at 0",
                       ("usage", "inactive_file"), _working_set),
        CadvisorMetric("container_memory_rss", GAUGE,
                       "Size of RSS in bytes (memory.stat anon; v1 total_rss)",
                       ("anon",), _one("anon")),
        CadvisorMetric("container_memory_cache", GAUGE,
                       "Number of bytes of page cache memory (memory.stat file; v1 total_cache)",
                       ("file",), _one("file")),
        CadvisorMetric("container_memory_swap", GAUGE,
                       "Container swap usage in bytes (v1 memory.stat total_swap; v2 "
                       "memory.swap.current)", (swap,), _one(swap)),
        CadvisorMetric("container_memory_mapped_file", GAUGE,
                       "Size of memory mapped files in bytes (memory.stat file_mapped; v1 "
                       "total_mapped_file)", ("file_mapped",), _one("file_mapped")),
        CadvisorMetric("container_memory_kernel_usage", GAUGE,
                       "Size of kernel memory allocated in bytes (memory.stat kernel)",
                       ("kernel",), _one("kernel")),
        CadvisorMetric("container_memory_total_active_file_bytes", GAUGE,
                       "Current total active file in bytes (memory.stat active_file; v1 "
                       "total_active_file)", ("active_file",), _one("active_file")),
        CadvisorMetric("container_memory_total_inactive_file_bytes", GAUGE,
                       "Current total inactive file in bytes (memory.stat inactive_file; v1 "
                       "total_inactive_file)", ("inactive_file",), _one("inactive_file")),
        # a counter in cAdvisor; exposed untyped so that the sample keeps cAdvisor's
        # name (prometheus_client would name a counter's sample ..._failcnt_total)
        CadvisorMetric("container_memory_failcnt", UNTYPED,
                       "Number of memory usage hits limits (memory.failcnt, a counter)",
                       ("failcnt",), _one("failcnt"), versions=(1,)),
        CadvisorMetric("container_memory_failures_total", COUNTER,
                       "Cumulative count of memory allocation failures (memory.stat pgfault and "
                       "pgmajfault; both scopes carry the same count, as in cAdvisor)",
                       ("pgfault", "pgmajfault"), _failures, ("failure_type", "scope")),
        CadvisorMetric("container_oom_events_total", COUNTER,
                       "Count of out of memory events observed for the container (OOM kills: "
                       "memory.events oom_kill)", ("oom_kill",), _one("oom_kill")),
        CadvisorMetric("container_spec_memory_limit_bytes", GAUGE,
                       "Memory limit for the container (0 when unlimited)",
                       ("limit",), _spec_limit),
    ]
    return [m for m in metrics if cgroup_version in m.versions]


def _needed_stats(selected: Sequence[str], cadvisor: Sequence[CadvisorMetric]) -> List[str]:
    out = list(selected)
    for m in cadvisor:
        for s in m.needs:
            if s not in out:
                out.append(s)
    return out


class MemcgCollector:
    """A prometheus_client collector: one snapshot of `root` per scrape.

    root: the cgroup directory whose subtree is exported (default: the
    memory hierarchy's mountpoint). stats: the raw stats exported as
    memcg_<stat> (default pymemcg.DEFAULT_STATS). cadvisor: also export
    cAdvisor's container_* metrics (default: when local is False).
    reader: an open pymemcg.Reader to use instead of making one; it must
    select every stat needed (see `stats_needed`) and is not closed here.
    Otherwise the collector makes its own Reader (the BPF program loads
    then) and `close()` unloads it.
    """

    def __init__(self, root: Optional[str] = None, stats: Sequence[str] = catalog.DEFAULT_STATS,
                 *, local: bool = False, backend: str = "auto", cadvisor: Optional[bool] = None,
                 reader: Optional[Reader] = None, flush: bool = False) -> None:
        mount = memory_mount()
        if mount is None:
            raise NoMemoryController("no cgroup hierarchy on this host has the memory "
                                     "controller: mount one, or run where one is mounted")
        self.root = root if root is not None else mount.mountpoint
        self.cgroup_version = mount.version
        self.selected = list(stats)
        if reader is not None:
            local = reader.local
        self.local = local
        if cadvisor is None:
            cadvisor = not local
        self.cadvisor = cadvisor_metrics(mount.version) if cadvisor else []
        self.stats_needed = _needed_stats(self.selected, self.cadvisor)
        self._own_reader = reader is None
        if reader is None:
            reader = Reader(stats=self.stats_needed, local=local, backend=backend, flush=flush)
        else:
            missing = [s for s in self.stats_needed if s not in reader.stats]
            if missing:
                raise UnknownStat(f"the reader does not select {missing}, which these metrics "
                                  f"need: make it with stats={self.stats_needed}")
        self.reader = reader
        self._lock = threading.Lock()
        self.scrapes = 0
        self.last_error: Optional[str] = None   # the last scrape's error, if it failed

    # --- prometheus_client protocol ---

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples: registering costs no read."""
        return list(self._families(None, 0.0, failed=False))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            start = time.perf_counter()
            self.scrapes += 1
            try:
                snap = self.reader.read_tree(self.root)
                self.last_error = None
            except Error as e:  # the root went away, ...: say so, keep serving
                snap, self.last_error = None, str(e)
                _log.warning("pymemcg: scrape of %s failed: %s", self.root, e)
            took = time.perf_counter() - start
        return iter(self._families(snap, took, failed=snap is None))

    # --- building the families ---

    def _families(self, snap: Optional[Snapshot], took: float, failed: bool) -> List[Metric]:
        families: List[Metric] = []
        records = [r for r in snap.records if r.path is not None] if snap is not None else []
        rows = [(r.path, r.get, identify(r.path)) for r in records]
        # cAdvisor exports nothing for what it skips; memcg_* are every cgroup read
        cadvisor_rows = [row for row in rows if not row[2].cadvisor_skips]

        names, cadvisor = _identity_labels(cadvisor_rows)
        for cm in self.cadvisor:
            fam = _family(cm.name, cm.type, cm.help, ["id", *names, *cm.extra_labels])
            for (path, get, _), ident in zip(cadvisor_rows, cadvisor):
                for extra, value in cm.values(get):
                    fam.add_metric([path, *ident, *extra], value)
            families.append(fam)

        names, raw = _identity_labels(rows)
        for name in self.selected:
            stat = catalog.STATS[name]
            counter = stat.unit == catalog.COUNT
            help_text = f"{stat.meaning} ({'a count' if counter else 'bytes'}; pymemcg stat " \
                        f"{name}{', local' if self.local else ''})"
            fam = _family(f"memcg_{name}", COUNTER if counter else GAUGE, help_text,
                          ["cgroup", *names])
            for (path, get, _), ident in zip(rows, raw):
                v = get(name)
                if v is not None:
                    fam.add_metric([path, *ident], v)
            families.append(fam)

        info = GaugeMetricFamily("pymemcg_info", "pymemcg version, backend and host; value 1",
                                 labels=["version", "backend", "cgroup_version", "kernel", "root"])
        cgroups = GaugeMetricFamily("pymemcg_cgroups", "cgroups in the last snapshot")
        duration = GaugeMetricFamily("pymemcg_snapshot_duration_seconds",
                                     "time the last snapshot (one tree read) took")
        error = GaugeMetricFamily("pymemcg_scrape_error",
                                  "1 if the last scrape could not read the cgroups, else 0")
        if snap is not None or failed:
            info.add_metric([__version__, self.reader.backend, str(self.cgroup_version),
                             os.uname().release, self.root], 1)
            error.add_metric([], 1 if failed else 0)
        if snap is not None:
            cgroups.add_metric([], len(snap))
            duration.add_metric([], took)
        families += [info, cgroups, duration, error]
        return families

    def close(self) -> None:
        """Close the Reader if this collector made it."""
        if self._own_reader:
            self.reader.close()

    def __enter__(self) -> "MemcgCollector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class UntypedMetricFamily(Metric):
    """An untyped family whose samples keep the family's name exactly."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, "unknown")
        self._labelnames = tuple(labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labelnames, labels)), value)


def _identity_labels(rows: Sequence[Tuple[str, Getter, CgroupIdentity]]
                     ) -> Tuple[List[str], List[Tuple[str, ...]]]:
    """The identity labels of one scrape and each row's values for them.

    As cAdvisor (metrics/prometheus.go collectContainersInfo): the label
    names are the union over every exported cgroup, and a cgroup without one
    carries it with the value "" (which PromQL reads as no label); a scrape
    where no cgroup has a pod, container, QoS class or unit has none of
    these labels."""
    names = [n for n in IDENTITY_LABELS if any(getattr(row[2], n) for row in rows)]
    return names, [tuple(getattr(row[2], n) or "" for n in names) for row in rows]


def _family(name: str, mtype: str, help_text: str, labels: List[str]) -> Metric:
    if mtype == GAUGE:
        return GaugeMetricFamily(name, help_text, labels=labels)
    if mtype == COUNTER:
        return CounterMetricFamily(name, help_text, labels=labels)
    return UntypedMetricFamily(name, help_text, labels)


# --- the HTTP exporter (`pymemcg export`) ---

def parse_listen(text: str) -> Tuple[str, int]:
    """'127.0.0.1:9756' / ':9756' (every address) / '[::1]:9756' / 'host:0' (a free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"--listen {text!r}: give ADDR:PORT, e.g. 127.0.0.1:9756, :9756 "
                          f"(every address) or [::1]:9756")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def make_server(collector: MemcgCollector, host: str, port: int):
    """An HTTP server (a thread per request) that serves the collector on every
    path, /metrics included. Bound, not serving yet: call serve_forever()."""
    import socket
    import socketserver
    from http.server import ThreadingHTTPServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import MetricsHandler

    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    handler = MetricsHandler.factory(registry)

    # "" (every address): IPv6 with IPv4 mapped in where the host has IPv6
    family = socket.AF_INET6 if (":" in host or (host == "" and socket.has_ipv6)) \
        else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

        def server_bind(self):
            if self.address_family == socket.AF_INET6 and host == "":
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            # HTTPServer.server_bind would resolve the host name (getfqdn): skip it
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = host or "*", self.server_address[1]

    try:
        try:
            return Server((host, port), handler)
        except OSError:
            if host != "" or family != socket.AF_INET6:
                raise
            Server.address_family = socket.AF_INET   # a host without IPv6
            return Server(("", port), handler)
    except OSError as e:
        raise ListenError(f"cannot listen on {host or '*'}:{port} ({e.strerror or e}): choose "
                          f"another --listen address or port") from None


def listen_url(server) -> str:
    """http://ADDR:PORT/metrics of a bound server (the real port when 0 was asked)."""
    addr, port = server.server_address[:2]
    if addr in ("::", "0.0.0.0"):
        addr = "localhost"
    elif ":" in addr:
        addr = f"[{addr}]"
    return f"http://{addr}:{port}/metrics"
