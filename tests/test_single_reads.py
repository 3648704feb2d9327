"""read() of a proven path in one C call (csrc/pmc_records.c): the same
Record as the Python read, for any thread, and nothing kept alive.

The C call answers only while the Reader's lock is free and keeps the GIL
from that check until the record is copied: these tests make the lock busy
(read_tree, read_many, a thread holding it) while other threads read, and
check every answer against the path's own files.
"""

from __future__ import annotations

import gc
import os
import threading
import weakref

import pytest

import pymemcg
from pymemcg import binding
from pymemcg.backends.bpf import BpfBackend
from pymemcg.decode import Record

STATS = ["limit", "usage", "anon", "file", "pgfault"]
MiB = 1 << 20


def set_limit(path: str, value: int, version: int) -> None:
    name = "memory.max" if version == 2 else "memory.limit_in_bytes"
    with open(os.path.join(path, name), "w") as f:
        f.write(str(value))


def fast_reader(**kwargs) -> pymemcg.Reader:
    reader = pymemcg.Reader(STATS, backend="bpf", shared_pins=False, **kwargs)
    if not reader.read_method.startswith("BPF_PROG_RUN"):
        reader.close()
        pytest.skip(f"no one-call read on this kernel: {reader.read_method}")
    return reader


def python_read(reader: pymemcg.Reader, path: str) -> Record:
    """The same read through the backend class's Python method."""
    return BpfBackend.read(reader._backend, path)


def test_a_proven_path_is_read_in_c(bpf_ok, cgroups, cgroup_version):
    path = cgroups.make("a")
    set_limit(path, 96 * MiB, cgroup_version)
    with fast_reader() as reader:
        backend = reader._backend
        assert type(backend.__dict__.get("read")).__name__ == "builtin_function_or_method", \
            "the backend's read is not the C call"
        # Record's slots found in its instances' memory: set in place, not by name
        assert backend._reads.slots_found()
        first = reader.read(path)   # proves the path: Python
        again = reader.read(path)   # through the route: C
        by_python = python_read(reader, path)
        for rec in (first, again, by_python):
            assert type(rec) is Record
            assert rec.path == first.path and rec.id == os.stat(path).st_ino
            assert rec["limit"] == 96 * MiB
        # the same fields, and the same types, as the Python unpack makes
        assert again._t[:5] == by_python._t[:5]
        assert [type(v) for v in again._t] == [type(v) for v in by_python._t]
        assert again.valid == by_python.valid and again._selection is by_python._selection
        assert again.keys() == tuple(STATS)


def test_every_answer_is_its_paths_cgroup_while_threads_share_a_reader(
        bpf_ok, cgroups, cgroup_version):
    # each cgroup has its own limit: an answer of another cgroup, or a
    # record torn between two runs, shows as a wrong limit or id
    paths = {}
    for i in range(8):
        path = cgroups.make(f"t{i}")
        set_limit(path, (64 + i) * MiB, cgroup_version)
        paths[path] = ((64 + i) * MiB, os.stat(path).st_ino)
    errors: list = []
    stop = threading.Event()
    with fast_reader() as reader:
        for path in paths:
            reader.read(path)

        def reads(mine):
            try:
                while not stop.is_set():
                    for path in mine:
                        rec = reader.read(path)
                        limit, ino = paths[path]
                        if rec.id != ino or rec["limit"] != limit:
                            errors.append(f"{path}: id {rec.id} limit {rec['limit']}")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        def busy():
            # the lock taken in every way a reader takes it: reads of paths
            # that get no route (not canonical: each is proven again, its
            # record written where the C call reads its own), trees, batches,
            # and held a while by a thread that does nothing under it
            try:
                while not stop.is_set():
                    for path in paths:
                        rec = reader.read(path + "/.")
                        if rec.id != paths[path][1] or rec["limit"] != paths[path][0]:
                            errors.append(f"{path}/.: id {rec.id} limit {rec['limit']}")
                    reader.read_tree(cgroups.base)
                    for rec, path in zip(reader.read_many(list(paths)), paths):
                        if rec is None or rec.id != paths[path][1]:
                            errors.append(f"read_many: {path}")
                    with reader._backend._lock:
                        stop.wait(0.001)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        names = list(paths)
        threads = [threading.Thread(target=reads, args=(names[i::4],)) for i in range(4)]
        threads += [threading.Thread(target=busy) for _ in range(2)]
        for t in threads:
            t.start()
        stop.wait(3)
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a reading thread hangs"
    assert not errors, errors[:5]


def test_a_dropped_reader_is_freed_without_the_garbage_collector(bpf_ok, cgroups):
    # the C call refers back to the backend: through a proxy, so that
    # dropping the Reader still frees its programs and links at once
    path = cgroups.make("drop")
    gc.disable()
    try:
        reader = fast_reader()
        reader.read(path)
        reader.read(path)
        backend = weakref.ref(reader._backend)
        del reader
        assert backend() is None, "the backend outlives its Reader until a collection"
    finally:
        gc.enable()


def test_a_read_held_past_its_reader_does_not_reach_freed_programs(bpf_ok, cgroups):
    path = cgroups.make("held")
    reader = fast_reader()
    reader.read(path)
    held = reader._backend.read   # the C call, bound to its Reads object
    del reader
    gc.collect()
    with pytest.raises(ReferenceError):
        held(path)


def test_closed_and_forked_readers_leave_the_c_call(bpf_ok, cgroups):
    path = cgroups.make("closed")
    reader = fast_reader()
    reader.read(path)
    backend = reader._backend
    reader.close()
    assert "read" not in vars(backend)
    with pytest.raises(pymemcg.Closed):
        reader.read(path)
    # the C object refuses what it no longer serves, with no crash
    reads = binding.records().Reads({}, Record, None, b"\x08", lambda: False, lambda p: "slow", 0)
    assert reads.read("/x") == "slow"
    reads.close()
    assert reads.read("/x") == "slow"

    # a type whose slots are not all found is served by name
    class Other:
        __slots__ = ("_t", "path")
    other = binding.records().Reads({}, Other, None, b"\x08", lambda: False, lambda p: None, 0)
    assert not other.slots_found()


def test_a_removed_cgroup_raises_through_the_c_call(bpf_ok, cgroups):
    path = cgroups.make("gone")
    with fast_reader() as reader:
        reader.read(path)
        reader.read(path)
        os.rmdir(path)
        with pytest.raises(pymemcg.CgroupNotFound):
            reader.read(path)


@pytest.mark.parametrize("fmt, widths", [
    ("<QQQII2Q14Q", bytes([8, 8, 8, 4, 4] + [8] * 16)),
    ("<Q", b"\x08"),
    ("<3I", b"\x04\x04\x04"),
])
def test_field_widths(fmt, widths):
    assert binding.field_widths(fmt) == widths


@pytest.mark.parametrize("fmt", [">QQ", "QQ", "<QH", "<Q4x", "<q"])
def test_field_widths_refuses_other_formats(fmt):
    with pytest.raises(ValueError):
        binding.field_widths(fmt)


def test_reads_checks_its_arguments(bpf_ok):
    Reads = binding.records().Reads
    ok = ({}, Record, None, b"\x08", lambda: False, lambda p: None, 0)
    Reads(*ok)
    for bad in [(None,) + ok[1:], ok[:1] + (int(),) + ok[2:], ok[:3] + (b"\x05",) + ok[4:],
                ok[:3] + (b"",) + ok[4:], ok[:3] + (b"\x08" * 257,) + ok[4:],
                ok[:4] + (None,) + ok[5:]]:
        with pytest.raises((TypeError, ValueError)):
            Reads(*bad)


def test_records_made_in_c_are_not_tracked_by_the_collector(bpf_ok, cgroups, cgroup_version):
    # a read_many of thousands made the young generation pass over each
    # Record; made in C they are not tracked (nothing in one refers back)
    paths = [cgroups.make(f"m{i}") for i in range(3)]
    for i, path in enumerate(paths):
        set_limit(path, (80 + i) * MiB, cgroup_version)
    with fast_reader() as reader:
        reader.read_many(paths)              # proves each path
        many = reader.read_many(paths)       # one batch run: Records made in C
        singles = [reader.read(p) for p in paths]
        for i, (a, b) in enumerate(zip(many, singles)):
            assert a is not None and a.id == b.id and a.path == b.path
            assert a["limit"] == b["limit"] == (80 + i) * MiB
            assert not gc.is_tracked(a) and not gc.is_tracked(a._t)
            assert not gc.is_tracked(b) and not gc.is_tracked(b._t)
