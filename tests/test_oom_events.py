"""OOM kill events (pymemcg.oom, bpf_src/memcg_oom.bpf.c) on the real kernel:
a real OOM kill in a test cgroup that is removed right after, compared with
what the kernel itself says of it (the cgroup's own oom_kill count, and its
"Killed process" line where /dev/kmsg is readable)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import pymemcg
from pymemcg import oom
from pymemcg.binding import load
from pymemcg.cgroupfs import memory_mount

LIMIT = 32 << 20
HOG = "b = bytearray(256 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
KILLED = re.compile(r"Killed process (\d+) \((.*?)\) total-vm:(\d+)kB, anon-rss:(\d+)kB, "
                    r"file-rss:(\d+)kB, shmem-rss:(\d+)kB, UID:(\d+) pgtables:(\d+)kB "
                    r"oom_score_adj:(-?\d+)")


@pytest.fixture
def oom_events(bpf_ok):
    with oom.OomEvents() as events:
        yield events


def _limit(cgroup: str) -> None:
    """A 32 MiB limit, swap kept out of it where the kernel has swap."""
    def write(name: str, value: str) -> None:
        with open(os.path.join(cgroup, name), "w") as f:
            f.write(value)
    if memory_mount().version == 1:
        write("memory.limit_in_bytes", str(LIMIT))
        if os.path.exists(os.path.join(cgroup, "memory.memsw.limit_in_bytes")):
            write("memory.memsw.limit_in_bytes", str(LIMIT))
    else:
        write("memory.max", str(LIMIT))
        if os.path.exists(os.path.join(cgroup, "memory.swap.max")):
            write("memory.swap.max", "0")


def _oom_kill_count(cgroup: str) -> int:
    name = "memory.oom_control" if memory_mount().version == 1 else "memory.events"
    with open(os.path.join(cgroup, name)) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    raise AssertionError(f"no oom_kill in {name}")


def _kill_in(cgroup: str) -> int:
    """Run a process that the OOM killer ends in `cgroup`; its pid."""
    def enter() -> None:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    proc = subprocess.Popen([sys.executable, "-c", HOG], preexec_fn=enter,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=120) == -9, "the workload was not OOM-killed"
    return proc.pid


def _events_of(items, pid: int, timeout: float, events: oom.OomEvents):
    """Every event of `pid` that arrives within `timeout` seconds (waiting
    out the whole time, so that a second event would be seen)."""
    got = [i for i in items if isinstance(i, oom.OomEvent) and i.tgid == pid]
    assert not [i for i in items if isinstance(i, oom.OomEventsLost)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        more = events.poll(max(0.0, deadline - time.monotonic()))
        assert not [i for i in more if isinstance(i, oom.OomEventsLost)]
        got += [i for i in more if isinstance(i, oom.OomEvent) and i.tgid == pid]
        if got and not more:
            break
    return got


def _kmsg_line(pid: int):
    """The kernel's "Killed process" line for pid, or None if /dev/kmsg is
    not readable here."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    found = None
    try:
        while True:
            try:
                rec = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:   # EPIPE: overwritten records, go on
                continue
            m = KILLED.search(rec)
            if m and int(m.group(1)) == pid:
                found = m
    finally:
        os.close(fd)
    return found


def test_event_layout_matches_the_compiled_struct():
    ffi, _ = load()
    assert ffi.sizeof("struct pmc_oom_event") == oom.EVENT_SIZE
    assert ffi.offsetof("struct pmc_oom_event", "comm") == oom.EVENT_SIZE - 16
    assert ffi.offsetof("struct pmc_oom_event", "pid") == 13 * 8


def test_kill_in_a_cgroup_removed_right_after_is_reported_once_with_its_path(
        oom_events, cgroups):
    # a name with a byte that is not UTF-8 and a space: carried as bytes
    name = os.fsdecode(b"oom victim \xff")
    cgroup = cgroups.make(name)
    _limit(cgroup)
    cgroup_id = os.stat(cgroup).st_ino
    pid = _kill_in(cgroup)
    kernel_count = _oom_kill_count(cgroup)
    os.rmdir(cgroup)          # gone before anything is read from the ring

    got = _events_of([], pid, 2.0, oom_events)
    # where the kernel has kprobes (its kprobe PMU), they are what serves
    if os.path.exists("/sys/bus/event_source/devices/kprobe"):
        assert oom_events.method == "kprobes"
    assert len(got) == 1 == kernel_count, got
    ev = got[0]
    mount = memory_mount().mountpoint
    assert ev.cgroup == cgroup[len(mount):]
    assert ev.cgroup_id == cgroup_id
    assert ev.pid == ev.tgid == pid
    assert ev.comm == os.path.basename(sys.executable).encode()[:15]
    assert abs(ev.time - time.time()) < 60
    assert json.loads(json.dumps(ev.as_dict()))["cgroup"].endswith("oom victim %FF")
    if ev.oom_known:       # kprobes: the OOM's side, the same cgroup here
        assert ev.global_oom is False and ev.constraint == "memcg"
        assert ev.oom_cgroup == ev.cgroup and ev.oom_cgroup_id == cgroup_id
        assert ev.oom_limit_kb == LIMIT >> 10
        assert ev.oom_usage_kb is not None and ev.oom_usage_kb <= LIMIT >> 10
    else:
        assert ev.global_oom is None and ev.oom_cgroup is None and oom_events.method == "tracepoints"

    line = _kmsg_line(pid)
    if line is not None:   # the kernel's own figures for this kill
        total_vm, anon, file_, shmem, uid, pgtables, adj = (int(line.group(i)) for i in range(3, 10))
        assert (ev.total_vm_kb, ev.uid, ev.pgtables_kb, ev.oom_score_adj) == \
            (total_vm, uid, pgtables, adj)
        if ev.rss_exact:
            assert (ev.anon_rss_kb, ev.file_rss_kb, ev.shmem_rss_kb) == (anon, file_, shmem)
        else:   # per-CPU deltas the kernel may sum in: at most a batch per CPU
            ncpu = os.cpu_count() or 1
            slack = ncpu * max(32, 2 * ncpu) * (os.sysconf("SC_PAGE_SIZE") >> 10)
            for mine, kernels in ((ev.anon_rss_kb, anon), (ev.file_rss_kb, file_),
                                  (ev.shmem_rss_kb, shmem)):
                assert abs(mine - kernels) <= slack, (mine, kernels)


def test_thread_asyncio_and_close(oom_events, cgroups):
    """The fd form on asyncio's loop gets a kill; close() from another
    thread ends a blocked iterator; nothing is left open."""
    cgroup = cgroups.make("oom-async")
    _limit(cgroup)

    async def first_event():
        async for item in oom_events.aiter():
            if isinstance(item, oom.OomEvent) and item.cgroup.endswith("/oom-async"):
                return item
        return None

    async def main():
        task = asyncio.ensure_future(first_event())
        await asyncio.sleep(0)
        pid = await asyncio.get_running_loop().run_in_executor(None, _kill_in, cgroup)
        return pid, await asyncio.wait_for(task, 30)

    pid, ev = asyncio.run(main())
    assert ev is not None and ev.tgid == pid

    fds_before = len(os.listdir("/proc/self/fd"))
    events = oom.OomEvents()
    ended = threading.Event()
    seen = []
    t = threading.Thread(target=lambda: (seen.extend(events), ended.set()), daemon=True)
    t.start()
    time.sleep(0.2)
    events.close()
    assert ended.wait(5), "close() did not end the blocked iterator"
    with pytest.raises(pymemcg.Closed):
        events.read()
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_cli_events_writes_a_json_line_per_kill(bpf_ok, cgroups):
    cgroup = cgroups.make("oom-cli")
    _limit(cgroup)
    cli = subprocess.Popen([sys.executable, "-m", "pymemcg", "events", "--ready", "--count", "1"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(cli.stdout.readline())["event"] == "ready"
        pid = _kill_in(cgroup)
        line = json.loads(cli.stdout.readline())
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert line["event"] == "oom_kill" and line["tgid"] == pid
    assert line["cgroup"] == cgroup[len(memory_mount().mountpoint):]


def test_exporters_count_a_kill_in_a_removed_cgroup_then_drop_it(bpf_ok, cgroups):
    """container_oom_events_total (Prometheus) and container.oom_events
    (OpenTelemetry) from events: a kill whose cgroup is gone before the
    scrape is exported under its path, a live cgroup without kills is 0,
    and the removed cgroup's series goes once `oom_retention` has passed."""
    from conftest import require_module
    require_module("prometheus_client")
    require_module("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from pymemcg.otel import MemcgInstrumentor
    from pymemcg.prometheus import MemcgCollector

    mount = memory_mount().mountpoint
    live = cgroups.make("oom-live")
    victim = cgroups.make("oom-export")
    _limit(victim)
    rel_live, rel_victim = live[len(mount):], victim[len(mount):]
    retention = 1.0

    def sample(text: str, path: str):
        want = f'container_oom_events_total{{id="{path}"'
        for line in text.splitlines():
            if line.startswith(want):
                return int(line.rsplit(" ", 1)[1])
        return None

    def otel_points(metrics: InMemoryMetricReader) -> dict:
        out = {}
        data = metrics.get_metrics_data()
        for rm in (data.resource_metrics if data is not None else []):
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "container.oom_events":
                        for dp in m.data.data_points:
                            out[dp.attributes["cgroup.path"]] = dp.value
        return out

    fds_before = len(os.listdir("/proc/self/fd"))
    metrics = InMemoryMetricReader()
    # rooted at the test's own cgroups: the host's other cgroups (other
    # tests' included) stay out of the SDK's cardinality limit
    instrumentor = MemcgInstrumentor(cgroups.base, oom_events=True, oom_retention=retention)
    instrumentor.instrument(meter_provider=MeterProvider(metric_readers=[metrics]))
    try:
        with MemcgCollector(cgroups.base, stats=["usage"], oom_events=True,
                            oom_retention=retention,
                            min_interval=0) as collector:
            text = collector.exposition().decode()
            assert sample(text, rel_live) == 0 and sample(text, rel_victim) == 0
            assert "pymemcg_oom_events_lost_total 0" in text
            _kill_in(victim)
            os.rmdir(victim)
            deadline = time.monotonic() + 10
            while sample(text, rel_victim) != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
                text = collector.exposition().decode()
            assert sample(text, rel_victim) == 1 and sample(text, rel_live) == 0
            points = otel_points(metrics)
            deadline = time.monotonic() + 10
            while points.get(rel_victim) != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
                points = otel_points(metrics)
            assert points[rel_victim] == 1 and points[rel_live] == 0
            time.sleep(retention + 0.2)
            collector.exposition()          # the scrape that ages it out
            assert sample(collector.exposition().decode(), rel_victim) is None
            otel_points(metrics)
            assert rel_victim not in otel_points(metrics)
    finally:
        instrumentor.uninstrument()
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_exporters_say_when_oom_counting_stops(bpf_ok, cgroups):
    """Once the counting thread ends (here: its OomEvents closed under it),
    a scrape says so in pymemcg_oom_events_error (both writers) and leaves
    the counts out, and container.oom_events observes nothing, rather than
    counts that silently stop growing."""
    from conftest import require_module
    require_module("prometheus_client")
    require_module("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry, generate_latest
    from pymemcg.otel import MemcgInstrumentor
    from pymemcg.prometheus import MemcgCollector

    cgroups.make("oom-counting")

    def oom_points(metrics: InMemoryMetricReader) -> int:
        data = metrics.get_metrics_data()
        return sum(len(m.data.data_points)
                   for rm in (data.resource_metrics if data is not None else [])
                   for sm in rm.scope_metrics for m in sm.metrics
                   if m.name == "container.oom_events")

    def stop(counts) -> None:
        counts.events.close()
        deadline = time.monotonic() + 5
        while counts.stopped is None and time.monotonic() < deadline:
            time.sleep(0.01)

    metrics = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metrics])
    instrumentor = MemcgInstrumentor(cgroups.base, oom_events=True)
    instrumentor.instrument(meter_provider=provider)
    try:
        with MemcgCollector(cgroups.base, stats=["usage"], oom_events=True,
                            min_interval=0) as collector:
            registry = CollectorRegistry()
            registry.register(collector)
            for text in (collector.exposition().decode(), generate_latest(registry).decode()):
                assert re.search(r"^pymemcg_oom_events_error 0(\.0)?$", text, re.M), text
                assert re.search(r"^container_oom_events_total\{", text, re.M)
                assert re.search(r"^pymemcg_oom_events_lost_total ", text, re.M)
            assert oom_points(metrics) > 0 and instrumentor.oom_error is None

            stop(collector.oom_rows.counts)
            assert collector.oom_rows.counts.stopped == "the OOM events were closed"
            for text in (collector.exposition().decode(), generate_latest(registry).decode()):
                assert re.search(r"^pymemcg_oom_events_error 1(\.0)?$", text, re.M), text
                assert "# TYPE container_oom_events_total counter" in text
                assert not re.search(r"^container_oom_events_total\{", text, re.M)
                assert not re.search(r"^pymemcg_oom_events_lost_total ", text, re.M)

            stop(instrumentor.oom_counts)
            assert instrumentor.oom_error and oom_points(metrics) == 0
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
