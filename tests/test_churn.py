"""Churn: tree reads while other processes create and remove
thousands of cgroups and move tasks between them; cgroups removed under a
reader. Snapshots stay exact (docs/snapshots.md, "Snapshots"), errors are pymemcg.Error subclasses, nothing leaks.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import threading
import time
from typing import Optional

import pytest

import pymemcg
from pymemcg import programs
from pymemcg.backends import bpf as bpf_mod, bpf_links as bpf_links_mod, bpf_single, bpf_walk
from pymemcg.cgroupfs import memory_mount
from pymemcg.decode import RAW_MAX
from pymemcg._record_h import GONE_RING

from conftest import my_links, open_fds

CHURN_SECONDS = 8.0
STATS = ["usage", "limit", "anon", "file"]




def limit_of(path: str):
    name = "memory.limit_in_bytes" if memory_mount().version == 1 else "memory.max"
    with open(os.path.join(path, name)) as f:
        text = f.read().strip()
    # no limit: "max" (v2) or PAGE_COUNTER_MAX bytes (v1), pymemcg.MAX either way
    return pymemcg.MAX if text in ("max", str(RAW_MAX)) else int(text)


def rel_of(path: str) -> str:
    return "/" + os.path.relpath(path, memory_mount().mountpoint)


def subdirs(path: str) -> list:
    return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]


# mkdir/rmdir loop: flat and nested cgroups, each removed again; prints the count
CHURNER = r"""
import os, sys, time
root, seconds, tag = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end = time.monotonic() + seconds
made = 0
i = 0
while time.monotonic() < end:
    i += 1
    a = os.path.join(root, "%s-%d" % (tag, i))
    os.mkdir(a); made += 1
    if i % 3 == 0:
        b = os.path.join(a, "n")
        os.mkdir(b); made += 1
        os.mkdir(os.path.join(b, "m")); made += 1
        os.rmdir(os.path.join(b, "m"))
        os.rmdir(b)
    if i % 5 == 0:                       # a rename (v1 allows it), then removal
        r = a + "-r"
        os.rename(a, r)
        a = r
    os.rmdir(a)
print(made, flush=True)
"""

# moves a task into fresh cgroups and out again, then removes them; also
# between the long-lived "movers" cgroups
MOVER = r"""
import os, sys, time
root, movers, seconds, pid = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), sys.argv[4]
end = time.monotonic() + seconds
moves = 0
i = 0
def move(cg):
    global moves
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(pid)
    moves += 1
while time.monotonic() < end:
    i += 1
    a = os.path.join(root, "mv-%d" % i)
    os.mkdir(a)
    move(a)
    move(movers[i % len(movers)])
    for _ in range(50):
        try:
            os.rmdir(a)
            break
        except OSError:
            time.sleep(0.001)
print(moves, flush=True)
"""


def _py(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_snapshot(snap, stable: dict, limits: dict, empty: set) -> None:
    """What docs/snapshots.md promises of one snapshot, for the cgroups that stay put."""
    recs = snap.records
    ids = [r.id for r in recs]
    assert len(ids) == len(set(ids)), "a cgroup twice in one snapshot"
    seen = {}
    for i, r in enumerate(recs):
        if i:
            # pre-order: a parent comes before its children, one level up
            assert r.parent_id in seen, f"{r.id}: parent {r.parent_id} not walked before it"
            assert r.level == seen[r.parent_id] + 1
        seen[r.id] = r.level
    for rel, ino in stable.items():
        assert rel in snap, f"stable cgroup {rel} missing from a snapshot"
        rec = snap[rel]
        assert rec.id == ino and rec.path == rel
        if limits[rel] is not None:
            assert rec["limit"] == limits[rel], rel
        if rel in empty:
            assert rec["usage"] == 0 and rec["anon"] == 0 and rec["file"] == 0, rel
    for p in snap:                       # no path names a cgroup other than its own
        if p in stable:
            assert snap[p].id == stable[p]


def test_tree_reads_under_churn(bpf_ok, cgroups):
    base = cgroups.base
    stable_rels = ["stable", "stable/empty", "stable/limited", "stable/x", "stable/x/y",
                   "stable/x/y/z", "churn", "movers", "movers/m0", "movers/m1", "movers/m2"]
    for rel in stable_rels:
        cgroups.make(rel)
    if memory_mount().version == 1:
        with open(os.path.join(base, "stable/limited/memory.limit_in_bytes"), "w") as f:
            f.write(str(48 << 20))
    stable = {rel_of(base): os.stat(base).st_ino}
    stable.update({rel_of(os.path.join(base, r)): os.stat(os.path.join(base, r)).st_ino
                   for r in stable_rels})
    limits = {rel: limit_of(os.path.join(memory_mount().mountpoint, rel.lstrip("/")))
              for rel in stable}
    # leaves without tasks: nothing is ever charged to them. (A parent is not
    # empty: the kernel charges a child's struct mem_cgroup to the parent.)
    empty = {rel_of(os.path.join(base, r)) for r in
             ("stable/empty", "stable/limited", "stable/x/y/z")}
    churn_dir = os.path.join(base, "churn")
    movers = [os.path.join(base, f"movers/m{i}") for i in range(3)]
    single_paths = [os.path.join(base, r) for r in ("stable/empty", "stable/x/y/z", "movers/m1")]

    fds0, links0 = open_fds(), my_links()
    errors: list = []
    counts = {"bpf-tree": 0, "bpf-shared": 0, "text-tree": 0, "single": 0, "churn-single": 0}
    stop = threading.Event()
    vanished: dict = {}       # pymemcg.Error class -> [count, a message] for vanishing cgroups

    sleeper = subprocess.Popen(["sleep", "600"], preexec_fn=lambda: open(
        os.path.join(movers[0], "cgroup.procs"), "w").write(str(os.getpid())))
    procs = []
    try:
        with pymemcg.Reader(stats=STATS, backend="bpf") as shared, \
                pymemcg.Reader(stats=STATS, backend="bpf") as own, \
                pymemcg.Reader(stats=STATS, backend="text") as text:

            def loop(name, fn):
                try:
                    while not stop.is_set():
                        fn()
                        counts[name] += 1
                except BaseException as e:  # noqa: BLE001 - the test reports it
                    import traceback
                    errors.append((name, repr(e), traceback.format_exc()))
                    stop.set()

            def tree_with(reader):
                def one():
                    _check_snapshot(reader.read_tree(base), stable, limits, empty)
                return one

            rnd = random.Random(5)

            def singles():
                for p in single_paths:
                    rec = shared.read(p)
                    assert rec.id == os.stat(p).st_ino
                    if p.endswith("empty") or p.endswith("z"):
                        assert rec["usage"] == 0
                # a cgroup that may vanish at any moment: a record or a pymemcg.Error
                try:
                    names = os.listdir(churn_dir)
                except OSError:
                    names = []
                names = [n for n in names if "-" in n]
                if names:
                    p = os.path.join(churn_dir, rnd.choice(names))
                    for call in (shared.read, shared.read_tree, text.read, text.read_tree):
                        try:
                            rec = call(p)
                            if call == shared.read:
                                assert rec.path.startswith(rel_of(churn_dir) + "/")
                                counts["churn-single"] += 1
                        except pymemcg.Error as e:
                            errs = vanished.setdefault(type(e).__name__, [0, str(e)])
                            errs[0] += 1

            threads = [threading.Thread(target=loop, args=("bpf-tree", tree_with(own))),
                       threading.Thread(target=loop, args=("bpf-shared", tree_with(shared))),
                       threading.Thread(target=loop, args=("text-tree", tree_with(text))),
                       threading.Thread(target=loop, args=("single", singles))]
            for t in threads:
                t.start()
            procs = [_py(CHURNER, churn_dir, CHURN_SECONDS, f"c{k}") for k in range(2)]
            procs.append(_py(MOVER, churn_dir, ",".join(movers), CHURN_SECONDS, sleeper.pid))
            outs = []
            for p in procs:
                out, err = p.communicate(timeout=CHURN_SECONDS + 30)
                assert p.returncode == 0, err
                outs.append(int(out.strip()))
            stop.set()
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads), "a reader hung"
            assert not errors, "\n".join(e[2] for e in errors[:3])
            made, moves = outs[0] + outs[1], outs[2]
            assert made >= 1000, f"only {made} cgroups made: churn too slow to mean anything"
            assert moves >= 100
            assert counts["bpf-tree"] >= 50 and counts["text-tree"] >= 5, counts
            # after the churn: the tree is exactly the stable cgroups
            final = shared.read_tree(base)
            assert {p: final[p].id for p in final} == stable
            assert len(final) == len(stable)
            _check_snapshot(text.read_tree(base), stable, limits, empty)
        print(f"churn: {made} cgroups made, {moves} moves, reads {counts}, errors on "
              f"vanishing cgroups {vanished}")
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        sleeper.kill()
        sleeper.wait()
    gc.collect()
    # nothing left: fds, links, cgroups
    assert open_fds() <= fds0, f"fds left behind: {open_fds() - fds0}"
    assert my_links() <= links0, f"links left behind: {my_links() - links0}"
    assert subdirs(churn_dir) == [], "the churners left cgroups behind"


# --------------------------------------------------------------------------
# removal under a reader


@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_read_of_a_removed_cgroup(no_leaks, cgroups, backend):
    never = cgroups.make("never")
    once = cgroups.make("once")
    with pymemcg.Reader(stats=STATS, backend=backend) as r:
        assert r.read(once).id == os.stat(once).st_ino
        os.rmdir(never)
        os.rmdir(once)
        with pytest.raises(pymemcg.CgroupNotFound):
            r.read(never)
        for _ in range(3):  # and again: no stale answer from the old link
            with pytest.raises(pymemcg.CgroupNotFound):
                r.read(once)
        # the same name made again is a new cgroup, read as such
        os.mkdir(once)
        assert r.read(once).id == os.stat(once).st_ino


@pytest.mark.parametrize("single", ["fetch", "iterator"])
def test_cgroup_removed_between_attach_and_read(no_leaks, cgroups, monkeypatch, single):
    """Removed after the reader took hold of it (an iterator link, or a fetch
    slot's reference) and before the first read."""
    victim = cgroups.make("victim")
    if single == "iterator":
        monkeypatch.setattr(bpf_mod.BpfBackend, "_load_fetch", lambda self: None)
    for cls, name in ((programs.Program, "attach"), (programs.Fetch, "stash")):
        def then_remove(self, cg, *args, real=getattr(cls, name)):
            out = real(self, cg, *args)
            if cg.path == victim and os.path.isdir(victim):
                os.rmdir(victim)
            return out
        monkeypatch.setattr(cls, name, then_remove)
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        assert r.read_method.startswith("BPF_PROG_RUN" if single == "fetch" else "iterator")
        with pytest.raises(pymemcg.CgroupNotFound):
            r.read(victim)
        assert r.read(cgroups.base).id == os.stat(cgroups.base).st_ino


def _resolve_by(monkeypatch, resolve) -> None:
    """The BPF backend's reads (bpf_single) and tree reads (bpf_walk)
    resolve paths through `resolve`."""
    for module in (bpf_single, bpf_walk):
        monkeypatch.setattr(module, "resolve_cgroup", resolve)


@pytest.mark.parametrize("method", ["read", "read_tree"])
def test_removed_between_resolve_and_attach(bpf_ok, cgroups, monkeypatch, method):
    victim = cgroups.make("victim")
    real_resolve = bpf_single.resolve_cgroup

    def resolve_then_remove(path):
        cg = real_resolve(path)
        if cg.path == victim:
            os.rmdir(victim)
        return cg
    _resolve_by(monkeypatch, resolve_then_remove)
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        with pytest.raises(pymemcg.CgroupNotFound):
            getattr(r, method)(victim)


def _replace_after_first_resolve(monkeypatch, victim: str) -> list:
    """The BPF backend's first resolution of victim is followed by its
    removal and a new cgroup at its path; the list returned gets the old
    cgroup's id."""
    real_resolve = bpf_single.resolve_cgroup
    done: list = []

    def resolve_then_replace(path):
        cg = real_resolve(path)
        if cg.path == victim and not done:
            done.append(cg.id)
            os.rmdir(victim)
            os.mkdir(victim)
        return cg
    _resolve_by(monkeypatch, resolve_then_replace)
    return done


@pytest.mark.parametrize("single", ["fetch", "iterator", "tree"])
def test_replaced_between_resolve_and_attach(no_leaks, cgroups, monkeypatch, single):
    """The path names a new cgroup by the time the reader opens it: the read
    answers for the new one, never with the old one's id or numbers."""
    victim = cgroups.make("replaced")
    if single == "iterator":
        monkeypatch.setattr(bpf_mod.BpfBackend, "_load_fetch", lambda self: None)
    done = _replace_after_first_resolve(monkeypatch, victim)
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        if single == "tree":
            rec = r.read_tree(victim).records[0]
        else:
            rec = r.read(victim)
        assert rec.id == os.stat(victim).st_ino != done[0]


@pytest.mark.parametrize("call", ["read", "read_tree"])
def test_replaced_then_removed_during_an_iterator_read(no_leaks, cgroups, monkeypatch, call):
    """The path names a new cgroup by the time the reader attaches its
    iterator, and that one is removed too before the answer is checked:
    nothing is at the path, so CgroupNotFound (not MalformedData)."""
    victim = cgroups.make("victim")
    monkeypatch.setattr(bpf_mod.BpfBackend, "_load_fetch", lambda self: None)
    replaced = _replace_after_first_resolve(monkeypatch, victim)
    cls, method = ((bpf_walk.TreeWalks, "_walk") if call == "read_tree" else
                   (bpf_single.SingleReads, "read_target"))

    def read_then_remove(self, target, real=getattr(cls, method)):
        out = real(self, target)
        if os.path.isdir(victim):
            os.rmdir(victim)
        return out
    monkeypatch.setattr(cls, method, read_then_remove)
    with pymemcg.Reader(stats=STATS, backend="bpf", shared_pins=False) as r:
        assert r.read_method.startswith("iterator")
        with pytest.raises(pymemcg.CgroupNotFound):
            getattr(r, call)(victim)
    assert replaced


def test_tree_root_removed_between_attach_and_walk(bpf_ok, cgroups, monkeypatch):
    victim = cgroups.make("victim")
    real_attach = programs.Program.attach

    def attach_then_remove(self, cg, order):
        fd = real_attach(self, cg, order)
        if cg.path == victim:
            os.rmdir(victim)
        return fd
    monkeypatch.setattr(programs.Program, "attach", attach_then_remove)
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        with pytest.raises(pymemcg.CgroupNotFound):
            r.read_tree(victim)


@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_tree_root_removed_under_a_reader(no_leaks, cgroups, backend):
    root = cgroups.make("root")
    cgroups.make("root/child")
    with pymemcg.Reader(stats=STATS, backend=backend) as r:
        snap = r.read_tree(root)
        assert len(snap) == 2
        os.rmdir(os.path.join(root, "child"))
        assert len(r.read_tree(root)) == 1
        os.rmdir(root)
        for _ in range(3):
            with pytest.raises(pymemcg.CgroupNotFound):
                r.read_tree(root)
            with pytest.raises(pymemcg.CgroupNotFound):
                r.read(root)
        os.mkdir(root)                    # same path, new cgroup
        again = r.read_tree(root)
        assert len(again) == 1 and again.records[0].id == os.stat(root).st_ino
        assert again.records[0].id != snap.records[0].id


def test_removed_tree_roots_release_their_links(bpf_ok, cgroups):
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        r.read_tree(cgroups.base)
        fds, links = len(open_fds()), len(my_links())
        for i in range(20):
            p = cgroups.make(f"pod{i}")
            r.read_tree(p)
            os.rmdir(p)
            with pytest.raises(pymemcg.CgroupNotFound):
                r.read_tree(p)
        grown_fds, grown_links = len(open_fds()) - fds, len(my_links()) - links
        assert (grown_fds, grown_links) == (0, 0), \
            f"{grown_fds} fds and {grown_links} links held for 20 removed roots"


def _memory_cgroups() -> Optional[int]:
    """The memory hierarchy's cgroup count (/proc/cgroups): removed cgroups
    stay counted while anything holds a reference to them. None on a
    cgroup v2 host whose kernel lists only v1 controllers there (7.x
    without CONFIG_MEMCG_V1): there the dying count below the test's own
    cgroup (_dying) judges alone."""
    with open("/proc/cgroups") as f:
        for line in f:
            if line.split()[0] == "memory":
                return int(line.split()[2])
    if memory_mount().version == 2:
        return None
    raise AssertionError("no memory controller in /proc/cgroups")


def _quiet_count(settle: float = 0.5, timeout: float = 10.0) -> Optional[int]:
    """The count once it has not moved for `settle` seconds: the count is the
    whole host's, and cgroups that earlier tests removed are freed in the
    background whenever their last page or reference goes."""
    deadline = time.monotonic() + timeout
    last, since = _memory_cgroups(), time.monotonic()
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        now = _memory_cgroups()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
    return last


def _less(before: tuple, n: int) -> tuple:
    """(count, dying) as they are once n removed cgroups that nothing
    holds are freed: the count n lower (where there is one), dying as it was."""
    return (None if before[0] is None else before[0] - n, before[1])


def _dying(base: str):
    """nr_dying_descendants of cgroup v2's cgroup.stat at `base`: removed
    cgroups below it that something still holds (None on cgroup v1, which
    has no such file)."""
    if memory_mount().version != 2:
        return None
    with open(os.path.join(base, "cgroup.stat")) as f:
        for line in f:
            key, value = line.split()
            if key == "nr_dying_descendants":
                return int(value)
    raise AssertionError(f"no nr_dying_descendants in {base}/cgroup.stat")


def _held(base: str, before: tuple, n: int, seconds: float) -> tuple:
    """(memory cgroups counted, dying below base) once both are what they
    were before n cgroups were removed less those n (dying: as before), or
    after `seconds` (removed cgroups are freed after an RCU grace period)."""
    want = _less(before, n)
    deadline = time.monotonic() + seconds
    now = (_memory_cgroups(), _dying(base))
    while now != want and time.monotonic() < deadline:
        time.sleep(0.02)
        now = (_memory_cgroups(), _dying(base))
    return now


def _unheld_control(cgroups, rel: str, n: int) -> bool:
    """Whether n cgroups made and removed with no Reader leave the count of
    dying cgroups below base as it was within a second: where they do not
    (the kernel here keeps removed cgroups for reasons of its own), an
    attempt cannot tell what a Reader held. Always True on cgroup v1,
    whose count the attempts' retries already judge against the host."""
    if memory_mount().version != 2:
        return True
    paths = [cgroups.make(f"{rel}/c{i}") for i in range(n)]
    before = _dying(cgroups.base)
    for p in paths:
        os.rmdir(p)
    deadline = time.monotonic() + 1.0
    while _dying(cgroups.base) != before and time.monotonic() < deadline:
        time.sleep(0.02)
    return _dying(cgroups.base) == before


@pytest.mark.parametrize("how", ["read", "read_tree"])
def test_links_of_removed_cgroups_are_closed(no_leaks, cgroups, monkeypatch, how):
    """Where reads go through iterator links (each keeps its cgroup alive):
    cgroups read one by one, or as tree roots, then removed, are freed by
    the kernel at the reader's next read of any other path, and their
    links are closed: the host's count of memory cgroups (/proc/cgroups)
    and, on cgroup v2, the count of dying cgroups below the test's own
    (cgroup.stat) are what they were less the removed ones. The host's
    count moves with other cgroups being freed meanwhile, so an attempt
    whose background moved is made again."""
    monkeypatch.setattr(bpf_mod.BpfBackend, "_load_fetch", lambda self: None)
    n = 20
    seen = []
    for attempt in range(4):
        other = cgroups.make(f"stays{attempt}")
        control = _unheld_control(cgroups, f"unheld{attempt}", n)
        paths = [cgroups.make(f"linked{attempt}/c{i}") for i in range(n)]
        with pymemcg.Reader(stats=STATS, backend="bpf") as r:
            links = r._backend._links
            for p in paths:
                assert (r.read(p) if how == "read" else r.read_tree(p).records[0]).id == \
                    os.stat(p).st_ino
            assert len(links.by_key) == n
            before = (_quiet_count(), _dying(cgroups.base))
            for p in paths:
                os.rmdir(p)
            getattr(r, how)(other)
            after = _held(cgroups.base, before, n, 1.0)
            seen.append((before, after, control))
            assert {link.cgroup.path for link in links.by_key.values()} == {other}
        if control and after == _less(before, n):
            return
    raise AssertionError(f"((count, dying) before the rmdirs, the same 1 s after a read of "
                         f"another path, whether removals without a Reader left no dying "
                         f"cgroup) in each attempt: {seen}; expected ((c, d), (c - {n}, d), "
                         f"True)")


def test_a_one_call_read_closes_the_links_of_removed_tree_roots(no_leaks, cgroups):
    """Where read() is one call of the fetch program (its removal check is
    in the shim, PMC_READ_REAP): tree roots read, then removed, have their
    links closed by the next read() of a path read before, which still
    answers with its own cgroup."""
    other = cgroups.make("read")
    roots = [cgroups.make(f"root{i}") for i in range(3)]
    with pymemcg.Reader(stats=STATS, backend="bpf", shared_pins=False) as r:
        if not r.read_method.startswith("BPF_PROG_RUN"):
            pytest.skip(f"no one-call read here: {r.read_method}")
        links = r._backend._links
        assert r.read(other).id == os.stat(other).st_ino   # its route proven
        for p in roots:
            r.read_tree(p)
        assert len(links.by_key) == len(roots)
        for p in roots[1:]:
            os.rmdir(p)
        assert r.read(other).id == os.stat(other).st_ino
        assert [link.cgroup.path for link in links.by_key.values()] == [roots[0]]
        assert r.read(other).id == os.stat(other).st_ino   # and on, with nothing to reap


def test_more_removals_than_the_ring_holds_let_go_of_every_link(no_leaks, cgroups,
                                                                 monkeypatch):
    """More cgroups removed between two reads than the ring of removed ids
    holds: the reader cannot tell whether its cgroups were among them, so
    it closes every link, and reads on through new ones."""
    monkeypatch.setattr(bpf_mod.BpfBackend, "_load_fetch", lambda self: None)
    kept = [cgroups.make(f"kept{i}") for i in range(3)]
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        links = r._backend._links
        for p in kept:
            r.read(p)
        assert len(links.by_key) == 3
        for i in range(GONE_RING + 1):
            os.rmdir(cgroups.make(f"churned{i}"))
        assert r.read(kept[0]).id == os.stat(kept[0]).st_ino
        assert [link.cgroup.path for link in links.by_key.values()] == [kept[0]]


def _kernel() -> tuple:
    """(major, minor) of the running kernel."""
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor)


@pytest.mark.parametrize("how", ["read", "read_many"])
def test_removed_cgroups_are_not_held(no_leaks, cgroups, how):
    """A one-call read keeps a kernel reference to each cgroup it read;
    once those cgroups are removed the kernel frees them within a second,
    with no further read and the Reader still open (the fetch program drops
    a removed cgroup's reference at its removal): the host's count of
    memory cgroups (/proc/cgroups) and, on cgroup v2, the count of dying
    cgroups below the test's own (cgroup.stat) are what they were less the
    removed ones. Nothing is ever charged to those cgroups, and the same
    removal without a Reader is checked to leave none dying. The host's
    count moves with other cgroups being freed meanwhile, so an attempt
    whose background moved is made again: references held until the next
    read or close fail every attempt."""
    n = 30
    seen = []
    for attempt in range(4):
        control = _unheld_control(cgroups, f"unheld{attempt}", n)
        paths = [cgroups.make(f"held{attempt}/c{i}") for i in range(n)]
        with pymemcg.Reader(stats=STATS, backend="bpf") as r:
            if not r.read_method.startswith("BPF_PROG_RUN") and _kernel() < (6, 4):
                # no one-call read to hold references: this kernel's reads go
                # through links, which test_links_of_removed_cgroups_are_closed judges
                pytest.skip(f"Linux {os.uname().release} refuses the one-call read "
                            f"(6.4+): {r.read_method}")
            assert r.read_method.startswith("BPF_PROG_RUN"), r.read_method
            for _ in range(2):
                if how == "read":
                    for p in paths:
                        r.read(p)
                else:
                    assert all(r.read_many(paths))
            before = (_quiet_count(), _dying(cgroups.base))
            for p in paths:
                os.rmdir(p)
            after = _held(cgroups.base, before, n, 1.0)
            seen.append((before, after, control))
            # and a read of a removed path still says so
            with pytest.raises(pymemcg.CgroupNotFound):
                r.read(paths[0])
            assert r.read_many(paths) == [None] * n
        if control and after == _less(before, n):
            return
    raise AssertionError(f"((count, dying) before the rmdirs, the same 1 s after, whether "
                         f"removals without a Reader left no dying cgroup) in each attempt: "
                         f"{seen}; expected ((c, d), (c - {n}, d), True)")


def test_a_reader_that_cannot_watch_removals_says_so(no_leaks, cgroups, monkeypatch):
    """Where the removal watcher does not load, links of removed cgroups are
    held until read again or closed: the Reader warns rather than hold them
    silently, and still reads."""
    monkeypatch.setattr(bpf_mod.BpfBackend, "_load_fetch", lambda self: None)

    def refused() -> None:
        raise pymemcg.BpfUnavailable("the removal watcher did not load (test)")

    monkeypatch.setattr(bpf_links_mod, "Removals", refused)
    path = cgroups.make("watched")
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        with pytest.warns(pymemcg.FallbackWarning, match="cannot watch cgroup removals"):
            assert r.read(path).id == os.stat(path).st_ino
