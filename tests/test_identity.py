"""A read answers for the cgroup that has the path at the time of the read.

cgroup v1 lets a directory be renamed and a new cgroup be made at the old
name. Readers cache what a path resolved to; every answer must still be the
cgroup at that path now (record id == st_ino of the directory, values those
of its own files) or CgroupNotFound, never the cgroup that moved away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pymemcg
from pymemcg import pins
from pymemcg.backends.bpf import BpfBackend
from pymemcg.cgroupfs import memory_mount, resolve_cgroup

from conftest import CgroupFactory

PAGE = os.sysconf("SC_PAGE_SIZE")
STATS = ["limit", "usage", "anon", "file", "shmem"]


def limit_file() -> str:
    return "memory.limit_in_bytes" if memory_mount().version == 1 else "memory.max"


def set_limit(path: str, value: int) -> None:
    with open(os.path.join(path, limit_file()), "w") as f:
        f.write(str(value))


def renames_allowed(base: str) -> bool:
    probe, moved = os.path.join(base, "rename-probe"), os.path.join(base, "rename-probe2")
    os.mkdir(probe)
    try:
        os.rename(probe, moved)
    except OSError:
        os.rmdir(probe)
        return False
    os.rmdir(moved)
    return True


def session_backend(stats):
    """A BPF backend that reads single cgroups through iterator sessions
    (what kernels without the one-call read use)."""
    mount = memory_mount()
    return BpfBackend(stats, False, mount.version, mount.mountpoint, singles=False)


def read_limit(path: str):
    """The cgroup's limit as a Record gives it: pymemcg.MAX where none is
    set (v1's file prints PAGE_COUNTER_MAX bytes for it, v2's "max")."""
    from pymemcg.decode import RAW_MAX
    with open(os.path.join(path, limit_file())) as f:
        text = f.read().strip()
    return pymemcg.MAX if text in ("max", str(RAW_MAX)) else int(text)


def check_answer(rec, path: str) -> None:
    """rec must be the cgroup at path now: its id, its relpath, its limit."""
    st_ino = os.stat(path).st_ino
    assert rec.id == st_ino, f"{path}: answered for cgroup {rec.id}, the directory is {st_ino}"
    assert rec.path == resolve_cgroup(path).relpath
    assert rec["limit"] == read_limit(path), f"{path}: another cgroup's limit"


@pytest.fixture
def readers(bpf_ok):
    made = [pymemcg.Reader(STATS, backend="bpf", shared_pins=False), session_backend(STATS),
            pymemcg.Reader(STATS, backend="text")]
    try:
        yield made
    finally:
        for r in made:
            r.close()


def test_rename_then_recreate(cgroups, readers):
    """The exact sequence: read a; rename a to b; read b; mkdir a; read a."""
    if not renames_allowed(cgroups.base):
        pytest.skip("this cgroup version does not allow renames (v2)")
    for i, reader in enumerate(readers):
        a, b = cgroups.make(f"a{i}"), os.path.join(cgroups.base, f"b{i}")
        set_limit(a, 1 << 30)
        first = reader.read(a)
        check_answer(first, a)
        os.rename(a, b)
        moved = reader.read(b)
        check_answer(moved, b)
        assert moved.id == first.id
        os.mkdir(a)
        set_limit(a, 2 << 30)
        again = reader.read(a)
        check_answer(again, a)
        assert again.id != first.id, f"{type(reader).__name__}: read(a) answered for b's cgroup"
        # and the moved cgroup is still read under its new path
        check_answer(reader.read(b), b)


def test_rename_then_recreate_tree(cgroups, readers):
    if not renames_allowed(cgroups.base):
        pytest.skip("this cgroup version does not allow renames (v2)")
    a, b = cgroups.make("a/x"), os.path.join(cgroups.base, "b")
    a = os.path.dirname(a)
    base_rel = resolve_cgroup(cgroups.base).relpath
    for reader in readers:
        reader.read_tree(cgroups.base)
    os.rename(a, b)
    os.mkdir(a)
    for reader in readers:
        snap = reader.read_tree(cgroups.base)
        assert set(snap) == {base_rel, base_rel + "/a", base_rel + "/b", base_rel + "/b/x"}
        for rel in snap:
            path = memory_mount().mountpoint + rel
            assert snap[rel].id == os.stat(path).st_ino, f"{rel} answered for another cgroup"
    os.rename(b, os.path.join(cgroups.base, "c"))


TOP = ["a", "b", "c"]
UNIVERSE = TOP + [f"{t}/{c}" for t in TOP for c in ("x", "y")]


class CgroupTreeMachine(RuleBasedStateMachine):
    """mkdir, rename, rmdir (also while a reader reads the cgroup) and moving
    a task over a small tree, with reads (read, read_many, read_tree)
    through long-lived readers (whose caches are what is under test)
    checked against st_ino and the directory's own files after every step:
    a BPF Reader, a BPF backend on iterator sessions, a text Reader, a
    Reader through shared pins (the base's tree and "a" alone), and
    PinReaders."""

    def __init__(self) -> None:
        super().__init__()
        self.factory = CgroupFactory()
        self.base = self.factory.base
        self.renames = renames_allowed(self.base)
        self.limits = 0
        self.pin_root = tempfile.mkdtemp(prefix="pymemcg-sm-", dir="/tmp")
        self.bpffs, self.meta = self.pin_root + "/bpf", self.pin_root + "/meta"
        os.mkdir(self.bpffs)
        subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", self.bpffs], check=True)
        self.factory.make("a")
        self.readers, self.pins = [], []
        self.task = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                     stdin=subprocess.PIPE)
        try:
            self.tree_pin = pins.pin(self.base, "tree", STATS, directory=self.bpffs,
                                     meta_dir=self.meta)
            self.pins.append(self.tree_pin)
            self.a_pin = pins.pin(self.path("a"), "a", STATS, tree=False, directory=self.bpffs,
                                  meta_dir=self.meta)
            self.pins.append(self.a_pin)
            self.a_id = os.stat(self.path("a")).st_ino
            self.readers = [pymemcg.Reader(STATS, backend="bpf", shared_pins=False),
                            session_backend(STATS), pymemcg.Reader(STATS, backend="text"),
                            pymemcg.Reader(STATS, backend="bpf",
                                           shared_pins=(self.bpffs, self.meta))]
            assert self.readers[3].backend == "pins"
        except BaseException:
            self.teardown()
            raise
        self.task_at = ""  # relpath under base ("" = base itself)
        self.move_task("")

    def path(self, rel: str) -> str:
        return os.path.join(self.base, rel) if rel else self.base

    def exists(self, rel: str) -> bool:
        return os.path.isdir(self.path(rel))

    def move_task(self, rel: str) -> None:
        with open(os.path.join(self.path(rel), "cgroup.procs"), "w") as f:
            f.write(str(self.task.pid))
        self.task_at = rel

    def can_mkdir(self):
        return [r for r in UNIVERSE if not self.exists(r) and self.exists(os.path.dirname(r))]

    def can_rename(self):
        out = []
        for src in UNIVERSE:
            parent, _ = os.path.split(src)
            for name in ("x", "y") if parent else TOP:
                dst = os.path.join(parent, name) if parent else name
                if self.exists(src) and not self.exists(dst):
                    out.append((src, dst))
        return out

    def can_rmdir(self):
        return [r for r in UNIVERSE if self.exists(r) and self.task_at != r and
                not any(e.is_dir() for e in os.scandir(self.path(r)))]

    @precondition(lambda self: self.can_mkdir())
    @rule(data=st.data())
    def mkdir(self, data):
        rel = data.draw(st.sampled_from(self.can_mkdir()))
        if memory_mount().version == 2:
            self.factory.make(rel)
        else:
            os.mkdir(self.path(rel))
        self.limits += 1
        set_limit(self.path(rel), (1 << 30) + self.limits * 64 * PAGE)

    @precondition(lambda self: self.renames and self.can_rename())
    @rule(data=st.data())
    def rename(self, data):
        src, dst = data.draw(st.sampled_from(self.can_rename()))
        os.rename(self.path(src), self.path(dst))
        if self.task_at == src or self.task_at.startswith(src + "/"):
            self.task_at = dst + self.task_at[len(src):]

    @precondition(lambda self: self.can_rmdir())
    @rule(data=st.data())
    def rmdir(self, data):
        os.rmdir(self.path(data.draw(st.sampled_from(self.can_rmdir()))))

    @rule(data=st.data())
    def move(self, data):
        self.move_task(data.draw(st.sampled_from([""] + [r for r in UNIVERSE if self.exists(r)])))

    @rule(rel=st.sampled_from(UNIVERSE), which=st.integers(0, 3))
    def read(self, rel, which):
        reader = self.readers[which]
        if not self.exists(rel):
            with pytest.raises(pymemcg.CgroupNotFound):
                reader.read(self.path(rel))
            return
        check_answer(reader.read(self.path(rel)), self.path(rel))

    @rule(rels=st.lists(st.sampled_from(UNIVERSE), max_size=6), which=st.integers(0, 3),
          again=st.booleans())
    def read_many(self, rels, which, again):
        """Several paths in one call (twice: a second call reuses the first
        one's run): each answer is the cgroup there now, or None."""
        paths = [self.path(r) for r in rels]
        for got in [self.readers[which].read_many(paths) for _ in range(1 + again)]:
            assert len(got) == len(paths)
            for rel, path, rec in zip(rels, paths, got):
                if self.exists(rel):
                    check_answer(rec, path)
                else:
                    assert rec is None, f"{rel} is gone, read_many answered {rec.id}"

    @rule(which=st.integers(0, 3))
    def read_tree(self, which):
        self.check_tree(self.readers[which].read_tree(self.base))

    @rule()
    def read_tree_pin(self):
        self.check_tree(pins.PinReader(self.tree_pin.path, self.meta).read())

    @rule()
    def read_single_pin(self):
        """The pin serves the cgroup that was "a" when pinned: it answers
        while that cgroup is still there, says it moved when it was renamed,
        and that it is gone when it was removed."""
        reader = pins.PinReader(self.a_pin.path, self.meta)
        here = os.stat(self.path("a")).st_ino if self.exists("a") else None
        if here == self.a_id:
            check_answer(reader.read(), self.path("a"))
        elif any(self.exists(r) and os.stat(self.path(r)).st_ino == self.a_id for r in TOP):
            with pytest.raises(pins.PinMoved):
                reader.read()
        else:
            with pytest.raises(pymemcg.CgroupNotFound):
                reader.read()

    @precondition(lambda self: self.can_rmdir())
    @rule(data=st.data(), which=st.integers(0, 3),
          call=st.sampled_from(["read", "read_many", "read_tree"]), remakes=st.integers(0, 20))
    def rmdir_during_reads(self, data, which, call, remakes):
        """Another thread removes a cgroup, then makes and removes one at
        its path `remakes` times, while a reader reads that path again and
        again, and once more after: each answer for the path is a cgroup
        it had (that cgroup's id and values), or gone (CgroupNotFound, None,
        absent from the tree; only gone at the end), and every other answer
        of the same call is exact. A pin that serves the first cgroup
        answers for it or says it is gone."""
        rel = data.draw(st.sampled_from(self.can_rmdir()))
        path = self.path(rel)
        first = os.stat(path).st_ino
        victim = (resolve_cgroup(path).relpath, read_limit(path))
        had = {first}  # every cgroup the path had
        stays = [r for r in [""] + UNIVERSE if r != rel and self.exists(r)]
        reader = self.readers[which]
        pin = pins.PinReader(self.a_pin.path, self.meta) if (rel, first) == ("a", self.a_id) \
            else None

        failed = []

        def remove_and_remake():
            try:
                os.rmdir(path)
                for _ in range(remakes):
                    os.mkdir(path)
                    had.add(os.stat(path).st_ino)
                    os.rmdir(path)
            except OSError as e:
                failed.append(e)
        remover = threading.Thread(target=remove_and_remake)
        remover.start()
        answers, removed = [], False
        while not removed:
            removed = not remover.is_alive()
            answer = self.read_racing(reader, call, path, stays)
            assert answer is None or not removed, f"{call} answered for removed {rel}"
            answers.append(answer)
            if pin is not None:
                try:
                    answers.append(pin.read())
                except pymemcg.CgroupNotFound:
                    pass
        remover.join()
        assert not failed, f"the removing thread failed: {failed[0]!r}"
        for rec in filter(None, answers):
            assert rec.id in had and rec.path == victim[0], f"{rel}: another cgroup's answer"
            if rec.id == first:
                assert rec["limit"] == victim[1], f"{rel}: another cgroup's limit"

    def read_racing(self, reader, call, path, stays):
        """One read of a path that another thread may be removing (see
        rmdir_during_reads): its answer, None if gone; the other answers
        of the call are checked here."""
        if call == "read":
            try:
                return reader.read(path)
            except pymemcg.CgroupNotFound:
                return None
        if call == "read_many":
            got = reader.read_many([path] + [self.path(r) for r in stays])
            for r, rec in zip(stays, got[1:]):
                check_answer(rec, self.path(r))
            return got[0]
        snap = reader.read_tree(self.base)
        mountpoint = memory_mount().mountpoint
        rel = resolve_cgroup(self.base).relpath + path[len(self.base):]
        assert set(snap) - {rel} == {resolve_cgroup(self.path(r)).relpath for r in stays}
        for p in snap:
            if p != rel:
                check_answer(snap[p], mountpoint + p)
        return snap[rel] if rel in snap else None

    def check_tree(self, snap):
        mountpoint = memory_mount().mountpoint
        on_disk = {resolve_cgroup(self.path(r)).relpath for r in [""] + UNIVERSE if self.exists(r)}
        assert set(snap) == on_disk
        for rel in snap:
            check_answer(snap[rel], mountpoint + rel)
        assert [r.id for r in snap.records][0] == os.stat(self.base).st_ino

    @invariant()
    def every_reader_agrees_with_the_directories(self):
        for rel in UNIVERSE:
            if self.exists(rel):
                for reader in self.readers:
                    check_answer(reader.read(self.path(rel)), self.path(rel))

    def teardown(self) -> None:
        try:
            for r in self.readers:
                r.close()
            for pin in self.pins:
                pins.unpin(pin.path, self.meta)
            subprocess.run(["umount", self.bpffs], check=True)
            for d in (self.meta, self.bpffs, self.pin_root):
                if os.path.isdir(d):
                    os.rmdir(d)
        finally:
            if self.task.poll() is None:
                self.task.send_signal(signal.SIGKILL)
            self.task.wait()
            self.factory.cleanup()


@pytest.mark.usefixtures("bpf_ok")
def test_cgroup_tree_state_machine():
    run = CgroupTreeMachine.TestCase
    run.settings = settings(max_examples=30, stateful_step_count=30, deadline=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()
