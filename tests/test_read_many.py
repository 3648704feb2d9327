"""Reader.read_many: many cgroups in one call, each answer what read() of
that path would be at the time (record id == st_ino of the directory, its
own limit), or None where no cgroup has the path; on every backend.

Real kernel, real cgroups under this process's own memory cgroup.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import pytest

import pymemcg
from pymemcg import pins, programs
from pymemcg._record_h import MANY_WARM
from pymemcg.backends.bpf_links import Routes
from pymemcg.cgroupfs import memory_mount

from conftest import MiB, in_child, workload
from test_identity import check_answer, renames_allowed, session_backend, set_limit

PAGE = os.sysconf("SC_PAGE_SIZE")
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                     "read_many.py")
STATS = ["limit", "usage", "anon", "file", "shmem"]


def counters() -> list:
    """The page-counter stats of this hierarchy: exact at any moment, unlike
    the rstat totals, so two reads of an idle cgroup agree on them."""
    if memory_mount().version == 1:
        return ["usage", "peak", "limit", "failcnt"]
    return ["usage", "peak", "limit"]


@pytest.fixture(params=["fetch", "sessions", "text"])
def reader(request, bpf_ok):
    """Each way a Reader reads: the one-call program, iterator sessions (what
    kernels without it use) and the text backend."""
    stats = counters() + ["anon", "file"]
    if request.param == "fetch":
        r = pymemcg.Reader(stats, backend="bpf", shared_pins=False)
        assert r.read_method.startswith("BPF_PROG_RUN"), r.read_method
    elif request.param == "sessions":
        r = session_backend(stats)
    else:
        r = pymemcg.Reader(stats, backend="text")
    try:
        yield r
    finally:
        r.close()


def make_limited(cgroups, names) -> list:
    """Cgroups with a limit each of their own, so that an answer shows whose it is."""
    paths = []
    for i, name in enumerate(names):
        path = cgroups.make(name)
        set_limit(path, (1 << 30) + (i + 1) * 64 * PAGE)
        paths.append(path)
    return paths


def same(a, b, c=None) -> None:
    """a is b (the same cgroup, the same counters); with c, a's counters equal
    b's or c's: reads of b before a and c after it bracket it, since a busy
    machine can drain a CPU's charge stock from an idle cgroup's usage at
    any moment."""
    assert (a.id, a.path, a.parent_id, a.level) == (b.id, b.path, b.parent_id, b.level)
    for name in counters():
        seen = [b.get(name)] if c is None else [b.get(name), c.get(name)]
        assert a.get(name) in seen, f"{a.path}: {name} {a.get(name)} not in {seen}"


def test_equals_read(cgroups, reader):
    """The same cgroups through read_many and read(): ids, paths and page
    counters exactly, with memory charged to some of them."""
    paths = make_limited(cgroups, [f"g{i}" for i in range(6)] + ["g0/sub"])
    for path in paths[:2]:
        cgroups.spawn(path, workload(anon=8 * MiB, cache=4 * MiB, shmem=2 * MiB))
    for _ in range(3):  # no route yet, a route, the same list again
        before = [reader.read(p) for p in paths]
        many = reader.read_many(paths)
        after = [reader.read(p) for p in paths]
        assert len(many) == len(paths)
        for path, a, b, c in zip(paths, many, before, after):
            check_answer(a, path)
            same(a, b, c)
    assert many[0]["usage"] >= 8 * MiB


def test_empty_list(reader):
    assert reader.read_many([]) == []
    assert reader.read_many(()) == []


def test_duplicates(cgroups, reader):
    a, b = make_limited(cgroups, ["a", "b"])
    for _ in range(2):
        got = reader.read_many([a, b, a, a, b])
        for path, rec in zip([a, b, a, a, b], got):
            check_answer(rec, path)


def test_removed_and_missing_paths_are_none(cgroups, reader):
    a, b, c = make_limited(cgroups, ["a", "b", "c"])
    reader.read_many([a, b, c])
    reader.read_many([a, b, c])
    os.rmdir(b)
    got = reader.read_many([a, b, c, os.path.join(cgroups.base, "never")])
    assert got[1] is None and got[3] is None
    check_answer(got[0], a)
    check_answer(got[2], c)
    # and again from the same list: the gone path does not linger
    assert reader.read_many([a, b, c])[1] is None


def test_other_errors_raise(cgroups, reader):
    (a,) = make_limited(cgroups, ["a"])
    with pytest.raises(pymemcg.NotACgroup):
        reader.read_many([a, "/proc"])
    with pytest.raises(pymemcg.NotACgroup):
        reader.read_many([a, 17])
    for not_a_list in (a, a.encode(), 17):  # one path, not a list of them; no list at all
        with pytest.raises(pymemcg.InvalidArgument, match="read_many takes a list of paths"):
            reader.read_many(not_a_list)


def test_rename_replace_remove_between_calls(cgroups, reader):
    """After reads that leave routes (and a reused run) behind: a renamed
    cgroup is answered at its new path and the new cgroup at the old one, a
    replaced cgroup is the new one, a removed one is None."""
    if not renames_allowed(cgroups.base):
        pytest.skip("this cgroup version does not allow renames (v2)")
    a, b, c, d = make_limited(cgroups, ["a", "b", "c", "d"])
    first = reader.read_many([a, b, c, d])
    reader.read_many([a, b, c, d])
    moved = os.path.join(cgroups.base, "moved")
    os.rename(a, moved)
    os.mkdir(a)
    set_limit(a, 3 << 30)
    os.rmdir(b)
    os.mkdir(b)
    set_limit(b, 5 << 30)
    os.rmdir(c)
    got = reader.read_many([a, b, c, d, moved])
    check_answer(got[0], a)
    assert got[0].id != first[0].id
    check_answer(got[1], b)
    assert got[1].id != first[1].id
    assert got[2] is None
    check_answer(got[3], d)
    check_answer(got[4], moved)
    assert got[4].id == first[0].id
    # rename it back over an empty name: the old cgroup again
    os.rmdir(a)
    os.rename(moved, a)
    got = reader.read_many([a, b, d])
    assert got[0].id == first[0].id
    for path, rec in zip([a, b, d], got):
        check_answer(rec, path)


def test_more_paths_than_slots(cgroups, bpf_ok, monkeypatch):
    """More distinct cgroups than the one-call program has slots (and than a
    run takes): every answer is still its own cgroup, in each call."""
    monkeypatch.setattr(programs, "MAX_FETCH_CGROUPS", 64)
    with pymemcg.Reader(STATS, backend="bpf", shared_pins=False) as r:
        fetch = r._backend._fetch
        assert fetch is not None
        n = fetch.capacity + 44
        assert n > fetch.batch_capacity
        paths = make_limited(cgroups, [f"m{i}" for i in range(n)])
        for _ in range(2):
            got = r.read_many(paths)
            assert len(got) == n
            for path, rec in zip(paths, got):
                check_answer(rec, path)
        # the first ones lost their slots to the last ones: read again
        for path, rec in zip(paths[:60], r.read_many(paths[:60])):
            check_answer(rec, path)


class CountingLib:
    """The shim's functions, counting the stash sessions (a cgroup taken
    hold of by the fetch program) made through it."""

    def __init__(self, lib) -> None:
        self.lib, self.stashes = lib, 0

    def pmc_fetch_stash(self, *args):
        self.stashes += 1
        return self.lib.pmc_fetch_stash(*args)

    def __getattr__(self, name):
        return getattr(self.lib, name)


def test_rotation_past_the_old_slot_limit_never_evicts(cgroups, bpf_ok):
    """A poller reading more cgroups than the old 256 slots in rotation, one
    by one and in lists: each cgroup is taken hold of once, and every later
    read of it goes through its route (no eviction, no slow path). A call
    of more than one run asks the program to warm the caches for each."""
    n = 300
    paths = [cgroups.make(f"rot{i}") for i in range(n)]
    with pymemcg.Reader(["usage"], backend="bpf", shared_pins=False) as r:
        fetch = r._backend._fetch
        assert fetch is not None
        lib = fetch.lib = CountingLib(fetch.lib)
        for _ in range(3):
            for p in paths:
                assert r.read(p).id == os.stat(p).st_ino
            for p, rec in zip(paths, r.read_many(paths)):
                assert rec.id == os.stat(p).st_ino
        assert lib.stashes == n
        assert len(fetch.by_id) == n and len(r._backend._routes) == n
        # the whole list again: runs of the last call's entries, no slow read
        be = r._backend
        runs = []
        real = be._batches.run_many
        be._batches.run_many = lambda *args: runs.append(args[2:]) or real(*args)
        be._read_slow = lambda p: pytest.fail(f"slow read of {p}")
        for p, rec in zip(paths, r.read_many(paths)):
            assert rec.id == os.stat(p).st_ino
        assert runs == [(be._batches.capacity, MANY_WARM),
                        (n - be._batches.capacity, MANY_WARM)]


def test_past_capacity_the_least_recently_read_go(cgroups, bpf_ok, monkeypatch):
    """More cgroups than the fetch program's slots: a cgroup read between
    every other read keeps its slot (least recently read go, not the
    oldest), the others are taken hold of again each round."""
    monkeypatch.setattr(programs, "MAX_FETCH_CGROUPS", 8)
    hot, *others = [cgroups.make(f"lru{i}") for i in range(20)]
    with pymemcg.Reader(["usage"], backend="bpf", shared_pins=False) as r:
        fetch = r._backend._fetch
        lib = fetch.lib = CountingLib(fetch.lib)
        for _ in range(2):
            for p in others:
                assert r.read(hot).id == os.stat(hot).st_ino
                assert r.read(p).id == os.stat(p).st_ino
        assert lib.stashes == 1 + 2 * len(others)
        assert len(fetch.by_id) <= 8


def test_a_run_reads_each_record_once(cgroups, bpf_ok, monkeypatch):
    """A poller's list after the first calls: one BPF_PROG_RUN per call,
    and no read() of single cgroups."""
    paths = make_limited(cgroups, [f"p{i}" for i in range(50)])
    with pymemcg.Reader(STATS, backend="bpf", shared_pins=False) as r:
        be = r._backend
        r.read_many(paths)
        r.read_many(paths)
        runs = []
        real = be._run_many

        def counting(*args):
            runs.append(args[2:])
            return real(*args)
        monkeypatch.setattr(be, "_run_many", counting)
        monkeypatch.setattr(be, "_read_slow", lambda p: pytest.fail(f"slow read of {p}"))
        for path, rec in zip(paths, r.read_many(list(paths))):
            check_answer(rec, path)
        assert runs == [(50, 0)]   # one run, read back to back: no warm-up


def test_answers_hold_only_their_records(cgroups, bpf_ok):
    """read_many's answers keep the bytes of their own records, not the
    batch elements the program wrote them into (each has room for every
    stat): a poller that keeps the last answers of thousands of cgroups
    keeps a Record and its record's bytes for each, and copies no more."""
    paths = make_limited(cgroups, [f"m{i}" for i in range(50)])
    with pymemcg.Reader(STATS, backend="bpf", shared_pins=False) as r:
        r.read_many(paths)
        record_size = r._backend.selection.record_size
        tracemalloc.start()
        try:
            answers = r.read_many(paths)
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        for path, rec in zip(paths, answers):
            check_answer(rec, path)
    # a Record object, its list entry and offset are about 120 bytes
    assert held / len(paths) < record_size + 256, \
        f"{held / len(paths):.0f} bytes held per answer, records of {record_size} bytes"


def test_fallback_without_the_one_call_program(cgroups, bpf_ok):
    """Where memcg_fetch does not load (Linux 6.1), read_many reads through
    iterator sessions, one per path, with the same answers."""
    paths = make_limited(cgroups, ["a", "b"])
    be = session_backend(STATS)
    try:
        assert be._fetch is None
        assert be.read_method.startswith("iterator session")
        for path, rec in zip(paths, be.read_many(paths + paths)):
            check_answer(rec, path)
    finally:
        be.close()


def test_forked_child(cgroups, bpf_ok):
    """A child shares no fetch program with its parent: read_many reads
    through sessions there."""
    paths = make_limited(cgroups, ["a", "b"])
    with pymemcg.Reader(STATS, backend="bpf", shared_pins=False) as r:
        r.read_many(paths)
        r.read_many(paths)

        def child():
            return [(rec.id, rec["limit"]) for rec in r.read_many(paths)]
        result = in_child(child)
        assert result[0] == "ok", result
        assert result[1] == [(os.stat(p).st_ino, r.read(p)["limit"]) for p in paths]


def test_closed(cgroups, bpf_ok):
    (a,) = make_limited(cgroups, ["a"])
    r = pymemcg.Reader(STATS, backend="bpf", shared_pins=False)
    r.read_many([a])
    r.close()
    with pytest.raises(pymemcg.Closed):
        r.read_many([a])


def test_through_shared_pins(cgroups, bpf_ok, pin_dirs):
    """A Reader in front of shared pins: the pinned cgroup through its pin,
    the others through the Reader's own backend, in one call."""
    bpffs, meta = pin_dirs
    a, b, c = make_limited(cgroups, ["a", "b", "c"])
    pin = pins.pin(a, "a", STATS, tree=False, directory=bpffs, meta_dir=meta)
    try:
        with pymemcg.Reader(STATS, backend="bpf", shared_pins=(bpffs, meta)) as r:
            assert r.backend == "pins"
            got = r.read_many([a, b, c, os.path.join(cgroups.base, "never")])
            assert got[3] is None
            for path, rec in zip([a, b, c], got):
                check_answer(rec, path)
            assert got[0].source("limit").startswith("shared pin")
            assert r.backend == "pins+bpf"
            assert not got[1].source("limit").startswith("shared pin")
    finally:
        pins.unpin(pin.path, meta)


def test_routes_count_every_change():
    """read_many reuses the last call's run while no route changed: every
    way of changing the route table must say so."""
    routes = Routes()
    seen = [routes.gen]

    def changed():
        assert routes.gen != seen[-1]
        seen.append(routes.gen)
    routes["/a"] = 1
    changed()
    routes.update({"/b": 2})
    changed()
    routes.setdefault("/c", 3)
    changed()
    del routes["/a"]
    changed()
    routes.pop("/b")
    changed()
    routes.popitem()
    changed()
    routes["/d"] = 4
    changed()
    routes.clear()
    changed()
    assert routes.get("/d") is None


def test_bench_script_runs(cgroups, bpf_ok):
    """bench/read_many.py end to end on a few cgroups (no timing is checked:
    a benchmark is not a timed test)."""
    out = subprocess.run([sys.executable, BENCH, "--n", "5", "--rounds", "2", "--calls", "20",
                          "--base", cgroups.base], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "read_many" in out.stdout and "ratio" in out.stdout
    assert not [e for e in os.scandir(cgroups.base) if e.is_dir()]
