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
from pymemcg import oom, oom_metrics
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


def _kill_in(cgroup: str, argv=None) -> int:
    """Run a process (`argv`, default a Python one) that the OOM killer ends
    in `cgroup`; its pid."""
    def enter() -> None:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    proc = subprocess.Popen(argv or [sys.executable, "-c", HOG], preexec_fn=enter,
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


def _wait_until_blocked_in_poll(thread: threading.Thread, timeout: float = 10.0) -> None:
    """Until the thread sleeps in select()/poll() (the kernel's wait channel
    says so): a close() before that would test an iterator that never blocked."""
    deadline = time.monotonic() + timeout
    where = ""
    while time.monotonic() < deadline:
        with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
            where = f.read()
        if "poll" in where or "select" in where:
            return
        time.sleep(0.01)
    raise AssertionError(f"the iterating thread never blocked in select(): wchan {where!r}")


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
    _wait_until_blocked_in_poll(t)
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
                   if m.name in ("container.oom_events", "pymemcg.oom_events.lost"))

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


def _vmstat_oom_kills() -> int:
    """The kernel's own count of OOM kills on the whole machine."""
    with open("/proc/vmstat") as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    raise AssertionError("no oom_kill in /proc/vmstat")


def test_ring_pages_must_be_a_power_of_two_pages(bpf_ok):
    page = os.sysconf("SC_PAGE_SIZE")
    most = load()[1].PMC_OOM_RING_BYTES_MAX // page
    for bad in (0, -1, 3, 96, most * 2, True, 1.0, "1"):
        with pytest.raises(pymemcg.BadRingSize, match="power of two pages"):
            oom.OomEvents(ring_pages=bad)
    assert oom.ring_bytes(None, page, 1 << 30, 256 << 10) == 256 << 10
    assert oom.ring_bytes(None, 1 << 20, 1 << 30, 256 << 10) == 1 << 20
    assert oom.ring_bytes(most, page, 1 << 30, 256 << 10) == 1 << 30
    with oom.OomEvents() as events:
        assert events.ring_bytes == 256 << 10


# coreutils' dd reads /dev/zero into one 64 MiB buffer: over the 32 MiB limit
# in about a millisecond of its own, with no interpreter to start
DD_HOG = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]


def test_a_full_ring_counts_each_kill_it_could_not_hold(bpf_ok, cgroups):
    """Kills while nobody reads: a one-page ring holds a few events (long
    paths make them large), and every further kill is counted as lost, by
    the iterator (OomEventsLost) and by the exporters' counts
    (pymemcg_oom_events_lost_total comes from OomCounts.missed), so that
    events delivered + lost == the kills the kernel counts."""
    from pymemcg.oom_metrics import OomCounts

    kills = 12
    # a 200-byte name in both of an event's paths: about 800 bytes an event
    cgroup = cgroups.make("oom-lost-" + "x" * 200)
    _limit(cgroup)
    cgroup_id = os.stat(cgroup).st_ino

    with oom.OomEvents(ring_pages=1) as iterated, oom.OomEvents(ring_pages=1) as counted:
        assert iterated.ring_bytes == counted.ring_bytes == os.sysconf("SC_PAGE_SIZE")
        # other processes of the machine may OOM too: the kernel's own
        # count over the same window says how many kills there were in all
        seen_before = (iterated.seen, counted.seen)
        vm_before = _vmstat_oom_kills()
        for _ in range(kills):
            _kill_in(cgroup, DD_HOG)
        all_kills = _vmstat_oom_kills() - vm_before
        assert _oom_kill_count(cgroup) == kills
        for events, before in zip((iterated, counted), seen_before):
            assert events.seen - before == all_kills
            assert 0 < events.lost < kills, "the one-page ring held none or all"

        items = []
        while True:
            more = iterated.poll(0.2)
            if not more:
                break
            items += more
        lost = [i for i in items if isinstance(i, oom.OomEventsLost)]
        delivered = [i for i in items if isinstance(i, oom.OomEvent)]
        ours = [e for e in delivered if e.cgroup_id == cgroup_id]
        assert sum(i.count for i in lost) == lost[-1].total == iterated.lost
        assert len(delivered) + iterated.lost == iterated.seen
        assert ours, "the ring held none of this cgroup's events"
        if all_kills == kills:   # no other OOM kill on the machine meanwhile
            assert len(ours) + iterated.lost == kills
        else:
            assert len(ours) + iterated.lost >= kills

        counts = OomCounts(events=counted)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                live, _ = counts.series([cgroup_id])
                if counts.missed >= counted.lost and live.get(cgroup_id, 0) >= len(ours):
                    break
                time.sleep(0.02)
            live, _ = counts.series([cgroup_id])
            assert counts.missed == counted.lost
            if all_kills == kills:
                assert live[cgroup_id] + counts.missed == kills
        finally:
            counts.close()      # then closing its events ends its thread
            counted.close()


def test_cli_events_takes_the_rings_size(bpf_ok):
    page = os.sysconf("SC_PAGE_SIZE")
    cli = subprocess.Popen([sys.executable, "-m", "pymemcg", "events", "--ready",
                            "--ring-pages", "128"], stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(cli.stdout.readline())
    finally:
        cli.terminate()
        cli.wait(timeout=30)
    assert ready["event"] == "ready" and ready["ring_bytes"] == 128 * page
    bad = subprocess.run([sys.executable, "-m", "pymemcg", "events", "--ring-pages", "3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "power of two pages" in bad.stderr


def test_exporters_take_the_rings_size(bpf_ok, cgroups):
    """oom_ring_pages sizes the kernel ring of the exporters' OOM events
    (MemcgCollector, MemcgInstrumentor, `pymemcg export --oom-ring-pages`);
    a size the kernel cannot take is BadRingSize (exit 2 from the CLI) with
    nothing left open."""
    from conftest import require_module
    require_module("prometheus_client")
    require_module("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from pymemcg.otel import MemcgInstrumentor
    from pymemcg.prometheus import MemcgCollector

    page = os.sysconf("SC_PAGE_SIZE")
    fds_before = sorted(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    with MemcgCollector(cgroups.base, stats=["usage"], oom_events=True,
                        oom_ring_pages=2) as collector:
        assert collector.oom_rows.counts.events.ring_bytes == 2 * page
        assert "pymemcg_oom_events_lost_total 0" in collector.exposition().decode()
    instrumentor = MemcgInstrumentor(cgroups.base, oom_events=True, oom_ring_pages=4)
    instrumentor.instrument(meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    try:
        assert instrumentor.oom_counts.events.ring_bytes == 4 * page
    finally:
        instrumentor.uninstrument()

    with pytest.raises(pymemcg.BadRingSize, match="power of two pages"):
        MemcgCollector(cgroups.base, stats=["usage"], oom_events=True, oom_ring_pages=3)
    instrumentor = MemcgInstrumentor(cgroups.base, oom_events=True, oom_ring_pages=3)
    with pytest.raises(pymemcg.BadRingSize, match="power of two pages"):
        instrumentor.instrument(
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    assert instrumentor.reader is None and instrumentor.oom_counts is None
    with pytest.raises(pymemcg.InvalidArgument, match="pass oom_events=True"):
        MemcgInstrumentor(cgroups.base, oom_ring_pages=4)
    with pytest.raises(pymemcg.InvalidArgument, match="ring_pages sizes the OomEvents"):
        with oom.OomEvents() as events:
            oom_metrics.OomCounts(events=events, ring_pages=2)
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == threads_before, threading.enumerate()
    assert sorted(os.listdir("/proc/self/fd")) == fds_before

    export = [sys.executable, "-m", "pymemcg", "export", "--listen", "127.0.0.1:0",
              "--backend", "bpf", "--stats", "usage", "--oom-events"]
    cli = subprocess.Popen(export + ["--oom-ring-pages", "128", cgroups.base],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = cli.stderr.readline()
    finally:
        cli.terminate()
        cli.wait(timeout=30)
    assert f"OOM events ring {128 * page} bytes" in line, line
    bad = subprocess.run(export + ["--oom-ring-pages", "3", cgroups.base], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "power of two pages" in bad.stderr, bad.stderr
    alone = subprocess.run(export[:-1] + ["--oom-ring-pages", "2", cgroups.base],
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2 and "add --oom-events" in alone.stderr, alone.stderr


def test_otel_observes_the_kills_it_could_not_count(bpf_ok, cgroups):
    """A one-page ring and a counting thread held up (its lock taken, as by
    a slow consumer): the kills the ring could not hold are observed as
    pymemcg.oom_events.lost, what the counting says it missed, at least the
    kernel ring's own count of lost kills."""
    from conftest import require_module
    require_module("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from pymemcg.otel import MemcgInstrumentor

    cgroup = cgroups.make("oom-otel-lost-" + "x" * 200)
    _limit(cgroup)
    metrics = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metrics])
    instrumentor = MemcgInstrumentor(cgroups.base, oom_events=True, oom_ring_pages=1)
    instrumentor.instrument(meter_provider=provider)

    def lost_points() -> list:
        data = metrics.get_metrics_data()
        return [p.value for rm in (data.resource_metrics if data is not None else [])
                for sm in rm.scope_metrics for m in sm.metrics
                if m.name == "pymemcg.oom_events.lost" for p in m.data.data_points]

    try:
        counts = instrumentor.oom_counts
        assert lost_points() == [0]
        with counts._lock:
            for _ in range(12):
                _kill_in(cgroup, DD_HOG)
        assert counts.events.lost > 0, "the one-page ring held every kill"
        deadline = time.monotonic() + 10
        while counts.missed < counts.events.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lost_points() == [counts.missed] and counts.missed >= counts.events.lost
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_exporter_options_that_serve_nothing_are_refused(bpf_ok, cgroups):
    """oom_events and numa serve cAdvisor metrics: asked for where cAdvisor's
    metrics are left out, or a ring size without oom_events, they are an
    InvalidArgument (exit 2 naming the conflict) before anything loads,
    rather than options silently doing nothing."""
    from conftest import require_module
    require_module("prometheus_client")
    from pymemcg.prometheus import MemcgCollector

    for kwargs in ({"oom_events": True, "cadvisor": False}, {"oom_events": True, "local": True},
                   {"numa": True, "cadvisor": False}, {"oom_ring_pages": 4}):
        with pytest.raises(pymemcg.InvalidArgument, match="oom_events|numa"):
            MemcgCollector(cgroups.base, stats=["usage"], **kwargs)
    export = [sys.executable, "-m", "pymemcg", "export", "--listen", "127.0.0.1:0",
              "--backend", "bpf", "--stats", "usage"]
    for flags in (["--oom-events", "--no-cadvisor"], ["--oom-events", "--local"],
                  ["--numa", "--local"]):
        r = subprocess.run(export + flags + [cgroups.base], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "drop one or the other" in r.stderr, (flags, r.stderr)
