"""'Gone' means gone: a cgroup removed before or during a read is
CgroupNotFound from read() and read_tree(), and None in read_many()'s
answer (every other answer of the batch intact), through BPF, text and
shared pins. Never NotACgroup, NoMemoryController or ReadError: those are
for paths that exist and are not memory cgroups, and for reads that fail.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import pytest

import pymemcg
from pymemcg import pins
from pymemcg.backends import text as text_mod
from pymemcg.cgroupfs import memory_mount, resolve_cgroup

from test_identity import session_backend

STATS = ["limit", "usage", "anon", "file"]
# calls per reader, 100,000 in all: fewer where a read costs more (text
# reads files), so that each reader takes a few seconds
CALLS = {"bpf": 40_000, "sessions": 20_000, "text": 10_000, "pins": 30_000}
STABLE_LIMIT = 48 << 20            # bytes, set on the stable cgroup


def _limit_file() -> str:
    return "memory.limit_in_bytes" if memory_mount().version == 1 else "memory.max"


class Flapper:
    """A thread that makes and removes one cgroup directory in a loop,
    counting the cycles."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.cycles = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            if os.path.isdir(self.path):  # made by the test: its removal comes first
                os.rmdir(self.path)
            while not self._stop.is_set():
                os.mkdir(self.path)
                os.rmdir(self.path)
                self.cycles += 1
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def __enter__(self) -> "Flapper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the mkdir/rmdir thread hung"
        if os.path.isdir(self.path):
            os.rmdir(self.path)
        assert self.error is None, f"the mkdir/rmdir thread failed: {self.error!r}"


def _stress(reader, stable: str, flapping: str, calls: int) -> collections.Counter:
    """read(flapping), read_many([stable, flapping]) and, one call in 16,
    read_tree(flapping), `calls` calls in all while a thread makes and
    removes flapping. Only these outcomes count; anything else raises:
    stable always a Record of its own cgroup and limit; flapping a Record
    of a cgroup at that path (or a one-cgroup Snapshot), or CgroupNotFound
    (None in read_many)."""
    stable_id = os.stat(stable).st_ino
    stable_rel = resolve_cgroup(stable).relpath
    flapping_rel = stable_rel.rsplit("/", 1)[0] + "/" + os.path.basename(flapping)
    seen: collections.Counter = collections.Counter()

    def check_stable(rec) -> None:
        assert rec is not None, "read_many lost the stable cgroup's answer"
        assert (rec.id, rec.path, rec["limit"]) == (stable_id, stable_rel, STABLE_LIMIT)

    def check_flapping(rec) -> None:
        assert rec.path == flapping_rel and rec.id not in (0, stable_id)
        assert rec["usage"] >= 0 and rec["limit"] > 0

    for i in range(calls):
        if i % 16 == 15:
            try:
                snap = reader.read_tree(flapping)
            except pymemcg.CgroupNotFound:
                seen["tree gone"] += 1
                continue
            assert list(snap) == [flapping_rel]
            check_flapping(snap[flapping_rel])
            seen["tree present"] += 1
        elif i % 2:
            got = reader.read_many([stable, flapping])
            assert len(got) == 2
            check_stable(got[0])
            if got[1] is None:
                seen["many gone"] += 1
            else:
                check_flapping(got[1])
                seen["many present"] += 1
        else:
            try:
                rec = reader.read(flapping)
            except pymemcg.CgroupNotFound:
                seen["read gone"] += 1
                continue
            check_flapping(rec)
            seen["read present"] += 1
    return seen


@pytest.fixture
def pair(cgroups):
    """(stable, flapping): a cgroup with a known limit that stays, and the
    path the Flapper makes and removes beside it."""
    stable = cgroups.make("stable")
    with open(os.path.join(stable, _limit_file()), "w") as f:
        f.write(str(STABLE_LIMIT))
    return stable, os.path.join(cgroups.base, "flapping")


def _run(label: str, reader, stable: str, flapping: str) -> None:
    calls = CALLS[label]
    started = time.monotonic()
    with Flapper(flapping) as flapper:
        seen = _stress(reader, stable, flapping, calls)
    # both outcomes of each call, or the test proved nothing
    for call in ("read", "many", "tree"):
        assert seen[f"{call} present"] and seen[f"{call} gone"], (call, dict(seen))
    print(f"{label}: {calls} calls in {time.monotonic() - started:.1f} s "
          f"against {flapper.cycles} mkdir/rmdir cycles: {dict(seen)}")


@pytest.mark.parametrize("backend", ["bpf", "sessions", "text"])
def test_reads_against_mkdir_rmdir_loop(bpf_ok, pair, backend):
    stable, flapping = pair
    if backend == "sessions":
        reader = session_backend(STATS)
    else:
        reader = pymemcg.Reader(STATS, backend=backend, shared_pins=False)
    try:
        _run(backend, reader, stable, flapping)
    finally:
        reader.close()


def test_reads_through_shared_pins_against_mkdir_rmdir_loop(bpf_ok, pair, pin_dirs):
    """The stable cgroup and the first flapping cgroup are pinned: the
    Reader reads through the pins where they serve, through its own program
    where not (the later flapping cgroups, every tree)."""
    stable, flapping = pair
    bpffs, meta = pin_dirs
    os.mkdir(flapping)
    made = [pins.pin(stable, "stable", STATS, tree=False, directory=bpffs, meta_dir=meta),
            pins.pin(flapping, "flapping", STATS, tree=False, directory=bpffs, meta_dir=meta)]
    try:
        with pymemcg.Reader(STATS, backend="bpf", shared_pins=(bpffs, meta)) as reader:
            assert reader.backend == "pins"
            _run("pins", reader, stable, flapping)
            assert reader.backend == "pins+bpf"
            assert made[0].path in reader.pins
    finally:
        for info in made:
            pins.unpin(info.path, meta)


# --------------------------------------------------------------------------
# removal at a chosen moment of one read


def test_text_read_of_a_cgroup_removed_between_its_files(no_leaks, cgroups, monkeypatch):
    """memory.stat read, then the cgroup removed before its counter files:
    CgroupNotFound (None in read_many, the other answers intact), not a
    record whose counters are left out as if this kernel had no such file."""
    victim = cgroups.make("victim")
    real_read_file = text_mod.read_file

    def read_then_remove(name, dir_fd=None):
        out = real_read_file(name, dir_fd)
        if name == "memory.stat" and os.path.isdir(victim):
            os.rmdir(victim)
        return out
    monkeypatch.setattr(text_mod, "read_file", read_then_remove)
    with pymemcg.Reader(STATS, backend="text") as r:
        with pytest.raises(pymemcg.CgroupNotFound):
            r.read(victim)
        os.mkdir(victim)
        gone, base = r.read_many([victim, cgroups.base])
        assert gone is None
        assert base.id == os.stat(cgroups.base).st_ino and base["usage"] >= 0
        os.mkdir(victim)
        with pytest.raises(pymemcg.CgroupNotFound):
            r.read_tree(victim)


def test_pin_reader_of_a_cgroup_removed_after_its_session(bpf_ok, cgroups, pin_dirs,
                                                          monkeypatch):
    """The pin's session saw the cgroup, which is removed before the reader
    looks up its path: it is gone (CgroupNotFound, and the ReadError a pin's
    reader raised for it before), not "renamed or moved"."""
    bpffs, meta = pin_dirs
    victim = cgroups.make("pinned")
    info = pins.pin(victim, "pinned", STATS, tree=False, directory=bpffs, meta_dir=meta)
    try:
        reader = pins.PinReader(info.path, meta)
        assert reader.read().id == os.stat(victim).st_ino
        real_resolve = pins.resolve_cgroup

        def remove_then_resolve(path):
            if os.path.isdir(victim):
                os.rmdir(victim)
            return real_resolve(path)
        monkeypatch.setattr(pins, "resolve_cgroup", remove_then_resolve)
        for _ in range(2):  # removed during the read, then before it
            with pytest.raises(pymemcg.CgroupNotFound, match="was removed") as e:
                reader.read()
            assert isinstance(e.value, pymemcg.ReadError)
    finally:
        pins.unpin(info.path, meta)
