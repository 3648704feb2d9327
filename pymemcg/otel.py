"""OpenTelemetry metrics for memory cgroups: observable instruments over
one snapshot of the hierarchy per collection.

    from opentelemetry.sdk.metrics import MeterProvider
    from pymemcg.otel import MemcgInstrumentor

    provider = MeterProvider(metric_readers=[...])
    MemcgInstrumentor().instrument(meter_provider=provider)

Needs the `otel` extra (`pip install 'pymemcg[otel]'`: opentelemetry-api
only; any SDK or exporter is the application's choice). It follows the
convention of opentelemetry-instrumentation's BaseInstrumentor
(`instrument(meter_provider=...)`, `uninstrument()`,
`is_instrumented_by_opentelemetry`) without depending on that package.

Instruments, after the semantic conventions' container metrics, each
computed with cAdvisor's definition (pymemcg.cadvisor), for every cgroup
cAdvisor would export:

- container.memory.usage, container.memory.working_set,
  container.memory.rss: observable UpDownCounters, unit By;
- container.memory.available: limit - working set, unit By, omitted where
  the cgroup has no limit (as the conventions say);
- container.paging.faults: an observable Counter, unit {fault}, with
  system.paging.fault.type = major (pgmajfault) | minor (pgfault -
  pgmajfault), from cAdvisor's container_memory_failures_total of scope
  "container", as the conventions derive it;

and, for every cgroup read, memcg.<stat> for each raw stat asked for
(`stats`, none by default): sizes as observable UpDownCounters in By,
cumulative counts as observable Counters in {count}; pressure named and
measured in UCUM base units (pymemcg.exposition.otel_raw_name):
memcg.pressure.{some,full}.time, observable Counters in s, and
memcg.pressure.{some,full}.avg{10,60,300}, observable Gauges in 1 (ratios,
0 to 1). The default is the
semantic conventions' instruments alone because the SDK's cost is per
data point (docs/otel.md): each memcg.<stat> adds one point per cgroup.

Attributes: cgroup.path, the path relative to the hierarchy's root ("/",
"/system.slice/foo.service") as text (pymemcg.names.escape: valid UTF-8,
as an exporter's protocol needs, and one value per path); container.id and
k8s.pod.uid where the path says them (pymemcg.containers).

One snapshot per collection: the first callback of a collection reads the
tree (one Reader.read_tree, plus one of a local Reader where cAdvisor's
definitions need the cgroup's own counts), and every other instrument of
that collection observes the same snapshot. A collection starts when an
instrument that has already observed the current snapshot is called again;
`interval` (seconds) is the least time between two reads, so collections
closer together than that share a snapshot.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import (Any, Callable, Collection, Dict, Iterable, List, Optional, Sequence, Set,
                    Tuple, cast)

from .decode import MAX, Value
from .errors import Error, OpenTelemetryMissing


try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation, get_meter
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise OpenTelemetryMissing(
        f"opentelemetry-api is not installed ({e}): install the extra with "
        f"`pip install 'pymemcg[otel]'`") from None

from . import __version__, catalog, forksafe
from .cadvisor import (UNLIMITED_ABOVE, CadvisorMetric, Values, cadvisor_metrics,
                       needed_local_stats, needed_stats)
from .cgroupfs import memory_mount
from .containers import CgroupIdentity, identify
from .decode import Snapshot
from .errors import InvalidArgument, NoMemoryController, UnknownStat
from .exposition import (interval_seconds, local_columns, metric_inputs, otel_raw_name, picked,
                         raw_metric_values)
from .names import escape
from .oom_metrics import DEFAULT_RETENTION, OomCounts, gone_identity, under
from .reader import Reader

_log = logging.getLogger(__name__)

#: the `otel` extra's requirement, as BaseInstrumentor.instrumentation_dependencies says it
INSTRUMENTS = ("opentelemetry-api >= 1.12",)

PAGING_FAULT_TYPE = "system.paging.fault.type"
Attributes = Dict[str, str]


def _attributes(path: str, ident: CgroupIdentity) -> Attributes:
    """A cgroup's attributes: its path as text, and who it is where known."""
    attributes = {"cgroup.path": escape(path)}
    if ident.container_id:
        attributes["container.id"] = ident.container_id
    if ident.pod_uid:
        attributes["k8s.pod.uid"] = ident.pod_uid
    return attributes


class _Shape:
    """What a tree's shape (its list of paths) decides, made once per shape
    and kept across collections while the paths are unchanged: which
    records are observed and each one's attribute dicts. The SDK copies the
    attributes of every observation (opentelemetry.sdk's Measurement cleans
    them into a new mapping), so one dict serves every point of a cgroup,
    collection after collection."""

    def __init__(self, paths: List[Optional[str]]) -> None:
        self.paths = paths
        self.rows = [i for i, p in enumerate(paths) if p is not None]
        self.attributes: List[Attributes] = []
        self.cadvisor_rows: List[int] = []          # rows cAdvisor would export
        self.cadvisor_attributes: List[Attributes] = []
        self.fault_attributes: List[Tuple[Attributes, Attributes]] = []   # (major, minor)
        for i in self.rows:
            # records without a path were left out above
            path = cast(str, paths[i])
            ident = identify(path)
            attributes = _attributes(path, ident)
            self.attributes.append(attributes)
            if not ident.cadvisor_skips:
                self.cadvisor_rows.append(i)
                self.cadvisor_attributes.append(attributes)
                self.fault_attributes.append(({**attributes, PAGING_FAULT_TYPE: "major"},
                                              {**attributes, PAGING_FAULT_TYPE: "minor"}))

    def same_shape(self, paths: List[Optional[str]]) -> bool:
        return paths is self.paths or paths == self.paths


class _Frame:
    """One snapshot as a collection's instruments observe it: its shape, and
    each input column at the observed rows, made on first use."""

    def __init__(self, snap: Snapshot, local_snap: Optional[Snapshot], shape: _Shape,
                 local_stats: Sequence[str]) -> None:
        self.snap, self.shape = snap, shape
        self._local = local_columns(snap, local_snap, local_stats)
        self._columns: Dict[Tuple[str, bool], Sequence[Optional[Value]]] = {}
        self._values: Dict[str, List[Values]] = {}

    def column(self, stat: str, cadvisor: bool) -> Sequence[Optional[Value]]:
        """stat (or local(stat)) of each observed record: of cAdvisor's rows
        when `cadvisor`, else of every record with a path."""
        key = (stat, cadvisor)
        col = self._columns.get(key)
        if col is None:
            full = self._local[stat] if stat in self._local else self.snap.column(stat)
            col = self._columns[key] = picked(
                full, self.shape.cadvisor_rows if cadvisor else self.shape.rows)
        return col

    def values(self, metric: CadvisorMetric) -> List[Values]:
        """metric.values() of each of cAdvisor's rows. It is a function of the
        stats it needs: computed once per distinct input (idle cgroups,
        unset limits and zero counts share theirs)."""
        out = self._values.get(metric.name)
        if out is None:
            needs = metric_inputs(metric)
            keys = list(zip(*[self.column(s, True) for s in needs]))
            distinct: Dict[Tuple[Optional[Value], ...], Values] = {}
            for k in keys:
                if k not in distinct:
                    distinct[k] = metric.values(dict(zip(needs, k)).get)
            out = self._values[metric.name] = [distinct[k] for k in keys]
        return out


#: a raw stat's unit -> (the observable instrument, its UCUM unit); bytes
#: otherwise. Pressure in base units: stall time in seconds, its averages as
#: ratios (0 to 1); raw_metric_values converts the values.
_INSTRUMENT_OF_UNIT: Dict[str, Tuple[str, str]] = {
    catalog.COUNT: ("counter", "{count}"),
    catalog.NUMBER: ("up_down_counter", "1"),
    catalog.MICROSECONDS: ("counter", "s"),
    catalog.PERCENT_X100: ("gauge", "1"),
}


class MemcgInstrumentor:
    """Memory-cgroup metrics as OpenTelemetry observable instruments.

    root: the cgroup directory whose subtree is observed (default: the
    memory hierarchy's mountpoint). stats: the raw stats observed as
    memcg.<stat> (default none: the container.* instruments alone;
    e.g. pymemcg.DEFAULT_STATS for the stats a Reader reads by default).
    interval: the least time
    in seconds between two reads of the tree (0: every collection reads;
    not finite seconds >= 0: BadInterval).
    backend, flush: as for pymemcg.Reader. The Reader is made (the BPF
    program loaded) by instrument() and closed by uninstrument().
    oom_events: container.oom_events from OOM kill events (docs/otel.md),
    kept for oom_retention seconds after a cgroup is gone, through a kernel
    ring of oom_ring_pages pages (a power of two; default as
    pymemcg.oom.OomEvents; else BadRingSize from instrument()).
    """

    def __init__(self, root: Optional[str] = None, stats: Sequence[str] = (),
                 interval: float = 0.0, *, backend: str = "auto", flush: bool = False,
                 oom_events: bool = False, oom_retention: float = DEFAULT_RETENTION,
                 oom_ring_pages: Optional[int] = None) -> None:
        mount = memory_mount()
        if mount is None:
            raise NoMemoryController("no cgroup hierarchy on this host has the memory "
                                     "controller: mount one, or run where one is mounted")
        interval = interval_seconds("interval", interval)
        self.root = root if root is not None else mount.mountpoint
        self.mountpoint = mount.mountpoint
        self.cgroup_version = mount.version
        self.selected = list(stats)
        unknown = [s for s in self.selected if s not in catalog.STATS]
        if unknown:
            raise UnknownStat(f"unknown stats {unknown}: see `pymemcg stats` for the names")
        self.interval = interval
        self.backend, self.flush = backend, flush
        self._cadvisor: Dict[str, CadvisorMetric] = {
            m.name: m for m in cadvisor_metrics(mount.version)}
        used = [self._cadvisor[n] for n in _CADVISOR_USED if n in self._cadvisor]
        self.stats_needed = needed_stats(self.selected, used)
        self.local_stats_needed = needed_local_stats(used)
        self.reader: Optional[Reader] = None
        self.local_reader: Optional[Reader] = None
        # container.oom_events from OOM kill events (pymemcg.oom_metrics)
        if oom_ring_pages is not None and not oom_events:
            raise InvalidArgument("oom_ring_pages sizes the ring of oom_events: pass "
                                  "oom_events=True, or no oom_ring_pages")
        self.oom_events, self.oom_retention = oom_events, oom_retention
        self.oom_ring_pages = oom_ring_pages
        self.oom_counts: Optional[OomCounts] = None
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")
        self._frame: Optional[_Frame] = None
        self._shape: Optional[_Shape] = None
        self._read_at = float("-inf")
        self._served: Set[str] = set()         # instruments that observed the current snapshot
        self._meters: Dict[int, object] = {}   # id(provider) -> meter whose instruments exist
        self.reads = 0                    # tree reads so far (one per collection)
        self.last_error: Optional[str] = None

    # --- the BaseInstrumentor convention ---

    def instrumentation_dependencies(self) -> Collection[str]:
        return INSTRUMENTS

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return self.reader is not None

    def instrument(self, **kwargs: Any) -> None:
        """Open the Reader and register the instruments with
        kwargs["meter_provider"] (default: the global MeterProvider).
        A second call while instrumented does nothing, as BaseInstrumentor."""
        if self.reader is not None:
            _log.warning("pymemcg: MemcgInstrumentor is already instrumented")
            return
        provider = kwargs.get("meter_provider")
        self.reader = Reader(stats=self.stats_needed, backend=self.backend, flush=self.flush,
                             for_trees=True)
        try:
            if self.local_stats_needed:
                self.local_reader = Reader(stats=self.local_stats_needed, local=True,
                                           backend=self.backend, flush=self.flush,
                                           for_trees=True)
            if self.oom_events:
                self.oom_counts = OomCounts(retention=self.oom_retention,
                                            ring_pages=self.oom_ring_pages)
            key = id(provider)
            if key not in self._meters:
                # an SDK keeps the first instrument of a name: on a provider seen
                # before, the callbacks registered then serve again
                meter = get_meter(__name__, __version__, meter_provider=provider)
                self._create_instruments(meter)
                self._meters[key] = meter
        except BaseException:
            self._close_readers()
            raise
        self._read_at, self._served = float("-inf"), set()

    def uninstrument(self, **kwargs: Any) -> None:
        """Close the Reader (the BPF program unloads); the instruments then
        observe nothing. The OpenTelemetry API cannot remove an instrument."""
        with self._lock:
            self._close_readers()
            self._frame = None

    def _close_readers(self) -> None:
        for r in (self.reader, self.local_reader):
            if r is not None:
                r.close()
        self.reader = self.local_reader = None
        if self.oom_counts is not None:
            self.oom_counts.close()
            self.oom_counts = None

    # --- instruments ---

    def _create_instruments(self, meter: Meter) -> None:
        cad = self._cadvisor

        def one(name: str, metric: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return self._callback(name, functools.partial(_one_value, cad.get(metric)))

        meter.create_observable_up_down_counter(
            "container.memory.usage", [one("container.memory.usage",
                                           "container_memory_usage_bytes")],
            unit="By", description="Memory usage of the container.")
        meter.create_observable_up_down_counter(
            "container.memory.working_set", [one("container.memory.working_set",
                                                 "container_memory_working_set_bytes")],
            unit="By", description="Container memory working set.")
        meter.create_observable_up_down_counter(
            "container.memory.rss", [one("container.memory.rss", "container_memory_rss")],
            unit="By", description="Container memory RSS.")
        meter.create_observable_up_down_counter(
            "container.memory.available",
            [self._callback("container.memory.available", self._available)],
            unit="By", description="Container memory available.")
        meter.create_observable_counter(
            "container.paging.faults",
            [self._callback("container.paging.faults", self._faults)],
            unit="{fault}", description="Container memory paging faults.")
        if self.oom_events:
            meter.create_observable_counter(
                "container.oom_events", [self._callback("container.oom_events", self._ooms)],
                unit="{event}", description="OOM kills whose victim was in the container, "
                "since instrumented (cAdvisor's container_oom_events_total); a removed "
                "cgroup's is observed for oom_retention seconds after its removal")
            meter.create_observable_counter(
                "pymemcg.oom_events.lost", [self._oom_lost], unit="{event}",
                description="OOM kills that container.oom_events could not count: the "
                "kernel's ring was full (oom_ring_pages makes it larger), or the path was "
                "unreadable (pymemcg_oom_events_lost_total)")
        for name in self.selected:
            stat = catalog.STATS[name]
            instrument = otel_raw_name(name)
            callback = self._callback(instrument, functools.partial(_raw, stat=name))
            description = f"{stat.meaning} (memory cgroup stat {name})"
            kind, unit = _INSTRUMENT_OF_UNIT.get(stat.unit, ("up_down_counter", "By"))
            make = getattr(meter, f"create_observable_{kind}")
            make(instrument, [callback], unit=unit, description=description)

    def _available(self, frame: _Frame) -> List[Observation]:
        ws_metric = self._cadvisor.get("container_memory_working_set_bytes")
        if ws_metric is None:
            return []
        return [Observation(max(limit - ws[0][1], 0), a) for a, ws, limit in zip(
                    frame.shape.cadvisor_attributes, frame.values(ws_metric),
                    frame.column("limit", True))
                if ws and limit is not None and limit <= UNLIMITED_ABOVE]

    @property
    def oom_error(self) -> Optional[str]:
        """Why OOM event counting has stopped (container.oom_events then
        observes nothing), or None while it counts or without oom_events."""
        counts = self.oom_counts
        return counts.stopped if counts is not None else None

    def _ooms(self, frame: _Frame) -> List[Observation]:
        counts = self.oom_counts
        if counts is None or counts.stopped is not None:
            # counts that no longer grow are not observed; the log says why
            return []
        ids = frame.snap.ids()
        live, gone = counts.series(ids)
        out = [Observation(live.get(ids[row], 0), a) for row, a in
               zip(frame.shape.cadvisor_rows, frame.shape.cadvisor_attributes)]
        root = self.root[len(self.mountpoint):] or "/"
        for path, count in gone:
            ident = gone_identity(path)
            if ident is not None and under(path, root):
                out.append(Observation(count, _attributes(path, ident)))
        return out

    def _oom_lost(self, options: CallbackOptions) -> List[Observation]:
        # not from the snapshot: a count of the counting itself
        counts = self.oom_counts
        if counts is None or counts.stopped is not None:
            return []
        return [Observation(counts.missed)]

    def _faults(self, frame: _Frame) -> List[Observation]:
        failures = self._cadvisor.get("container_memory_failures_total")
        if failures is None:
            return []
        out = []
        for (major, minor), values in zip(frame.shape.fault_attributes, frame.values(failures)):
            counts = {ftype: v for (ftype, scope), v in values if scope == "container"}
            if "pgfault" in counts and "pgmajfault" in counts:
                out.append(Observation(counts["pgmajfault"], major))
                out.append(Observation(counts["pgfault"] - counts["pgmajfault"], minor))
        return out

    def _callback(self, instrument: str, observe: Callable[[_Frame], List[Observation]]
                  ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            frame = self._frame_for(instrument)
            return observe(frame) if frame is not None else []
        return callback

    # --- the snapshot ---

    def _frame_for(self, instrument: str) -> Optional[_Frame]:
        """The current snapshot; a new one when `instrument` has already
        observed the current one (a new collection) and `interval` has passed."""
        with self._lock:
            reader = self.reader
            if reader is None:
                return None
            if instrument in self._served:      # a new collection
                self._served = set()
            now = time.monotonic()
            if not self._served and now - self._read_at >= self.interval:
                self._frame = self._read(reader)
                self._read_at = now
            self._served.add(instrument)
            return self._frame

    def _read(self, reader: Reader) -> Optional[_Frame]:
        self.reads += 1
        try:
            snap: Snapshot = reader.read_tree(self.root)
            local_snap = self.local_reader.read_tree(self.root) \
                if self.local_reader is not None else None
            self.last_error = None
        except Error as e:  # the root went away, ...: say so, observe nothing
            self.last_error = str(e)
            _log.warning("pymemcg: reading %s failed: %s", self.root, e)
            return None
        shape = self._shape
        if shape is None or not shape.same_shape(snap.shared_paths):
            shape = self._shape = _Shape(snap.shared_paths)
        return _Frame(snap, local_snap, shape, self.local_stats_needed)


#: the cAdvisor definitions the container.* instruments are computed with
_CADVISOR_USED = ("container_memory_usage_bytes", "container_memory_working_set_bytes",
                  "container_memory_rss", "container_memory_failures_total",
                  "container_spec_memory_limit_bytes")


def _one_value(metric: Optional[CadvisorMetric], frame: _Frame) -> List[Observation]:
    """A one-value cAdvisor metric of each of cAdvisor's cgroups."""
    if metric is None:
        return []
    return [Observation(v, a) for a, values in zip(frame.shape.cadvisor_attributes,
                                                   frame.values(metric)) for _, v in values]


def _raw(frame: _Frame, stat: str) -> List[Observation]:
    """A raw stat of every cgroup read, in its instrument's unit (pressure in
    seconds and ratios: raw_metric_values). A limit not set, MAX, has no
    value to observe: left out, as container.memory.available is."""
    values = raw_metric_values(stat, frame.column(stat, False))
    return [Observation(v, a) for v, a in zip(values, frame.shape.attributes)
            if v is not None and v is not MAX]
