"""cAdvisor parity: every container_* metric the exporter serves, against
the kernel's own files, read the way cAdvisor reads them.

`cadvisor_from_files` restates cAdvisor's setMemoryStats / setMemoryEvents /
GetSpec (google/cadvisor lib/container/libcontainer/handler.go,
lib/container/common/helpers.go; opencontainers/cgroups fs and fs2) over
memory.stat, memory.usage_in_bytes, ... directly: it shares no code with
pymemcg.cadvisor, so a wrong definition there shows as a difference here.
The cgroups are quiet (page cache charged by a process that has exited, a
limit), so the two reads agree once the kernel's stats flush has landed.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Optional, Tuple

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

import pymemcg  # noqa: E402
from pymemcg import cadvisor  # noqa: E402
from pymemcg.cgroupfs import own_memory_cgroup  # noqa: E402
from pymemcg.cadvisor import UNLIMITED_ABOVE, cadvisor_metrics  # noqa: E402
from pymemcg.memory_stat import parse_pressure  # noqa: E402
from pymemcg.prometheus import MemcgCollector  # noqa: E402

from test_prometheus import LIMIT, quiet, rel, samples  # noqa: E402,F401 - quiet is a fixture

Key = Tuple[str, Tuple[Tuple[str, str], ...]]


def read_int(path: str, name: str) -> Optional[int]:
    try:
        with open(os.path.join(path, name)) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return 2 ** 64 - 1 if text == "max" else int(text)


def read_keyed(path: str, name: str) -> Dict[str, int]:
    try:
        with open(os.path.join(path, name)) as f:
            return {k: int(v) for k, v in (line.split() for line in f if line.strip())}
    except FileNotFoundError:
        return {}


def spec(v: Optional[int]) -> Optional[int]:
    return None if v is None else (0 if v > UNLIMITED_ABOVE else v)


def cadvisor_from_files(path: str, version: int) -> Dict[Key, int]:
    """What cAdvisor serves for the cgroup directory `path`, computed from
    the kernel's files as cAdvisor computes it; a metric pymemcg leaves out
    on this version (cAdvisor fills 0 there) is not in the result."""
    stat = read_keyed(path, "memory.stat")
    out: Dict[str, Optional[int]] = {}
    if version == 1:
        usage = read_int(path, "memory.usage_in_bytes")
        out.update({
            "container_memory_usage_bytes": usage,
            "container_memory_max_usage_bytes": read_int(path, "memory.max_usage_in_bytes"),
            "container_memory_cache": stat.get("total_cache"),
            "container_memory_rss": stat.get("total_rss"),
            "container_memory_swap": stat.get("total_swap"),
            "container_memory_mapped_file": stat.get("total_mapped_file"),
            "container_memory_kernel_usage": read_int(path, "memory.kmem.usage_in_bytes"),
            "container_memory_failcnt": read_int(path, "memory.failcnt"),
            "container_memory_total_active_file_bytes": stat.get("total_active_file"),
            "container_memory_total_inactive_file_bytes": stat.get("total_inactive_file"),
            "container_memory_workingset_refault_file_total": stat.get("workingset_refault_file"),
            "container_memory_workingset_refault_anon_total": stat.get("workingset_refault_anon"),
            "container_oom_events_total": read_keyed(path, "memory.oom_control").get("oom_kill"),
            "container_spec_memory_limit_bytes": spec(read_int(path, "memory.limit_in_bytes")),
            "container_spec_memory_swap_limit_bytes":
                spec(read_int(path, "memory.memsw.limit_in_bytes")),
        })
        inactive = stat.get("total_inactive_file")
    else:
        usage = read_int(path, "memory.current")
        events = read_keyed(path, "memory.events")
        swap_events = read_keyed(path, "memory.swap.events")
        out.update({
            "container_memory_usage_bytes": usage,
            "container_memory_max_usage_bytes": read_int(path, "memory.peak"),
            "container_memory_cache": stat.get("file"),
            "container_memory_rss": stat.get("anon"),
            "container_memory_swap": read_int(path, "memory.swap.current"),
            "container_memory_mapped_file": stat.get("file_mapped"),
            "container_memory_total_active_file_bytes": stat.get("active_file"),
            "container_memory_total_inactive_file_bytes": stat.get("inactive_file"),
            "container_memory_events_high_total": events.get("high"),
            "container_memory_events_max_total": events.get("max"),
            # proposed for cAdvisor (setMemoryEvents): the other memory.events
            # counters and memory.swap.events, as the files print them
            **{f"container_memory_events_{k}_total": events.get(k)
               for k in ("low", "oom", "oom_kill", "oom_group_kill")},
            **{f"container_memory_swap_events_{k}_total": swap_events.get(k)
               for k in ("high", "max", "fail")},
            "container_memory_file_dirty_bytes": stat.get("file_dirty"),
            "container_memory_file_writeback_bytes": stat.get("file_writeback"),
            "container_memory_pgscan_total": stat.get("pgscan"),
            "container_memory_pgsteal_total": stat.get("pgsteal"),
            "container_memory_workingset_refault_file_total": stat.get("workingset_refault_file"),
            "container_memory_workingset_refault_anon_total": stat.get("workingset_refault_anon"),
            "container_oom_events_total": read_keyed(path, "memory.events.local").get("oom_kill"),
            "container_spec_memory_limit_bytes": spec(read_int(path, "memory.max")),
            "container_spec_memory_swap_limit_bytes": spec(read_int(path, "memory.swap.max")),
        })
        if os.path.exists(os.path.join(path, "memory.pressure")):
            with open(os.path.join(path, "memory.pressure")) as f:
                psi = parse_pressure(f.read())
            out["container_pressure_memory_waiting_seconds_total"] = \
                psi["pressure_some_total_us"] / 1e6
            out["container_pressure_memory_stalled_seconds_total"] = \
                psi["pressure_full_total_us"] / 1e6
        inactive = stat.get("inactive_file")
    if usage is not None and inactive is not None:
        out["container_memory_working_set_bytes"] = max(usage - inactive, 0)
    result: Dict[Key, int] = {(name, ()): v for name, v in out.items() if v is not None}
    # both scopes carry memory.stat's pgfault/pgmajfault key: v1's is the
    # cgroup's own count, v2's hierarchical
    for ftype in ("pgfault", "pgmajfault"):
        if ftype in stat:
            for scope in ("container", "hierarchy"):
                result[("container_memory_failures_total",
                        (("failure_type", ftype), ("scope", scope)))] = stat[ftype]
    return result


def scraped(got: dict, cgroup_id: str) -> Dict[Key, int]:
    """The container_* samples of one cgroup in a parsed scrape."""
    out: Dict[Key, int] = {}
    for (name, labels), value in got.items():
        labels = dict(labels)
        if name.startswith("container_") and labels.pop("id", None) == cgroup_id:
            # pressure is in seconds, a float; every other value an integer
            out[(name, tuple(sorted(labels.items())))] = \
                value if name.startswith("container_pressure_") else int(value)
    return out


def unsummable(version: int) -> set:
    """The reclaim totals pymemcg leaves out on this kernel: memory.stat's
    pgscan/pgsteal sum four counts, and a kernel before PGSCAN_PROACTIVE
    has fewer (pymemcg.cadvisor serves the sum only with all four)."""
    if version == 1:
        return set()
    with pymemcg.Reader(stats=[*cadvisor.PGSCAN, *cadvisor.PGSTEAL], backend="bpf") as r:
        v = r.read(own_memory_cgroup()).as_dict()
    return {f"container_memory_{name}_total" for name, parts in
            (("pgscan", cadvisor.PGSCAN), ("pgsteal", cadvisor.PGSTEAL))
            if any(v[p] is None for p in parts)}


def compare_until_equal(collector: MemcgCollector, paths, version: int, tries: int = 20):
    """Scrape and read the files until they agree for every path (the
    kernel's periodic stats flush may land between the two reads)."""
    registry = CollectorRegistry()
    registry.register(collector)
    left_out = unsummable(version)
    for attempt in range(tries):
        want = {p: {k: v for k, v in cadvisor_from_files(p, version).items()
                    if k[0] not in left_out} for p in paths}
        got, _ = samples(generate_latest(registry).decode())
        have = {p: scraped(got, rel(p)) for p in paths}
        if have == want:
            return have
        if attempt == tries - 1:
            for p in paths:
                diff = {k: (have[p].get(k), want[p].get(k))
                        for k in set(have[p]) | set(want[p]) if have[p].get(k) != want[p].get(k)}
                assert not diff, f"{p}: (pymemcg, kernel files) {diff}"
        time.sleep(0.5)


def test_every_cadvisor_metric_equals_the_kernel_files(bpf_ok, quiet, cgroup_version):
    parent, child = quiet
    with MemcgCollector(parent, ["usage"], backend="bpf") as collector:
        assert collector.reader.backend == "bpf"
        have = compare_until_equal(collector, [parent, child], cgroup_version)
    served = {name for name, _ in have[child]}
    # nothing is left untested: every metric defined for this version was served
    assert served == {m.name for m in cadvisor_metrics(cgroup_version)} - \
        unsummable(cgroup_version)
    # the comparison means something: a limit, page cache, faults
    assert have[child][("container_spec_memory_limit_bytes", ())] == LIMIT
    assert have[child][("container_memory_cache", ())] > 0
    assert have[child][("container_memory_failures_total",
                        (("failure_type", "pgfault"), ("scope", "container")))] > 0


def test_v1_fault_counts_are_the_cgroups_own(bpf_ok, quiet, cgroup_version):
    """On v1 cAdvisor serves memory.stat "pgfault" (the cgroup's own count) in
    both scopes: the parent, whose faults all happened in its child, has 0."""
    if cgroup_version != 1:
        pytest.skip("v2's memory.stat pgfault is hierarchical")
    parent, child = quiet
    with MemcgCollector(parent, ["pgfault"], backend="bpf") as collector:
        have = compare_until_equal(collector, [parent], cgroup_version)
        registry = CollectorRegistry()
        registry.register(collector)
        got, _ = samples(generate_latest(registry).decode())
    key = ("container_memory_failures_total", (("failure_type", "pgfault"), ("scope", "hierarchy")))
    assert have[parent][key] == 0
    # while pymemcg's own memcg_pgfault is hierarchical: the child's faults are there
    assert got[("memcg_pgfault_total", frozenset({("cgroup", rel(parent))}))] > 0


def test_local_values_are_unavailable_without_a_local_record():
    """A caller with no local Reader gets [] for a local-needing metric, never
    the hierarchical count in its place."""
    failures = next(m for m in cadvisor_metrics(1) if m.name == "container_memory_failures_total")
    assert failures.local_needs == ("pgfault", "pgmajfault") and failures.needs == ()
    hierarchical = {"pgfault": 10, "pgmajfault": 2}.get
    assert failures.values(cadvisor.getter(hierarchical)) == []
    assert failures.values(hierarchical) == []        # a plain getter knows no local: names
    own = {"pgfault": 3, "pgmajfault": 1}.get
    assert sorted(failures.values(cadvisor.getter(hierarchical, own))) == [
        (("pgfault", "container"), 3), (("pgfault", "hierarchy"), 3),
        (("pgmajfault", "container"), 1), (("pgmajfault", "hierarchy"), 1)]


def test_definitions_name_their_source_and_exist_per_version():
    for version in (1, 2):
        for m in cadvisor_metrics(version):
            assert m.source, m.name
            assert version in m.versions
            assert m.type in (cadvisor.GAUGE, cadvisor.COUNTER, cadvisor.UNTYPED)
    v1 = {m.name for m in cadvisor_metrics(1)}
    v2 = {m.name for m in cadvisor_metrics(2)}
    # where cAdvisor only has a 0 to offer, pymemcg serves nothing
    assert {"container_memory_kernel_usage", "container_memory_failcnt"} <= v1 - v2
    assert {"container_memory_file_dirty_bytes", "container_memory_file_writeback_bytes",
            "container_memory_pgscan_total", "container_memory_pgsteal_total",
            "container_memory_events_high_total", "container_memory_events_max_total",
            "container_memory_events_low_total", "container_memory_events_oom_total",
            "container_memory_events_oom_kill_total",
            "container_memory_events_oom_group_kill_total",
            "container_memory_swap_events_high_total", "container_memory_swap_events_max_total",
            "container_memory_swap_events_fail_total",
            "container_pressure_memory_waiting_seconds_total",
            "container_pressure_memory_stalled_seconds_total"} <= v2 - v1


def test_memory_and_swap_events_as_proposed_for_cadvisor():
    """The names proposed for cAdvisor, each a counter of its hierarchical
    memory.events / memory.swap.events key, with no label of its own."""
    by = {m.name: m for m in cadvisor_metrics(2)}
    got = {"low": 1, "oom": 2, "oom_kill": 3, "oom_group_kill": 4, "swap_high_events": 5,
           "swap_max_events": 6, "swap_fail_events": 7}
    names = {"container_memory_events_low_total": 1, "container_memory_events_oom_total": 2,
             "container_memory_events_oom_kill_total": 3,
             "container_memory_events_oom_group_kill_total": 4,
             "container_memory_swap_events_high_total": 5,
             "container_memory_swap_events_max_total": 6,
             "container_memory_swap_events_fail_total": 7}
    for name, value in names.items():
        m = by[name]
        assert (m.type, m.extra_labels, m.local_needs) == (cadvisor.COUNTER, (), ()), name
        assert m.values(got.get) == [((), value)], name
        assert m.values({}.get) == [], name      # unavailable: no sample, never 0


def test_pressure_in_seconds():
    """cAdvisor's asMicrosecondsToSeconds: some total -> waiting, full -> stalled."""
    by = {m.name: m for m in cadvisor_metrics(2)}
    got = {"pressure_some_total_us": 1234567, "pressure_full_total_us": 89}.get
    assert by["container_pressure_memory_waiting_seconds_total"].values(got) == [((), 1.234567)]
    assert by["container_pressure_memory_stalled_seconds_total"].values(got) == [((), 0.000089)]
    assert by["container_pressure_memory_stalled_seconds_total"].values({}.get) == []


def test_pgscan_is_the_kernels_sum_or_nothing():
    pgscan = next(m for m in cadvisor_metrics(2) if m.name == "container_memory_pgscan_total")
    parts = dict(zip(cadvisor.PGSCAN, (5, 7, 11, 13)))
    assert pgscan.values(parts.get) == [((), 36)]
    parts["pgscan_proactive"] = None   # a kernel before PGSCAN_PROACTIVE summed fewer
    assert pgscan.values(parts.get) == []
