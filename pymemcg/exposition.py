"""The Prometheus text format (version 0.0.4) written straight from a Snapshot.

What `pymemcg export` serves, and what MemcgCollector.exposition() returns:
the same metrics the prometheus_client collector gives (pymemcg.prometheus
says which), read identically by prometheus_client's text parser, without a
Metric or Sample object per value. The cost of a scrape is the join of one
string per sample: each cgroup's label prefixes (`memcg_anon{cgroup="/a"} `)
are built once and kept while the tree's shape (its paths) is unchanged.

Two pieces:

- SharedSnapshot: one tree read shared by every scrape within a minimum
  interval (default 1 s), so that scrapes arriving faster than that, from
  one client or many at once, cost one walk: a network client cannot make
  the exporter hold the kernel's cgroup_mutex in a loop.
- TextWriter: a snapshot -> the exposition bytes, kept for that snapshot
  (concurrent scrapes of one snapshot share the bytes too).

Values are written as decimal integers (prometheus_client writes the same
numbers as floats, "4096.0"): a parser reads both to the same float. The
raw stats whose unit is not a Prometheus base unit (pressure: microseconds,
hundredths of a percent) are exported in one (seconds, a 0-1 ratio), under
a name that says so (raw_metric_name), as floats.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

from . import catalog, forksafe
from .catalog import TUNABLES
from .cadvisor import (COUNTER, GAUGE, CadvisorMetric, Getter, Values, local,
                       needed_local_stats)
from .containers import CgroupIdentity, identify
from .decode import MAX, Snapshot, Value
from .errors import BadInterval, Error, quoted
from .names import escape

#: who a cgroup is (pymemcg.containers), as labels after id / cgroup, where known
IDENTITY_LABELS = ("pod_uid", "container_id", "qos", "unit")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_MIN_INTERVAL = 1.0


#: a stat unit that is not a Prometheus base unit -> the stat name's unit
#: suffix, the metric name's, what a value is divided by to be in the
#: metric's unit, and that unit in words for HELP texts
_BASE_UNITS: Dict[str, Tuple[str, str, float, str]] = {
    # cAdvisor's container_pressure_memory_*_seconds_total: float64(us) / 1e6
    catalog.MICROSECONDS: ("_us", "_seconds", 1e6, "in seconds"),
    # the naming conventions' ratio (0 to 1) rather than a percentage
    catalog.PERCENT_X100: ("_x100", "_ratio", 1e4, "a ratio, 0 to 1"),
}
#: a stat's own unit in words, for HELP texts
UNIT_WORDS = {catalog.BYTES: "bytes", catalog.COUNT: "a count", catalog.NUMBER: "a number",
              catalog.MICROSECONDS: "in microseconds",
              catalog.PERCENT_X100: "in hundredths of a percent"}


def raw_metric_name(stat: str) -> str:
    """The family name of raw stat `stat`: memcg_<stat>, with the stat's unit
    suffix replaced by its Prometheus base unit where they differ
    (pressure_some_avg10_x100 -> memcg_pressure_some_avg10_ratio), and a
    counter's "_total" left to exposed_name(), which puts it last:
    pressure_some_total_us -> memcg_pressure_some_seconds, whose samples
    are memcg_pressure_some_seconds_total."""
    unit = _BASE_UNITS.get(catalog.STATS[stat].unit)
    if unit is None:
        return f"memcg_{stat}"
    return f"memcg_{_without_unit(stat, unit[0])}{unit[1]}"


def _without_unit(stat: str, suffix: str) -> str:
    """A stat's name without its unit suffix and a "_total" before it."""
    name = stat[:-len(suffix)] if stat.endswith(suffix) else stat
    return name[:-len("_total")] if name.endswith("_total") else name


def otel_raw_name(stat: str) -> str:
    """The OpenTelemetry instrument name of raw stat `stat`: memcg.<stat>,
    except where the stat's unit is not a base unit (pressure), whose name
    drops the unit and "total" (the instrument's unit says them) and is
    dot-separated as the semantic conventions name time and ratios:
    pressure_some_total_us -> memcg.pressure.some.time (seconds),
    pressure_full_avg10_x100 -> memcg.pressure.full.avg10 (a ratio, 0 to 1)."""
    unit = _BASE_UNITS.get(catalog.STATS[stat].unit)
    if unit is None:
        return f"memcg.{stat}"
    parts = _without_unit(stat, unit[0]).split("_")
    if catalog.STATS[stat].unit == catalog.MICROSECONDS:
        parts.append("time")
    return "memcg." + ".".join(parts)


def raw_family(stat: str, local: bool) -> Tuple[str, str]:
    """(type, HELP text) of raw stat `stat`'s family: counts, and pressure's
    cumulative stall time, are counters (they only ever grow); sizes,
    numbers as they are now and pressure's averages gauges. HELP says the
    unit exported, and the stat's own where it is another."""
    s = catalog.STATS[stat]
    counter = s.unit in (catalog.COUNT, catalog.MICROSECONDS)
    of_stat = f"pymemcg stat {stat}{', local' if local else ''}"
    unit = _BASE_UNITS.get(s.unit)
    help_text = f"{s.meaning} ({UNIT_WORDS[s.unit]}; {of_stat})" if unit is None else \
        f"{s.meaning} ({unit[3]}; {of_stat}, {UNIT_WORDS[s.unit]})"
    return (COUNTER if counter else GAUGE), help_text


def raw_metric_values(stat: str, values: Sequence[Optional[Value]]
                      ) -> Sequence[Optional[Value]]:
    """A raw stat's values in the unit of its metric (raw_metric_name): floats
    in the base unit where the stat's is another, else the values as read."""
    unit = _BASE_UNITS.get(catalog.STATS[stat].unit)
    if unit is None:
        return values
    divisor = unit[2]
    return [None if v is None else v / divisor for v in values]


def interval_seconds(name: str, value: object) -> float:
    """`value` as the least time in seconds between two reads of a tree: a
    finite number >= 0 (0: every scrape or collection reads). BadInterval,
    naming the argument `name`, otherwise."""
    if not (isinstance(value, numbers.Real) and 0 <= float(value) < math.inf):
        raise BadInterval(f"{name} {quoted(value)}: give a finite number of seconds >= 0 "
                          f"(0 reads the tree every time)")
    return float(value)


def escape_label_value(value: str) -> str:
    """A label value as the text format quotes it (backslash, newline, double quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return value


def escape_help(text: str) -> str:
    """A HELP text as the text format writes it (backslash, newline)."""
    return text.replace("\\", r"\\").replace("\n", r"\n")


def exposed_name(name: str, mtype: str) -> str:
    """The name a family's samples carry, as prometheus_client exposes it: a
    counter's with one `_total` suffix."""
    if mtype == COUNTER:
        return (name[:-6] if name.endswith("_total") else name) + "_total"
    return name


def header(name: str, mtype: str, help_text: str) -> str:
    """The # HELP and # TYPE lines of a family whose samples are called `name`."""
    ptype = mtype if mtype in (GAUGE, COUNTER) else "untyped"
    return f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {ptype}\n"


def openmetrics_header(name: str, mtype: str, help_text: str) -> str:
    """header() in the OpenMetrics text format (1.0.0): a counter's family is
    named without the `_total` its samples carry, an untyped family is
    "unknown", and HELP escapes double quotes too (as prometheus_client's
    OpenMetrics exposition writes them)."""
    family = name[:-6] if mtype == COUNTER else name
    otype = mtype if mtype in (GAUGE, COUNTER) else "unknown"
    text = escape_help(help_text).replace('"', r'\"')
    return f"# HELP {family} {text}\n# TYPE {family} {otype}\n"


def label_pairs(names: Sequence[str], values: Sequence[str]) -> str:
    """'a="x",b="y"' (values escaped); "" for no labels."""
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values))


# --- one snapshot shared by the scrapes of an interval ---

@dataclass(frozen=True)
class Taken:
    """One tree read: the snapshot (None if the read failed, then `error`
    says why), the seconds it took, and its sequence number."""

    snapshot: Optional[Snapshot]
    seconds: float
    error: Optional[str]
    generation: int
    # a local Reader's read of the same tree, right after, where metrics need
    # a cgroup's own counts (pymemcg.cadvisor local_needs)
    local: Optional[Snapshot] = None


class SharedSnapshot:
    """`read()` returns one tree read shared by every call within
    `min_interval` seconds of the end of the last walk (0: a walk per call).

    Callers that arrive while a walk runs wait for it and share it, so N
    scrapes at once cost one walk too. A failed read is shared the same way
    (a client cannot retry it in a loop either). `walks` counts the walks."""

    def __init__(self, read_tree: Callable[[str], Snapshot], root: str,
                 min_interval: float = DEFAULT_MIN_INTERVAL,
                 on_error: Optional[Callable[[Error], None]] = None,
                 read_local: Optional[Callable[[str], Snapshot]] = None) -> None:
        self.min_interval = interval_seconds("min_interval", min_interval)
        self._read_tree = read_tree
        self._read_local = read_local
        self.root = root
        self._on_error = on_error
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")
        self._last: Optional[Taken] = None
        self._done_at = 0.0          # time.monotonic() at the end of the last walk
        self.walks = 0

    def read(self) -> Taken:
        with self._lock:
            last = self._last
            if last is not None and time.monotonic() - self._done_at < self.min_interval:
                return last
            start = time.perf_counter()
            local_snap = None
            try:
                snap, error = self._read_tree(self.root), None
                if self._read_local is not None:
                    local_snap = self._read_local(self.root)
            except Error as e:  # the root went away, ...: say so, keep serving
                snap, error = None, str(e)
                if self._on_error is not None:
                    self._on_error(e)
            took = time.perf_counter() - start
            self.walks += 1
            self._last = Taken(snap, took, error, self.walks, local_snap)
            self._done_at = time.monotonic()
            return self._last


# --- the labels a tree's shape decides ---

class TreeLabels:
    """Which records of a snapshot are exported, and their label values,
    for one list of paths (a tree's shape): computed once per shape.

    rows: positions of records with a path (a cgroup removed before its
    name was read has none); cadvisor_rows: those cAdvisor exports. The
    identity label names are, as cAdvisor does (metrics/prometheus.go
    collectContainersInfo), the union over the exported cgroups, "" where a
    cgroup has no value; a scrape where no cgroup has a pod, container, QoS
    class or unit has none of these labels."""

    def __init__(self, paths: List[Optional[str]]) -> None:
        self.paths = paths
        self.rows = [i for i, p in enumerate(paths) if p is not None]
        # the rows' paths, none of them None
        kept = cast(List[str], [paths[i] for i in self.rows])
        idents = [identify(p) for p in kept]
        keep = [not ident.cadvisor_skips for ident in idents]
        self.cadvisor_rows = [i for i, k in zip(self.rows, keep) if k]
        self.raw_names, self.raw_values = _identity(kept, idents)
        self.cadvisor_names, self.cadvisor_values = _identity(
            [p for p, k in zip(kept, keep) if k], [x for x, k in zip(idents, keep) if k])

    def same_shape(self, paths: List[Optional[str]]) -> bool:
        return paths is self.paths or paths == self.paths


def _identity(paths: List[str], idents: List[CgroupIdentity]
              ) -> Tuple[List[str], List[Tuple[str, ...]]]:
    """(identity label names, (path as text, *their values) per cgroup): the
    path through pymemcg.names.escape (valid UTF-8, one label value per name);
    identity values are ASCII by construction (pymemcg.containers)."""
    names = [n for n in IDENTITY_LABELS if any(getattr(x, n) for x in idents)]
    return names, [(escape(p), *(getattr(x, n) or "" for n in names))
                   for p, x in zip(paths, idents)]


def picked(column: Sequence[Optional[Value]], rows: List[int]) -> Sequence[Optional[Value]]:
    """column's values at `rows` (the whole column when rows are all of it)."""
    if len(rows) == len(column):
        return column
    return [column[i] for i in rows]


def metric_inputs(m: CadvisorMetric) -> Tuple[str, ...]:
    """The getter keys m.values() reads: its stats, then local(stat) of its
    local_needs."""
    return (*m.needs, *(local(s) for s in m.local_needs))


def local_columns(snap: Snapshot, local_snap: Optional[Snapshot], stats: Sequence[str]
                  ) -> Dict[str, Sequence[Optional[Value]]]:
    """{local(stat): the cgroup's own value of stat, aligned with snap}: from
    local_snap, the same tree read by a local Reader, matched by cgroup id (a
    path may name another cgroup by then); None where that read has no such
    cgroup, or there was none."""
    if not stats:
        return {}
    ids = snap.ids()
    if local_snap is None:
        none = [None] * len(ids)
        return {local(s): none for s in stats}
    cols = local_snap.columns(stats)
    own_ids = local_snap.ids()
    if own_ids == ids:
        return {local(s): cols[s] for s in stats}
    at = {cgroup_id: i for i, cgroup_id in enumerate(own_ids)}
    where = [at.get(cgroup_id) for cgroup_id in ids]
    return {local(s): [None if i is None else cols[s][i] for i in where] for s in stats}


def lines(heads: Sequence[str], values: Sequence[Union[None, Value, str]]) -> str:
    """head + value + newline for each available value (None: left out)."""
    # an f-string per line: each line is built in one step, no intermediate strings
    return "".join([f"{h}{v}\n" for h, v in zip(heads, values) if v is not None])


# --- the writer ---

class TextWriter:
    """Snapshots -> Prometheus text format, for one collector's metrics.

    selected: (stat, type, help) of each raw stat exported (raw_metric_name);
    cadvisor: cAdvisor's metrics (consumed generically: name, type, help,
    needs, extra_labels, values(get)). info: the values of pymemcg_info's
    labels (version, backend, cgroup_version, kernel, root). openmetrics:
    write the families' HELP and TYPE lines as the OpenMetrics text format
    does (the samples are the same in both; the caller ends the exposition
    with "# EOF")."""

    def __init__(self, selected: Sequence[Tuple[str, str, str]],
                 cadvisor: Sequence[CadvisorMetric], info: Dict[str, str],
                 openmetrics: bool = False) -> None:
        self._header = openmetrics_header if openmetrics else header
        self.selected = [(stat, exposed_name(raw_metric_name(stat), mtype), mtype, help_text)
                         for stat, mtype, help_text in selected]
        self.cadvisor = list(cadvisor)
        self.local_stats = needed_local_stats(self.cadvisor)
        self._cadvisor_needs: List[str] = []
        for m in self.cadvisor:
            self._cadvisor_needs += [s for s in metric_inputs(m) if s not in self._cadvisor_needs]
        raw_stats = [stat for stat, _, _, _ in self.selected]
        local_keys = [local(s) for s in self.local_stats]
        self._stats = raw_stats + [s for s in self._cadvisor_needs
                                   if s not in raw_stats and s not in local_keys]
        self._headers = {}
        for stat, name, mtype, help_text in self.selected:
            self._headers[stat] = self._header(name, mtype, help_text)
        for m in self.cadvisor:
            self._headers[m.name] = self._header(exposed_name(m.name, m.type), m.type, m.help)
        self._info = label_pairs(list(info), list(info.values()))
        self._labels: Optional[TreeLabels] = None
        self._heads: Dict[str, List[str]] = {}      # family -> its line head per row
        self._extra: Dict[Tuple[str, Tuple[str, ...]], str] = {}
        self._last: Tuple[Optional[Taken], List[bytes]] = (None, [])
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")

    def render(self, taken: Taken) -> bytes:
        """The exposition of one tree read, as one bytes object."""
        return b"".join(self.render_chunks(taken))

    def render_chunks(self, taken: Taken) -> List[bytes]:
        """The exposition of one tree read in pieces (a family's lines each),
        made once per read: a server writes them one after the other. A large
        tree's text in one piece is a block above glibc's mmap threshold,
        mapped afresh for every scrape and returned to the kernel on free, so
        each scrape would fault its pages in again; smaller pieces are reused
        from the heap."""
        with self._lock:
            if self._last[0] is not taken:
                self._last = (taken, [piece.encode() for piece in self._render(taken)])
            return self._last[1]

    def _shape(self, paths: List[Optional[str]]) -> TreeLabels:
        if self._labels is None or not self._labels.same_shape(paths):
            labels = self._labels = TreeLabels(paths)
            self._heads = {}
            raw = [label_pairs(["cgroup", *labels.raw_names], v) for v in labels.raw_values]
            for stat, name, _, _ in self.selected:
                self._heads[stat] = [f"{name}{{{pairs}}} " for pairs in raw]
            cad = [label_pairs(["id", *labels.cadvisor_names], v)
                   for v in labels.cadvisor_values]
            for m in self.cadvisor:
                name = exposed_name(m.name, m.type)
                self._heads[m.name] = [f"{name}{{{pairs}" for pairs in cad]
        return self._labels

    def _render(self, taken: Taken) -> List[str]:
        out: List[str] = []
        snap = taken.snapshot
        if snap is not None:
            labels = self._shape(snap.shared_paths)
            columns = snap.columns(self._stats)
            if self.local_stats:
                columns.update(local_columns(snap, taken.local, self.local_stats))
            # the families in the collector's order: cAdvisor's, memcg_*, pymemcg_*
            if self.cadvisor:
                self._write_cadvisor(out, columns, labels)
            for stat, _, _, _ in self.selected:
                out.append(self._headers[stat])
                values = raw_metric_values(stat, picked(columns[stat], labels.rows))
                if stat in TUNABLES:
                    # a limit not set: infinity, as the text format writes it
                    out.append(lines(self._heads[stat],
                                     ["+Inf" if v is MAX else v for v in values]))
                else:
                    out.append(lines(self._heads[stat], values))
        else:
            for m in self.cadvisor:
                out.append(self._headers[m.name])
            for stat, _, _, _ in self.selected:
                out.append(self._headers[stat])
        self._write_own(out, taken)
        return out

    def _write_cadvisor(self, out: List[str], columns: Dict[str, Sequence[Optional[Value]]],
                        labels: TreeLabels) -> None:
        """cAdvisor's families. m.values(get) is a function of the stats in
        m.needs: where many cgroups give it the same inputs (idle cgroups,
        unset limits, zero counts) it is called once per distinct input and
        its lines' tails are shared; otherwise once per cgroup."""
        rows = labels.cadvisor_rows
        getters: Optional[List[Getter]] = None
        for m in self.cadvisor:
            out.append(self._headers[m.name])
            needs = metric_inputs(m)
            # one stat's values, or a tuple of them per cgroup
            keys: Sequence[Any]
            if len(needs) == 1:
                keys = picked(columns[needs[0]], rows)
            else:
                keys = list(zip(*[picked(columns[s], rows) for s in needs]))
            distinct: Dict[Any, Any] = dict.fromkeys(keys)
            if 2 * len(distinct) <= len(keys):
                for k in distinct:
                    get = {needs[0]: k}.get if len(needs) == 1 else dict(zip(needs, k)).get
                    distinct[k] = self._tails(m, m.values(get))
                tails = list(map(distinct.__getitem__, keys))
            else:
                if getters is None:
                    # a cgroup's stats as one dict: get(stat) is a C call, not a method
                    needed = self._cadvisor_needs
                    getters = [d.get for d in map(dict, map(zip, repeat(needed), zip(
                        *[picked(columns[s], rows) for s in needed])))]
                tails = [self._tails(m, r) for r in map(m.values, getters)]
            out.append("".join([h + t for h, ts in zip(self._heads[m.name], tails) for t in ts]))

    def _tails(self, m: CadvisorMetric, values: Values
               ) -> Tuple[str, ...]:
        """What follows a cgroup's line head (`name{id="..."`) for each value."""
        out = []
        for extra, v in values:
            if extra:
                key = (m.name, extra)
                pairs = self._extra.get(key)
                if pairs is None:
                    pairs = self._extra[key] = label_pairs(m.extra_labels, extra)
                out.append(f",{pairs}}} {v}\n")
            else:
                out.append(f"}} {v}\n")
        return tuple(out)

    def _write_own(self, out: List[str], taken: Taken) -> None:
        snap = taken.snapshot
        out.append(self._header("pymemcg_info", GAUGE, INFO_HELP))
        out.append(f"pymemcg_info{{{self._info}}} 1\n")
        out.append(self._header("pymemcg_cgroups", GAUGE, CGROUPS_HELP))
        if snap is not None:
            out.append(f"pymemcg_cgroups {len(snap)}\n")
        out.append(self._header("pymemcg_snapshot_duration_seconds", GAUGE, DURATION_HELP))
        if snap is not None:
            out.append(f"pymemcg_snapshot_duration_seconds {taken.seconds!r}\n")
        out.append(self._header("pymemcg_scrape_error", GAUGE, ERROR_HELP))
        out.append(f"pymemcg_scrape_error {0 if snap is not None else 1}\n")


INFO_HELP = "pymemcg version, backend and host; value 1"
CGROUPS_HELP = "cgroups in the last snapshot"
DURATION_HELP = "time the last snapshot (one tree read) took"
ERROR_HELP = "1 if the last scrape could not read the cgroups, else 0"
