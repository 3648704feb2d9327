"""cAdvisor's container_memory_* metrics, defined from pymemcg's stats.

Pure definitions, no client library: the Prometheus exporter and the
OpenTelemetry instrumentation compute cAdvisor's values through these, so
both say the same thing for the same cgroup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

GAUGE, COUNTER, UNTYPED = "gauge", "counter", "untyped"

#: cAdvisor treats limits above 2^62 bytes as "unlimited" and exports 0
UNLIMITED_ABOVE = 1 << 62

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


def working_set(get: Getter):
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
                       ("usage", "inactive_file"), working_set),
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


def needed_stats(selected: Sequence[str], cadvisor: Sequence[CadvisorMetric]) -> List[str]:
    out = list(selected)
    for m in cadvisor:
        for s in m.needs:
            if s not in out:
                out.append(s)
    return out
