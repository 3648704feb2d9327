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
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

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
from .cadvisor import COUNTER, GAUGE, Getter, cadvisor_metrics, getters, needed_local_stats, \
    needed_stats
from .cgroupfs import memory_mount
from .containers import CgroupIdentity, identify
from .decode import Snapshot
from .errors import NoMemoryController, UnknownStat
from .reader import Reader


_log = logging.getLogger(__name__)

#: who a cgroup is (pymemcg.containers), as labels after id / cgroup, where known
IDENTITY_LABELS = ("pod_uid", "container_id", "qos", "unit")

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
                local_snap = self.local_reader.read_tree(self.root) if self.local_reader else None
                self.last_error = None
            except Error as e:  # the root went away, ...: say so, keep serving
                snap, local_snap, self.last_error = None, None, str(e)
                _log.warning("pymemcg: scrape of %s failed: %s", self.root, e)
            took = time.perf_counter() - start
        return iter(self._families(snap, took, failed=snap is None, local_snap=local_snap))

    # --- building the families ---

    def _families(self, snap: Optional[Snapshot], took: float, failed: bool,
                  local_snap: Optional[Snapshot] = None) -> List[Metric]:
        families: List[Metric] = []
        records = [r for r in snap.records if r.path is not None] if snap is not None else []
        rows = [(r.path, r.get, identify(r.path)) for r in records]
        with_local = getters(records, local_snap.records if local_snap is not None else None)
        combined = {r.path: get for r, get in zip(records, with_local)}
        # cAdvisor exports nothing for what it skips; memcg_* are every cgroup read
        cadvisor_rows = [row for row in rows if not row[2].cadvisor_skips]

        names, cadvisor = _identity_labels(cadvisor_rows)
        for cm in self.cadvisor:
            fam = _family(cm.name, cm.type, cm.help, ["id", *names, *cm.extra_labels])
            for (path, get, _), ident in zip(cadvisor_rows, cadvisor):
                for extra, value in cm.values(combined[path]):
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
        if self.local_reader is not None:
            self.local_reader.close()

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
    """http(s)://ADDR:PORT/metrics of a bound server (the real port when 0 was
    asked; https once pymemcg.web_config.secure gave it TLS)."""
    addr, port = server.server_address[:2]
    if addr in ("::", "0.0.0.0"):
        addr = "localhost"
    elif ":" in addr:
        addr = f"[{addr}]"
    return f"{getattr(server, 'scheme', 'http')}://{addr}:{port}/metrics"
