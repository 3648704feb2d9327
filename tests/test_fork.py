"""Fork safety: what a forked child (a pre-fork server's worker, a
multiprocessing "fork" worker) can do with pymemcg, whatever the parent's
other threads were doing at the moment of fork.

fork() copies the calling thread only: a lock that another thread held then
stays held in the child, by no one, forever. Every lock of pymemcg's (the C
shim's, each Reader's and backend's, the exporter's shared snapshot and
writer, the kernel facts cache) must be free in the child, and the at-fork
hooks that free them must not fail on an object another thread was still
building. Values read in the children are compared with memory.stat, as
test_parity does: let the cgroup go quiet, read, and require equality.

Children are forked with os.fork (conftest.in_child: an alarm kills a child
that hangs, and the test fails) and with multiprocessing's "fork" start
method (joined with a timeout, killed by pid if still running).
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import sys
import threading
import time
import warnings
from typing import Callable, List, Sequence, Tuple

import pytest

import pymemcg
from pymemcg import forksafe
from pymemcg import kernel_probe as kernel_facts_mod
from pymemcg.backends.bpf_links import BpfSelection
from pymemcg.cgroupfs import memory_mount

from conftest import MiB, in_child, require_module, workload
from test_parity import assert_parity, kernel_values

# stats every memory.stat has; few, so that each program loads quickly
STATS = ["usage", "anon", "file", "shmem", "file_mapped", "pgfault", "inactive_anon",
         "active_file"]
# at least this many of STATS compared with memory.stat per record
MIN_COMPARED = 6
# a child that takes longer than this hung (a Reader loads in about 1 s here)
CHILD_SECONDS = 60


def reader() -> pymemcg.Reader:
    return pymemcg.Reader(stats=STATS, backend="bpf", shared_pins=False)


def quiet(read: Callable[[], Sequence], paths: List[str], version: int) -> Tuple[list, list]:
    """read() (records aligned with paths) and memory.stat of each path,
    taken while nothing changed in between (reading memory.stat flushes)."""
    for _ in range(50):
        before = [kernel_values(p, version, False) for p in paths]
        got = list(read())
        after = [kernel_values(p, version, False) for p in paths]
        if before == after:
            return got, after
        time.sleep(0.2)
    raise AssertionError(f"{paths} never went quiet")


def compare(records: Sequence, paths: List[str], expected: List[dict]) -> int:
    """Each record is its path's cgroup and equals memory.stat; stats compared."""
    compared = 0
    for rec, path, want in zip(records, paths, expected):
        assert rec is not None, f"{path}: no record"
        assert rec.id == os.stat(path).st_ino, path
        n = assert_parity(rec, want)
        assert n >= MIN_COMPARED, f"{path}: only {n} stats compared"
        compared += n
    return compared


def compare_every_read(r: pymemcg.Reader, root: str, paths: List[str], version: int) -> int:
    """read(), read_many() and read_tree() of paths (all under root) through
    r, each compared with memory.stat; stats compared in all."""
    compared = 0
    for path in paths:
        got, want = quiet(lambda: [r.read(path)], [path], version)
        compared += compare(got, [path], want)
    got, want = quiet(lambda: r.read_many(paths), paths, version)
    compared += compare(got, paths, want)

    def tree() -> list:
        snap = r.read_tree(root)
        return [snap.by_id(os.stat(p).st_ino) for p in paths]
    got, want = quiet(tree, paths, version)
    return compared + compare(got, paths, want)


@pytest.fixture
def loaded(cgroups):
    """A cgroup tree with memory charged: (root, [root and its cgroups])."""
    a, c = cgroups.make("p/a"), cgroups.make("p/b/c")
    cgroups.spawn(a, workload(anon=8 * MiB, cache=4 * MiB, shmem=2 * MiB))
    cgroups.spawn(c, workload(anon=4 * MiB, cache=2 * MiB, shmem=1 * MiB))
    os.sync()
    root = os.path.dirname(a)
    return root, [root, a, os.path.dirname(c), c]


def in_child_holding(locks: Sequence, fn: Callable[[], object], **kwargs) -> tuple:
    """in_child(fn) forked while another thread holds every lock in `locks`
    (as a thread inside the code they guard would), released afterwards."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        taken.set()
        release.wait(2 * CHILD_SECONDS)
        for lock in reversed(locks):
            lock.release()
    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        assert taken.wait(30), "the holding thread did not get the locks"
        return in_child(fn, timeout=CHILD_SECONDS, **kwargs)
    finally:
        release.set()
        thread.join(30)


class Looping:
    """fn() in a thread, again and again until stop(): `done` counts the
    calls that returned; the first exception ends the loop, in `errors`."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.done = 0
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        while not self._stop.is_set():
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - the test reports it
                self.errors.append(repr(e))
                return
            self.done += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CHILD_SECONDS)
        assert not self._thread.is_alive(), "the looping thread hung"


def _child_main(target: Callable[[], object], send) -> None:
    try:
        send.send(("ok", target()))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        send.send(("raised", repr(e)))
    finally:
        send.close()


def in_children(target: Callable[[], object], n: int, spacing: float = 0.0) -> list:
    """target() in n multiprocessing "fork" children that run at once, forked
    `spacing` seconds apart: per child ("ok", what it returned), ("raised",
    repr of the exception), ("died", pid) or ("hung", pid), the last for a
    child still running CHILD_SECONDS after the last fork (killed then)."""
    ctx = multiprocessing.get_context("fork")
    procs = []
    results = []
    try:
        for i in range(n):
            if i:
                time.sleep(spacing)
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child_main, args=(target, send))
            proc.start()
            send.close()
            procs.append((proc, recv))
        deadline = time.monotonic() + CHILD_SECONDS
        for proc, recv in procs:
            if not recv.poll(max(0.0, deadline - time.monotonic())):
                results.append(("hung", proc.pid))
                continue
            try:
                results.append(recv.recv())
            except EOFError:
                results.append(("died", proc.pid))
    finally:
        for proc, recv in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
            recv.close()
    return results


# --------------------------------------------------------------------------
# a thread makes and closes Readers while the main thread forks

def test_fork_while_another_thread_makes_and_closes_readers(bpf_ok, loaded, cgroup_version):
    """Most of a Reader's making is the programs' load, under the C shim's
    log lock: a fork then copied that lock held, and the child's first
    Reader waited for it forever. Each child makes a Reader and compares
    its reads with memory.stat; five children, forked while the other
    thread makes Readers one after another, first one by one (os.fork),
    then at once (multiprocessing)."""
    root, paths = loaded

    def make_and_read() -> None:
        with reader() as r:
            r.read(paths[1])

    def child() -> int:
        with reader() as r:
            got, want = quiet(lambda: [r.read(paths[1])], paths[1:2], cgroup_version)
            return compare(got, paths[1:2], want)

    churn = Looping(make_and_read)
    try:
        # fork only once the thread is in its loop, making a Reader after another
        deadline = time.monotonic() + CHILD_SECONDS
        while not churn.done and not churn.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        results = [in_child(child, timeout=CHILD_SECONDS) for _ in range(2)]
        if all(result[0] == "ok" for result in results):
            results += in_children(child, 3, spacing=0.3)
    finally:
        churn.stop()
    assert not churn.errors, churn.errors
    assert churn.done, "the other thread made no Reader: nothing was tested"
    assert [result[0] for result in results] == ["ok"] * 5, results
    assert all(compared >= MIN_COMPARED for _, compared in results)


# --------------------------------------------------------------------------
# one Reader, made in the parent, used by several children at once

def test_parents_reader_in_concurrent_children(bpf_ok, loaded, cgroup_version):
    """A pre-fork server: the parent makes a Reader (with fetch slots, links
    and a read_many plan in place), then forks four workers while one of its
    threads keeps reading through the same Reader; the workers read at the
    same time as each other and the parent, through the inherited program."""
    root, paths = loaded
    rounds = 2
    with reader() as r:
        parent_method = r.read_method
        compare_every_read(r, root, paths, cgroup_version)
        r.read_many(paths)      # a second call: the parent's batched plan

        def child() -> tuple:
            compared = sum(compare_every_read(r, root, paths, cgroup_version)
                           for _ in range(rounds))
            return compared, r.read_method

        def parent_reads() -> None:
            r.read_many(paths)
            r.read_tree(root)
        parent = Looping(parent_reads)
        try:
            results = in_children(child, 4)
        finally:
            parent.stop()
        assert not parent.errors, parent.errors
        assert parent.done, "the parent did not read meanwhile: nothing was tested"
        for result in results:
            assert result[0] == "ok", results
            compared, method = result[1]
            assert compared >= rounds * 3 * len(paths) * MIN_COMPARED
            assert method.startswith("iterator session"), method
        # the parent reads as before, with its own one-call program if it had one
        assert r.read_method == parent_method
        compare_every_read(r, root, paths, cgroup_version)


# --------------------------------------------------------------------------
# the exporter's locks

def _exported(text: str, cgroup: str) -> dict:
    """memcg_<stat> values of one cgroup label in an exposition: stat -> value."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("memcg_") and sample.labels.get("cgroup") == cgroup:
                name = sample.name[len("memcg_"):]
                out[name[:-len("_total")] if name.endswith("_total") else name] = \
                    int(sample.value)
    return out


def _observed(metric_reader, cgroup: str) -> dict:
    """memcg.<stat> values of one cgroup.path in a collection: stat -> value."""
    out = {}
    data = metric_reader.get_metrics_data()
    for rm in (data.resource_metrics if data is not None else []):
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for point in m.data.data_points:
                    if m.name.startswith("memcg.") and \
                            point.attributes.get("cgroup.path") == cgroup:
                        out[m.name[len("memcg."):]] = int(point.value)
    return out


def compare_exported(values_of: Callable[[str], dict], paths: List[str], version: int) -> int:
    """values_of(cgroup label) -> {stat: value} of one export (a scrape, a
    collection), taken again until memory.stat held still around it: each
    path's values equal memory.stat. Values compared."""
    mountpoint = memory_mount().mountpoint
    labels = ["/" + os.path.relpath(p, mountpoint) for p in paths]
    got, want = quiet(lambda: [values_of(label) for label in labels], paths, version)
    compared = 0
    for label, values, expected in zip(labels, got, want):
        same = {k: v for k, v in expected.items() if k in values}
        assert len(same) >= MIN_COMPARED, (label, values, expected)
        assert {k: values[k] for k in same} == same, label
        compared += len(same)
    return compared


def test_fork_while_a_thread_holds_the_exporters_locks(bpf_ok, loaded, cgroup_version):
    """A thread inside a scrape holds the collector's, the shared snapshot's
    and the writer's locks (and one inside close() the Reader's): the child
    still scrapes, with values equal to memory.stat, and closes."""
    require_module("prometheus_client")
    from pymemcg.prometheus import MemcgCollector
    root, paths = loaded
    with MemcgCollector(root=root, stats=STATS, backend="bpf", min_interval=0) as collector:
        collector.exposition()

        def child() -> int:
            def scrape(label: str) -> dict:
                return _exported(collector.exposition().decode(), label)
            compared = compare_exported(scrape, paths, cgroup_version)
            collector.close()
            return compared

        result = in_child_holding([collector._lock, collector.shared._lock,
                                   collector.writer._lock, collector.reader._lock], child)
        assert result[0] == "ok", result
        assert result[1] >= len(paths) * MIN_COMPARED
        collector.exposition()      # the parent's exporter is unaffected


def test_fork_while_a_thread_holds_the_otel_lock(bpf_ok, loaded, cgroup_version):
    """A thread inside a collection holds the instrumentor's lock (for a
    whole tree read): the child still collects, with values equal to
    memory.stat, and uninstruments."""
    require_module("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from pymemcg.otel import MemcgInstrumentor
    root, paths = loaded
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    instrumentor = MemcgInstrumentor(root=root, stats=STATS, backend="bpf")
    instrumentor.instrument(meter_provider=provider)
    try:
        def child() -> int:
            compared = compare_exported(lambda label: _observed(metric_reader, label), paths,
                                        cgroup_version)
            instrumentor.uninstrument()
            return compared

        result = in_child_holding([instrumentor._lock], child)
        assert result[0] == "ok", result
        assert result[1] >= len(paths) * MIN_COMPARED
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_fork_while_a_thread_holds_the_web_configs_lock():
    """The exporter's basic-auth cache: a child still checks a password."""
    bcrypt = require_module("bcrypt")
    from pymemcg.web_config import WebConfig
    config = WebConfig(path="web.yml",
                       users={"prometheus": bcrypt.hashpw(b"secret", bcrypt.gensalt(4))})
    good = "Basic " + base64.b64encode(b"prometheus:secret").decode()
    bad = "Basic " + base64.b64encode(b"prometheus:wrong").decode()
    assert config.authorized(good)
    result = in_child_holding([config._lock],
                              lambda: (config.authorized(good), config.authorized(bad)))
    assert result == ("ok", (True, False)), result


# --------------------------------------------------------------------------
# the at-fork hooks

def test_fork_while_a_backend_is_half_built(bpf_ok, loaded, cgroup_version, monkeypatch):
    """A thread is inside BpfBackend.__init__ (its program loading) at fork,
    and another holds a built backend's lock: the child's at-fork hook must
    not raise on the half-built one, and must still reset every other one
    (its lock free, its one-call program left to the parent)."""
    root, paths = loaded
    unraisable: List[str] = []
    monkeypatch.setattr(sys, "unraisablehook",
                        lambda args: unraisable.append(f"{args.exc_type.__name__}: "
                                                       f"{args.exc_value}"))
    built = [reader(), reader()]
    half: list = []
    try:
        for r in built:
            compare_every_read(r, root, paths, cgroup_version)
        entered, go_on = threading.Event(), threading.Event()
        real_load = BpfSelection.iterator

        def held_load(self, capacity: int):
            entered.set()
            go_on.wait(120)
            return real_load(self, capacity)
        monkeypatch.setattr(BpfSelection, "iterator", held_load)
        maker = threading.Thread(target=lambda: half.append(reader()), daemon=True)
        maker.start()
        assert entered.wait(30), "the Reader being made never reached its load"

        def child() -> tuple:
            methods = [r.read_method for r in built]
            compared = sum(compare_every_read(r, root, paths, cgroup_version) for r in built)
            built[1].close()
            return list(unraisable), methods, compared

        try:
            result = in_child_holding([built[0]._backend._lock, built[1]._lock], child)
        finally:
            go_on.set()
            maker.join(CHILD_SECONDS)
        assert result[0] == "ok", result
        errors, methods, compared = result[1]
        assert errors == [], f"the at-fork hook raised in the child: {errors}"
        assert all(m.startswith("iterator session") for m in methods), methods
        assert compared >= 2 * 3 * len(paths) * MIN_COMPARED
        assert len(half) == 1, "the Reader being made at fork was not finished in the parent"
    finally:
        for r in built + half:
            r.close()


class _Owner:
    """Something with a lock, for the hook's own rules."""

    def __init__(self, fail: bool) -> None:
        self._lock = threading.Lock()
        self.fail = fail
        self.reset_in_child = False

    def reset(self) -> None:
        if self.fail:
            raise AttributeError("half built")
        self.reset_in_child = True


def test_one_failing_reset_skips_no_other_owner(monkeypatch):
    """Owners are reset one by one in the child: one whose reset raises does
    not stop the others from getting new locks and their reset; the hook
    itself never raises, and says which reset failed."""
    unraisable: List[str] = []
    monkeypatch.setattr(sys, "unraisablehook",
                        lambda args: unraisable.append(repr(args.exc_value)))
    owners = [_Owner(fail=i % 2 == 0) for i in range(6)]
    for owner in owners:
        forksafe.renew_in_child(owner, "_lock", reset=_Owner.reset)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = in_child_holding([o._lock for o in owners],
                                  lambda: (list(unraisable),
                                           [o._lock.acquire(timeout=5) for o in owners],
                                           [o.reset_in_child for o in owners],
                                           [str(w.message) for w in said]))
    assert result[0] == "ok", result
    errors, acquired, reset, messages = result[1]
    assert errors == []
    assert acquired == [True] * len(owners)
    assert reset == [not o.fail for o in owners]
    failed = [m for m in messages if "the reset of a _Owner failed" in m]
    assert len(failed) == sum(o.fail for o in owners), messages


def test_fork_while_a_thread_holds_the_kernel_facts_lock(bpf_ok, loaded, cgroup_version):
    """Making a Reader reads the kernel's facts under a process-wide lock:
    a child must be able to make one while a parent thread held it."""
    root, paths = loaded

    def child() -> int:
        with reader() as r:
            return compare_every_read(r, root, paths[:2], cgroup_version)
    result = in_child_holding([kernel_facts_mod._lock], child)
    assert result[0] == "ok", result
