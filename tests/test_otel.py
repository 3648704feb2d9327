"""pymemcg.otel with the real OpenTelemetry SDK (an InMemoryMetricReader) on
real cgroups: quiet ones (page cache charged by a process that has exited,
a limit), so the instruments' values equal a direct read."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import time
import uuid

import pytest

from conftest import links_of, open_fds, require_module  # noqa: E402

require_module("opentelemetry.sdk.metrics")
require_module("prometheus_client")   # the quiet fixture lives with the exporter's tests

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

import pymemcg  # noqa: E402
from pymemcg.otel import MemcgInstrumentor  # noqa: E402

from test_prometheus import BAD_INTERVALS, LIMIT, quiet, rel  # noqa: E402,F401 - quiet: a fixture

SELECTED = ["usage", "anon", "file", "inactive_file", "pgfault", "oom_kill"]


def collect(reader: InMemoryMetricReader) -> dict:
    """{instrument: {frozenset(attributes): (value, unit, monotonic)}} of one collection."""
    out: dict = {}
    data = reader.get_metrics_data()
    for rm in (data.resource_metrics if data is not None else []):
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for dp in m.data.data_points:
                    out.setdefault(m.name, {})[frozenset(dp.attributes.items())] = (
                        dp.value, m.unit, m.data.is_monotonic)
    return out


def direct(path: str, version: int) -> dict:
    """What each instrument must say for `path`, from direct reads (a
    hierarchical Reader; the cgroup's own fault counts on v1, as cAdvisor)."""
    with pymemcg.Reader(stats=SELECTED + ["limit", "pgmajfault"], backend="bpf") as r, \
            pymemcg.Reader(stats=["pgfault", "pgmajfault"], local=True, backend="bpf") as lr:
        v, own = r.read(path).as_dict(), lr.read(path).as_dict()
    faults = own if version == 1 else v
    ws = max(v["usage"] - v["inactive_file"], 0)
    attrs = frozenset({("cgroup.path", rel(path))})
    want = {
        "container.memory.usage": {attrs: (v["usage"], "By", False)},
        "container.memory.working_set": {attrs: (ws, "By", False)},
        "container.memory.rss": {attrs: (v["anon"], "By", False)},
        "container.paging.faults": {
            attrs | {("system.paging.fault.type", "major")}: (faults["pgmajfault"], "{fault}", True),
            attrs | {("system.paging.fault.type", "minor")}:
                (faults["pgfault"] - faults["pgmajfault"], "{fault}", True)},
    }
    if v["limit"] <= 1 << 62:
        want["container.memory.available"] = {attrs: (max(v["limit"] - ws, 0), "By", False)}
    for name in SELECTED:
        counter = pymemcg.catalog.STATS[name].unit == pymemcg.catalog.COUNT
        want[f"memcg.{name}"] = {attrs: (v[name], "{count}" if counter else "By", counter)}
    return want


def of(got: dict, path: str) -> dict:
    """The data points of one cgroup."""
    out: dict = {}
    for name, points in got.items():
        for attrs, value in points.items():
            if ("cgroup.path", rel(path)) in attrs:
                out.setdefault(name, {})[attrs] = value
    return out


@pytest.fixture
def provider():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def test_instruments_equal_a_direct_read(bpf_ok, quiet, cgroup_version, provider):
    parent, child = quiet
    meter_provider, reader = provider
    inst = MemcgInstrumentor(parent, SELECTED)
    inst.instrument(meter_provider=meter_provider)
    try:
        assert inst.reader.backend == "bpf"
        for attempt in range(20):   # until the kernel's stats flush has landed in both
            want = {p: direct(p, cgroup_version) for p in (parent, child)}
            got = collect(reader)
            have = {p: of(got, p) for p in (parent, child)}
            if have == want:
                break
            time.sleep(0.5)
        assert have == want
    finally:
        inst.uninstrument()
    # the comparison means something: page cache, faults, a limit
    attrs = frozenset({("cgroup.path", rel(child))})
    assert have[child]["memcg.file"][attrs][0] > 0
    assert have[child]["container.memory.available"][attrs][0] <= LIMIT
    assert "container.memory.available" not in have[parent]     # no limit: omitted
    minor = attrs | {("system.paging.fault.type", "minor")}
    assert have[child]["container.paging.faults"][minor][0] > 0


def test_one_snapshot_per_collection(bpf_ok, quiet, provider):
    parent, _ = quiet
    meter_provider, reader = provider
    inst = MemcgInstrumentor(parent, ["usage", "pgfault"])
    inst.instrument(meter_provider=meter_provider)
    try:
        calls = []
        real = inst.reader.read_tree
        inst.reader.read_tree = lambda root: calls.append(root) or real(root)
        assert calls == [], "instrumenting must not read"
        got = collect(reader)
        assert len(got) == 7 and calls == [parent]   # 5 container.* + 2 memcg.*, one read
        collect(reader)
        assert calls == [parent, parent] and inst.reads == 2
    finally:
        inst.uninstrument()


def test_a_changed_tree_is_observed_as_it_is_now(bpf_ok, cgroups, provider):
    """Attributes are kept from one collection to the next while the tree's
    paths are unchanged: a cgroup made or removed in between shows at once,
    and a kept cgroup's values are this collection's."""
    meter_provider, reader = provider
    a, b = cgroups.make("a"), cgroups.make("b")
    inst = MemcgInstrumentor(cgroups.base, ["usage", "limit"])
    inst.instrument(meter_provider=meter_provider)
    try:
        def paths(got: dict, name: str) -> dict:
            return {dict(k)["cgroup.path"]: v[0] for k, v in got[name].items()}
        first = collect(reader)
        assert set(paths(first, "memcg.usage")) == {rel(cgroups.base), rel(a), rel(b)}
        assert set(paths(first, "container.memory.usage")) == set(paths(first, "memcg.usage"))
        os.rmdir(b)
        c = cgroups.make("c")
        with open(os.path.join(c, "memory.max" if cgroups.v2 else "memory.limit_in_bytes"),
                  "w") as f:
            f.write(str(LIMIT))
        second = collect(reader)
        assert set(paths(second, "memcg.usage")) == {rel(cgroups.base), rel(a), rel(c)}
        assert paths(second, "memcg.limit")[rel(c)] == LIMIT
        # a limit not set (pymemcg.MAX) has no value to observe, as for available
        assert set(paths(second, "memcg.limit")) == {rel(c)}
        assert set(paths(second, "container.memory.available")) == {rel(c)}
        third = collect(reader)           # the same shape again: the kept attributes
        assert paths(third, "memcg.limit") == paths(second, "memcg.limit")
        assert inst.reads == 3
    finally:
        inst.uninstrument()


def test_interval_is_the_least_time_between_reads(bpf_ok, quiet, provider):
    parent, _ = quiet
    meter_provider, reader = provider
    inst = MemcgInstrumentor(parent, ["usage"], interval=3600)
    inst.instrument(meter_provider=meter_provider)
    try:
        first = collect(reader)
        second = collect(reader)
        assert inst.reads == 1 and first == second
    finally:
        inst.uninstrument()


def test_container_and_pod_attributes(bpf_ok, cgroups, provider):
    uid, cid = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
    pod = cgroups.make(f"kubepods/burstable/pod{uid}")
    container = cgroups.make(f"kubepods/burstable/pod{uid}/{cid}")
    conmon = cgroups.make(f"kubepods/burstable/pod{uid}/crio-conmon-{uuid.uuid4().hex}")
    meter_provider, reader = provider
    inst = MemcgInstrumentor(cgroups.base, ["usage"])
    inst.instrument(meter_provider=meter_provider)
    try:
        got = collect(reader)
    finally:
        inst.uninstrument()
    usage = {dict(a)["cgroup.path"]: dict(a) for a in got["memcg.usage"]}
    assert usage[rel(container)] == {"cgroup.path": rel(container), "container.id": cid,
                                     "k8s.pod.uid": uid}
    assert usage[rel(pod)] == {"cgroup.path": rel(pod), "k8s.pod.uid": uid}
    assert usage[rel(cgroups.base)] == {"cgroup.path": rel(cgroups.base)}
    assert rel(conmon) in usage


def test_uninstrument_unloads_and_instrument_serves_again(bpf_ok, quiet, provider):
    parent, _ = quiet
    meter_provider, reader = provider
    # Earlier tests' garbage may close its fds mid-test; only what this test
    # opens must be gone at the end.
    gc.collect()
    before, fds = links_of(), open_fds()
    inst = MemcgInstrumentor(parent, ["usage"])
    inst.instrument(meter_provider=meter_provider)
    assert inst.is_instrumented_by_opentelemetry
    inst.instrument(meter_provider=meter_provider)     # a second call does nothing
    assert collect(reader)
    assert links_of() - before, "a Reader that has read holds its links"
    inst.uninstrument()
    assert not inst.is_instrumented_by_opentelemetry
    assert not links_of() - before, "uninstrument must close the Reader's links"
    assert open_fds() <= fds, f"fds left behind: {open_fds() - fds}"
    assert not any(collect(reader).values())
    inst.instrument(meter_provider=meter_provider)
    try:
        assert collect(reader)["memcg.usage"]
    finally:
        inst.uninstrument()
    assert not links_of() - before


def test_bad_arguments_are_clean_errors():
    with pytest.raises(pymemcg.UnknownStat, match="pymemcg stats"):
        MemcgInstrumentor(stats=["usage", "no_such_stat"])
    with pytest.raises(ValueError, match="seconds"):
        MemcgInstrumentor(interval=-1)


@pytest.mark.parametrize("value", BAD_INTERVALS)
def test_a_bad_interval_is_the_exporters_bad_interval(value):
    with pytest.raises(pymemcg.BadInterval, match="interval .*seconds >= 0"):
        MemcgInstrumentor(interval=value)


def test_without_opentelemetry_is_a_clean_error():
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "import pymemcg\n"
            "try:\n"
            "    import pymemcg.otel\n"
            "except pymemcg.Error as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.startswith("OpenTelemetryMissing"), out
    assert "pymemcg[otel]" in out.stdout


def test_default_instruments_are_the_semantic_conventions_alone(bpf_ok, quiet, provider):
    """MemcgInstrumentor() observes the container.* instruments only: each
    memcg.<stat> costs the SDK a data point per cgroup, so raw stats are
    observed only when asked for."""
    parent, _ = quiet
    meter_provider, reader = provider
    inst = MemcgInstrumentor(parent)
    inst.instrument(meter_provider=meter_provider)
    try:
        names = {name for name, points in collect(reader).items() if points}
    finally:
        inst.uninstrument()
    assert names, "the default instruments observed nothing"
    assert all(n.startswith("container.") for n in names), names
    assert {"container.memory.usage", "container.memory.working_set",
            "container.memory.rss"} <= names
    other = InMemoryMetricReader()
    other_provider = MeterProvider(metric_readers=[other])
    asked = MemcgInstrumentor(parent, pymemcg.DEFAULT_STATS)
    asked.instrument(meter_provider=other_provider)
    try:
        got = {name for name, points in collect(other).items() if points}
    finally:
        asked.uninstrument()
        other_provider.shutdown()
    assert {f"memcg.{s}" for s in pymemcg.DEFAULT_STATS} <= got


class _RecordingMeter:
    """An SDK meter that also records each instrument made: (kind, unit) by name."""

    def __init__(self, meter) -> None:
        self._meter = meter
        self.made: dict = {}

    def __getattr__(self, attr: str):
        real = getattr(self._meter, attr)
        if not attr.startswith("create_"):
            return real

        def create(name, *args, unit="", **kwargs):
            self.made[name] = (attr, unit)
            return real(name, *args, unit=unit, **kwargs)
        return create


class _RecordingProvider(MeterProvider):
    def get_meter(self, *args, **kwargs):
        self.meter = _RecordingMeter(super().get_meter(*args, **kwargs))
        return self.meter


#: UCUM units the instruments may have: bytes, seconds, the unity, or an annotation
OTEL_UNIT = re.compile(r"^(By|s|1|\{[a-z_]+\})$")
OTEL_NAME = re.compile(r"^memcg(\.[a-z][a-z0-9_]*)+$")


def test_raw_names_and_units_follow_the_conventions(bpf_ok, quiet):
    """Every memcg.* instrument as OpenTelemetry's naming conventions have it:
    dot-separated, no unit or "total" in the name (the instrument's UCUM unit
    says it), units By / s / 1 / {annotation}; pressure as time in seconds
    (a Counter) and its averages as ratios (Gauges, 0 to 1)."""
    parent, _ = quiet
    reader = InMemoryMetricReader()
    meter_provider = _RecordingProvider(metric_readers=[reader])
    inst = MemcgInstrumentor(parent, list(pymemcg.catalog.STATS))
    inst.instrument(meter_provider=meter_provider)
    try:
        got = collect(reader)
    finally:
        inst.uninstrument()
        meter_provider.shutdown()
    made = {n: v for n, v in meter_provider.meter.made.items() if n.startswith("memcg.")}
    assert len(made) == len(pymemcg.catalog.STATS)
    for name, (kind, unit) in made.items():
        assert OTEL_NAME.match(name), name
        for segment in name.split("."):
            assert segment != "total" and not segment.endswith(
                ("_us", "_x100", "_total", "_bytes", "_seconds", "_ratio")), name
        assert OTEL_UNIT.match(unit), (name, unit)
    for line in ("some", "full"):
        assert made[f"memcg.pressure.{line}.time"] == ("create_observable_counter", "s")
        for window in ("avg10", "avg60", "avg300"):
            assert made[f"memcg.pressure.{line}.{window}"] == ("create_observable_gauge", "1")
            for value, _, _ in got.get(f"memcg.pressure.{line}.{window}", {}).values():
                assert 0 <= value <= 1
    assert made["memcg.pgfault"] == ("create_observable_counter", "{count}")
    assert made["memcg.anon"] == ("create_observable_up_down_counter", "By")
    # a limit not set (MAX) has no value to observe; a set one is observed in By
    limits = got["memcg.limit"]
    assert limits[frozenset({("cgroup.path", rel(quiet[1]))})][:2] == (LIMIT, "By")
    assert frozenset({("cgroup.path", rel(parent))}) not in limits


def test_pressure_in_base_units():
    """Pressure's instruments are named for what they measure, their values
    divided into seconds and 0-1 ratios as the Prometheus exporter's."""
    from pymemcg.exposition import otel_raw_name
    assert otel_raw_name("pressure_some_total_us") == "memcg.pressure.some.time"
    assert otel_raw_name("pressure_full_avg300_x100") == "memcg.pressure.full.avg300"
    assert otel_raw_name("anon") == "memcg.anon"
