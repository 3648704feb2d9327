"""cAdvisor's container_memory_* metrics, defined from pymemcg's stats.

Pure definitions, no client library: the Prometheus exporter and the
OpenTelemetry instrumentation compute cAdvisor's values through these, so
both say the same thing for the same cgroup.

Each definition names where cAdvisor computes it (google/cadvisor, read at
its 2026-07 head):

- handler.go: lib/container/libcontainer/handler.go, setMemoryStats (the
  values) and setMemoryEvents (memory.events);
- prometheus.go: lib/metrics/prometheus.go, NewPrometheusCollector (names,
  types, help, labels) and collectContainersInfo (container_spec_*);
- helpers.go: lib/container/common/helpers.go, GetSpec (the limits);
- libcontainer: opencontainers/cgroups fs/memory.go (v1) and fs2/memory.go
  (v2), which fill the cgroups.Stats that setMemoryStats reads.

cAdvisor fills a value it cannot read with 0 (a v1 host has no
memory.events, no "file_dirty" key, ...): pymemcg serves such a metric only
on the cgroup versions where cAdvisor reads a real value, so a 0 in a
pymemcg scrape is always a measured 0. `versions` says where each exists.

Local stats. cAdvisor reads some values from the cgroup's own counts while
its other values are hierarchical (v1 memory.stat "pgfault" next to
"total_rss"). A metric lists those in `local_needs`, and its `values(get)`
asks `get(local(stat))` for them: a caller must then answer from a local
Reader (pymemcg.Reader(local=True)) of the same cgroup. A caller that has no
local values answers None, and the metric is left out, never computed from
the hierarchical count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from .decode import Value

if TYPE_CHECKING:
    from .decode import Record

GAUGE, COUNTER, UNTYPED = "gauge", "counter", "untyped"

#: cAdvisor (prometheus.go specMemoryValue) exports limits above 2^62 bytes
#: ("unlimited") as 0
UNLIMITED_ABOVE = 1 << 62

#: the prefix that asks a getter for the cgroup's own (local) value of a stat
LOCAL_PREFIX = "local:"

Getter = Callable[[str], Optional[Value]]
Values = List[Tuple[Tuple[str, ...], Value]]


def local(stat: str) -> str:
    """The getter key of `stat`'s local value (see the module docstring)."""
    return LOCAL_PREFIX + stat


@dataclass(frozen=True)
class CadvisorMetric:
    """One cAdvisor metric: its name, type, help, and how pymemcg computes it.

    needs: stats read from the caller's (hierarchical) Reader.
    values(get): the cgroup's stats -> [(extra label values, value)]; a
    missing input gives [] (the metric is left out for that cgroup).
    local_needs: stats read from a local Reader, asked as get(local(stat)).
    source: where cAdvisor computes it (file, function; see the module).
    """

    name: str
    type: str
    help: str
    needs: Tuple[str, ...]                      # stats read for it
    values: Callable[[Getter], Values]
    extra_labels: Tuple[str, ...] = ()
    versions: Tuple[int, ...] = (1, 2)          # cgroup versions it exists on
    local_needs: Tuple[str, ...] = ()           # stats read from a local Reader
    source: str = ""


def _one(key: str) -> Callable[[Getter], Values]:
    def values(get: Getter) -> Values:
        v = get(key)
        return [] if v is None else [((), v)]
    return values


def _sum(*keys: str) -> Callable[[Getter], Values]:
    def values(get: Getter) -> Values:
        parts = [get(k) for k in keys]
        total: Value = 0
        for part in parts:
            if part is None:
                return []
            total += part
        return [((), total)]
    return values


def working_set(get: Getter) -> Values:
    """usage - inactive_file (v1: total_inactive_file), 0 when below: cAdvisor's
    working set in bytes (handler.go setMemoryStats)."""
    usage, inactive = get("usage"), get("inactive_file")
    if usage is None or inactive is None:
        return []
    return [((), max(usage - inactive, 0))]


def _spec(stat: str) -> Callable[[Getter], Values]:
    def values(get: Getter) -> Values:
        limit = get(stat)
        if limit is None:
            return []
        return [((), 0 if limit > UNLIMITED_ABOVE else limit)]
    return values


def _failures(pgfault: str, pgmajfault: str) -> Callable[[Getter], Values]:
    # cAdvisor gives ContainerData and HierarchicalData the same memory.stat
    # "pgfault"/"pgmajfault" (handler.go setMemoryStats): both scopes, one count
    def values(get: Getter) -> Values:
        out: Values = []
        for ftype, key in (("pgfault", pgfault), ("pgmajfault", pgmajfault)):
            v = get(key)
            if v is not None:
                out += [((ftype, "container"), v), ((ftype, "hierarchy"), v)]
        return out
    return values


# --- pressure (PSI) ---
def _us_to_seconds(key: str) -> Callable[[Getter], Values]:
    """cAdvisor's asMicrosecondsToSeconds: float64(us) / 1e6."""
    def values(get: Getter) -> Values:
        v = get(key)
        return [] if v is None else [((), v / 1e6)]
    return values


PGSCAN = ("pgscan_kswapd", "pgscan_direct", "pgscan_khugepaged", "pgscan_proactive")
PGSTEAL = ("pgsteal_kswapd", "pgsteal_direct", "pgsteal_khugepaged", "pgsteal_proactive")


#: memory.events counters proposed for cAdvisor beside high and max:
#: (key, HELP text); each is container_memory_events_<key>_total
MEMORY_EVENTS_PROPOSED = (
    ("low", "Cumulative count of reclaims of the container below its memory.low protection"),
    ("oom", "Cumulative count of times the container's memory usage reached its limit and "
            "an allocation was about to fail"),
    ("oom_kill", "Cumulative count of processes of the container killed by the OOM killer"),
    ("oom_group_kill", "Cumulative count of group OOM kills of the container"),
)
#: memory.swap.events counters proposed for cAdvisor: (key, HELP text); each
#: is container_memory_swap_events_<key>_total
SWAP_EVENTS_PROPOSED = (
    ("high", "Cumulative count of times the container's swap usage crossed memory.swap.high"),
    ("max", "Cumulative count of swap allocations of the container refused by "
            "memory.swap.max"),
    ("fail", "Cumulative count of failed swap allocations of the container"),
)


def cadvisor_metrics(cgroup_version: int) -> List[CadvisorMetric]:
    """cAdvisor's memory metrics that pymemcg can serve with cAdvisor's
    meaning on this cgroup version, for a hierarchical Reader (plus a local
    one for `local_needs`)."""
    v1 = cgroup_version == 1
    swap = "swap" if v1 else "swap_usage"
    faults = (local("pgfault"), local("pgmajfault")) if v1 else ("pgfault", "pgmajfault")
    refault_file, refault_anon = (local("workingset_refault_file"), local("workingset_refault_anon")) \
        if v1 else ("workingset_refault_file", "workingset_refault_anon")
    oom = "oom_kill" if v1 else local("oom_kill")

    def M(name: str, mtype: str, help_text: str, reads: Sequence[str],
          values: Callable[[Getter], Values], extra: Sequence[str] = (),
          versions: Tuple[int, ...] = (1, 2), source: str = "") -> CadvisorMetric:
        # reads: the getter keys values() asks for, local(stat) ones included
        needs = tuple(k for k in reads if not k.startswith(LOCAL_PREFIX))
        local_needs = tuple(k[len(LOCAL_PREFIX):] for k in reads if k.startswith(LOCAL_PREFIX))
        return CadvisorMetric(name, mtype, help_text, needs, values, tuple(extra), versions,
                              local_needs, source)

    metrics = [
        M("container_memory_usage_bytes", GAUGE,
          "Current memory usage in bytes, including all memory regardless of when it was "
          "accessed", ["usage"], _one("usage"),
          source="handler.go setMemoryStats: Usage.Usage (v1 memory.usage_in_bytes, "
                 "v2 memory.current)"),
        M("container_memory_max_usage_bytes", GAUGE, "Maximum memory usage recorded in bytes",
          ["peak"], _one("peak"),
          source="handler.go setMemoryStats: Usage.MaxUsage (v1 memory.max_usage_in_bytes, "
                 "v2 memory.peak)"),
        M("container_memory_working_set_bytes", GAUGE, "Current working set in bytes.",
          ["usage", "inactive_file"], working_set,
          source="handler.go setMemoryStats: Usage - total_inactive_file (v1) / "
                 "inactive_file (v2), 0 when below"),
        M("container_memory_rss", GAUGE, "Size of RSS in bytes.", ["anon"], _one("anon"),
          source="handler.go setMemoryStats: memory.stat total_rss (v1) / anon (v2)"),
        M("container_memory_cache", GAUGE, "Number of bytes of page cache memory.",
          ["file"], _one("file"),
          source="handler.go setMemoryStats: memory.stat total_cache (v1) / file (v2)"),
        M("container_memory_swap", GAUGE, "Container swap usage in bytes.", [swap], _one(swap),
          source="handler.go setMemoryStats: memory.stat total_swap (v1); "
                 "SwapUsage.Usage - Usage.Usage (v2), which libcontainer fs2 makes "
                 "memory.swap.current"),
        M("container_memory_mapped_file", GAUGE, "Size of memory mapped files in bytes.",
          ["file_mapped"], _one("file_mapped"),
          source="handler.go setMemoryStats: memory.stat total_mapped_file (v1) / "
                 "file_mapped (v2)"),
        # v2: libcontainer fs2 leaves KernelUsage unset, so cAdvisor's value is 0
        M("container_memory_kernel_usage", GAUGE, "Size of kernel memory allocated in bytes.",
          ["kernel"], _one("kernel"), versions=(1,),
          source="handler.go setMemoryStats: KernelUsage.Usage = memory.kmem.usage_in_bytes "
                 "(v1), the page counter charged with the kernel's MEMCG_KMEM"),
        M("container_memory_total_active_file_bytes", GAUGE,
          "Current total active file in bytes.", ["active_file"], _one("active_file"),
          source="handler.go setMemoryStats: memory.stat total_active_file (v1) / "
                 "active_file (v2)"),
        M("container_memory_total_inactive_file_bytes", GAUGE,
          "Current total inactive file in bytes.", ["inactive_file"], _one("inactive_file"),
          source="handler.go setMemoryStats: memory.stat total_inactive_file (v1) / "
                 "inactive_file (v2)"),
        # a counter in cAdvisor; exposed untyped so that the sample keeps cAdvisor's
        # name (prometheus_client would name a counter's sample ..._failcnt_total);
        # v2: libcontainer fs2 has no failcnt, cAdvisor's value is 0
        M("container_memory_failcnt", UNTYPED, "Number of memory usage hits limits",
          ["failcnt"], _one("failcnt"), versions=(1,),
          source="handler.go setMemoryStats: Usage.Failcnt = memory.failcnt (v1)"),
        M("container_memory_failures_total", COUNTER,
          "Cumulative count of memory allocation failures.",
          faults, _failures(*faults), extra=("failure_type", "scope"),
          source="handler.go setMemoryStats: memory.stat pgfault / pgmajfault for both "
                 "scopes (v1: the cgroup's own counts, v1 memory.stat keys without total_; "
                 "v2: hierarchical)"),
        M("container_memory_events_high_total", COUNTER,
          "Cumulative count of memory.high throttle events for the container",
          ["high"], _one("high"), versions=(2,),
          source="handler.go setMemoryEvents: memory.events high (v2)"),
        M("container_memory_events_max_total", COUNTER,
          "Cumulative count of memory.max limit hit events for the container",
          ["max"], _one("max"), versions=(2,),
          source="handler.go setMemoryEvents: memory.events max (v2)"),
        # not merged in cAdvisor yet (docs/prometheus.md cites the proposals): named
        # as proposed, so that a dashboard written for them needs no change; read by
        # setMemoryEvents from the same hierarchical files as high and max
        *(M(f"container_memory_events_{key}_total", COUNTER, help_text, [key], _one(key),
            versions=(2,), source=f"handler.go setMemoryEvents: memory.events {key} (v2), as "
                                  f"proposed for cAdvisor")
          for key, help_text in MEMORY_EVENTS_PROPOSED),
        *(M(f"container_memory_swap_events_{key}_total", COUNTER, help_text,
            [f"swap_{key}_events"], _one(f"swap_{key}_events"), versions=(2,),
            source=f"handler.go setMemoryEvents: memory.swap.events {key} (v2), as "
                   f"proposed for cAdvisor")
          for key, help_text in SWAP_EVENTS_PROPOSED),
        M("container_memory_file_dirty_bytes", GAUGE,
          "Number of bytes of file cache that has been modified but not yet written back "
          "to disk.", ["file_dirty"], _one("file_dirty"), versions=(2,),
          source="handler.go setMemoryStats: memory.stat file_dirty (a v2 key)"),
        M("container_memory_file_writeback_bytes", GAUGE,
          "Number of bytes of file cache that is currently being written back to disk.",
          ["file_writeback"], _one("file_writeback"), versions=(2,),
          source="handler.go setMemoryStats: memory.stat file_writeback (a v2 key)"),
        # memory.stat "pgscan" is the kernel's sum of these four (mm/memcontrol.c
        # memcg_stat_format); kernels before PGSCAN_PROACTIVE summed fewer, and
        # there pymemcg has not all four: left out rather than a guessed sum
        M("container_memory_pgscan_total", COUNTER,
          "Cumulative number of pages scanned by the page reclaim algorithm.",
          PGSCAN, _sum(*PGSCAN), versions=(2,),
          source="handler.go setMemoryStats: memory.stat pgscan (a v2 key)"),
        M("container_memory_pgsteal_total", COUNTER,
          "Cumulative number of pages reclaimed by the page reclaim algorithm.",
          PGSTEAL, _sum(*PGSTEAL), versions=(2,),
          source="handler.go setMemoryStats: memory.stat pgsteal (a v2 key)"),
        M("container_memory_workingset_refault_file_total", COUNTER,
          "Cumulative number of refaults of previously evicted file pages.",
          [refault_file], _one(refault_file),
          source="handler.go setMemoryStats: memory.stat workingset_refault_file (v1: the "
                 "cgroup's own count; v2: hierarchical)"),
        M("container_memory_workingset_refault_anon_total", COUNTER,
          "Cumulative number of refaults of previously evicted anonymous pages.",
          [refault_anon], _one(refault_anon),
          source="handler.go setMemoryStats: memory.stat workingset_refault_anon (v1: the "
                 "cgroup's own count; v2: hierarchical)"),
        # cAdvisor counts the kernel log's OOM-kill lines per task_memcg (the
        # victim's own cgroup) since it started (utils/oomparser, cmd/internal/api/
        # oom.go); the kernel's count of the same kills is the victim cgroup's own
        # oom_kill: v1 memory.oom_control (local by construction), v2
        # memory.events.local. Same events; the counter starts at the cgroup's birth.
        M("container_oom_events_total", COUNTER,
          "Count of out of memory events observed for the container",
          [oom], _one(oom),
          source="utils/oomparser + cmd/internal/api/oom.go: OOM kills whose victim was in "
                 "the cgroup"),
        # --- pressure (PSI): cgroup v2 memory.pressure (libcontainer fs2 reads it) ---
        M("container_pressure_memory_waiting_seconds_total", COUNTER,
          "Total time duration tasks in the container have waited due to memory congestion.",
          ["pressure_some_total_us"], _us_to_seconds("pressure_some_total_us"), versions=(2,),
          source="prometheus.go: asMicrosecondsToSeconds(Memory.PSI.Some.Total), "
                 "memory.pressure some total= (v2)"),
        M("container_pressure_memory_stalled_seconds_total", COUNTER,
          "Total time duration no tasks in the container could make progress due to memory "
          "congestion.",
          ["pressure_full_total_us"], _us_to_seconds("pressure_full_total_us"), versions=(2,),
          source="prometheus.go: asMicrosecondsToSeconds(Memory.PSI.Full.Total), "
                 "memory.pressure full total= (v2)"),
        M("container_spec_memory_limit_bytes", GAUGE, "Memory limit for the container.",
          ["limit"], _spec("limit"),
          source="helpers.go GetSpec: memory.limit_in_bytes (v1) / memory.max (v2); "
                 "prometheus.go specMemoryValue"),
        M("container_spec_memory_swap_limit_bytes", GAUGE,
          "Memory swap limit for the container.",
          ["memsw_limit" if v1 else "swap_limit"], _spec("memsw_limit" if v1 else "swap_limit"),
          source="helpers.go GetSpec: memory.memsw.limit_in_bytes (v1) / memory.swap.max "
                 "(v2); prometheus.go specMemoryValue"),
    ]
    return [m for m in metrics if cgroup_version in m.versions]


def needed_stats(selected: Sequence[str], cadvisor: Sequence[CadvisorMetric]) -> List[str]:
    """`selected` and every stat the cAdvisor metrics read from a hierarchical Reader."""
    return list(dict.fromkeys([*selected, *(s for m in cadvisor for s in m.needs)]))


def needed_local_stats(cadvisor: Sequence[CadvisorMetric]) -> List[str]:
    """Every stat the cAdvisor metrics read from a local Reader."""
    return list(dict.fromkeys(s for m in cadvisor for s in m.local_needs))


def getter(get: Getter, local_get: Optional[Getter] = None) -> Getter:
    """One getter for `values()`: plain names from `get` (a hierarchical
    record's get), local(name) from `local_get` (the same cgroup's local
    record), None for local names when there is no local record."""
    def combined(name: str) -> Optional[Value]:
        if name.startswith(LOCAL_PREFIX):
            return None if local_get is None else local_get(name[len(LOCAL_PREFIX):])
        return get(name)
    return combined


def getters(records: Sequence[Record], local_records: Optional[Sequence[Record]] = None
            ) -> List[Getter]:
    """A getter per record (pymemcg Records of one read), answering local(stat)
    from the record of the same cgroup (matched by id: a path may be reused)
    in `local_records`, a local Reader's read of the same tree."""
    own = {r.id: r.get for r in local_records} if local_records is not None else {}
    return [getter(r.get, own.get(r.id)) for r in records]

