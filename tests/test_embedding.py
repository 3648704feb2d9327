"""Embedding in a daemon: threads sharing one Reader, fork,
close() and `with`, nothing done at import, and flat fds/RSS over many reads.

Real kernel, real cgroups (the `cgroups` fixture); BPF tests need `bpf_ok`.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading

import pytest

import pymemcg
from pymemcg.cgroupfs import memory_mount
from pymemcg.decode import RAW_MAX

from conftest import in_child, my_links, open_fds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS = ["usage", "limit", "anon", "file", "pgfault"]




def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def v1_limit(path: str) -> int:
    name = "memory.limit_in_bytes" if memory_mount().version == 1 else "memory.max"
    with open(os.path.join(path, name)) as f:
        text = f.read().strip()
    # no limit: "max" (v2) or PAGE_COUNTER_MAX bytes (v1), pymemcg.MAX either way
    return pymemcg.MAX if text in ("max", str(RAW_MAX)) else int(text)



@pytest.fixture
def tree(cgroups):
    """A small fixed tree: {relpath under base: (abs path, st_ino)}; `e` stays empty."""
    rels = ["e", "a", "a/b", "a/b/c", "d"]
    out = {}
    for rel in rels:
        p = cgroups.make(rel)
        out[rel] = (p, os.stat(p).st_ino)
    if memory_mount().version == 1:
        with open(os.path.join(out["d"][0], "memory.limit_in_bytes"), "w") as f:
            f.write(str(64 << 20))
    out[""] = (cgroups.base, os.stat(cgroups.base).st_ino)
    return out


def _base_rel(cgroups) -> str:
    return "/" + os.path.relpath(cgroups.base, memory_mount().mountpoint)


# --------------------------------------------------------------------------
# nothing at import time

IMPORT_PROBE = r"""
import json, os, sys
def fds():
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            pass
    return out
fd0 = fds()
import pymemcg
fd1 = fds()
print(json.dumps({"fd0": fd0, "fd1": fd1,
                  "bpf_module": "pymemcg.backends.bpf" in sys.modules or
                                "pymemcg.programs" in sys.modules,
                  "extension": "pymemcg._pymemcg" in sys.modules}))
"""


def test_import_opens_no_fds_and_loads_no_bpf(bpf_ok):
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                         timeout=60, check=True, cwd="/")
    r = json.loads(out.stdout)
    assert r["fd1"] == r["fd0"], "import pymemcg opened or closed fds"
    assert not [t for t in r["fd1"].values() if "bpf" in t], "a BPF object is open after import"
    # the BPF backend and its extension are loaded by Reader(), not by import
    assert not r["bpf_module"] and not r["extension"]


# --------------------------------------------------------------------------
# close, with

@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_close_is_idempotent_and_with_closes(no_leaks, tree, backend):
    fds = open_fds()
    with pymemcg.Reader(stats=STATS, backend=backend) as r:
        assert r.backend == backend
        assert r.read(tree["a"][0]).id == tree["a"][1]
        assert len(r.read_tree(tree[""][0])) == 6
        if backend == "bpf":
            assert my_links(), "a BPF reader holds its links as fds"
    assert repr(r).endswith("backend=closed)")
    for _ in range(3):
        r.close()
    for call in (lambda: r.read(tree["a"][0]), lambda: r.read_tree(tree[""][0]),
                 lambda: r.backend, lambda: r.sources):
        with pytest.raises(pymemcg.Closed, match="closed"):
            call()
    assert open_fds() <= fds
    # an exception inside `with` closes as well and is not swallowed
    with pytest.raises(ZeroDivisionError):
        with pymemcg.Reader(stats=STATS, backend=backend) as r2:
            r2.read(tree["a"][0])
            1 / 0
    with pytest.raises(pymemcg.Closed):
        r2.read(tree["a"][0])


def test_dropped_reader_is_released_by_the_finalizer(no_leaks, tree):
    r = pymemcg.Reader(stats=STATS, backend="bpf")
    r.read(tree["a"][0])
    r.read_tree(tree[""][0])
    links = my_links()
    assert links
    del r
    gc.collect()
    assert not my_links() & links


def test_read_bound_before_close_raises_closed(bpf_ok, tree):
    r = pymemcg.Reader(stats=STATS, backend="bpf")
    read = r.read                         # BpfBackend.read: the hot path skips Reader
    read(tree["a"][0])
    r.close()
    with pytest.raises(pymemcg.Closed):
        read(tree["a"][0])


# --------------------------------------------------------------------------
# threads

def test_threads_share_one_reader(no_leaks, tree):
    """8 threads hammer one Reader with single and tree reads: no exception,
    every answer right (ids, paths, limits, an empty cgroup's usage 0)."""
    n_threads, rounds = 8, 300
    base_rel = os.path.relpath(tree[""][0], memory_mount().mountpoint)
    want_tree = {("/" + base_rel + ("/" + rel if rel else "")): ino
                 for rel, (_, ino) in tree.items()}
    limits = {rel: v1_limit(p) for rel, (p, _) in tree.items()}
    errors, counts = [], []
    start = threading.Barrier(n_threads)

    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        def worker(k: int) -> None:
            done = 0
            try:
                start.wait()
                rels = list(tree)
                for i in range(rounds):
                    rel = rels[(i + k) % len(rels)]
                    path, ino = tree[rel]
                    rec = r.read(path)
                    assert rec.id == ino, (rel, rec.id, ino)
                    assert rec.path == "/" + base_rel + ("/" + rel if rel else "")
                    if limits[rel] is not None:
                        assert rec["limit"] == limits[rel]
                    if rel == "e":
                        assert rec["usage"] == 0 and rec["anon"] == 0
                    if i % 10 == k % 10:
                        snap = r.read_tree(tree[""][0])
                        got = {p: snap[p].id for p in snap}
                        assert got == want_tree
                        ids = [x.id for x in snap.records]
                        assert len(ids) == len(set(ids))
                        assert snap["/" + base_rel + "/e"]["usage"] == 0
                    done += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append((k, repr(e)))
            counts.append(done)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a reader thread hung"
    assert not errors, errors[:5]
    assert sum(counts) == n_threads * rounds


# --------------------------------------------------------------------------
# fork

def test_forked_child_can_use_the_parents_reader(no_leaks, tree):
    """Observed behaviour: it works. The child reads trees through the
    inherited link fds, single cgroups through iterator links of its own (the
    parent's one-call fetch program shares its output map, so a child does
    not use it; where fetch does not load, the parent's links are inherited
    too), and the parent's Reader keeps working afterwards."""
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        fetch = r.read_method.startswith("BPF_PROG_RUN")
        assert r.read(tree["a"][0]).id == tree["a"][1]
        base_snap = r.read_tree(tree[""][0])
        gc.collect()    # earlier tests' Readers must not close their links mid-test
        parent_links = my_links()

        def child():
            method = r.read_method
            a = r.read(tree["a"][0])                 # inherited link, or one of its own
            c = r.read(tree["a/b/c"][0])             # a new link of the child's
            snap = r.read_tree(tree[""][0])
            return (a.id, c.id, sorted(snap), snap.by_id(tree["e"][1])["usage"],
                    len(my_links() - parent_links), method)
        result = in_child(child)
        assert result[0] == "ok", result
        a_id, c_id, paths, e_usage, child_links, child_method = result[1]
        assert child_method.startswith("iterator")
        assert (a_id, c_id, e_usage) == (tree["a"][1], tree["a/b/c"][1], 0)
        assert paths == sorted(base_snap)
        # the child made links of its own for its single reads, and they died with it
        assert child_links == (2 if fetch else 1)
        assert my_links() == parent_links
        # the parent is unaffected
        assert r.read(tree["a"][0]).id == tree["a"][1]
        assert sorted(r.read_tree(tree[""][0])) == sorted(base_snap)
        assert my_links() == parent_links


FORK_EXIT_PROBE = r"""
import json, os, sys, pymemcg
path = sys.argv[1]
def links():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd) == "anon_inode:bpf_link":
                out.append(fd)
        except OSError:  # the listing's own fd
            pass
    return sorted(out)
r = pymemcg.Reader(stats=["usage"], backend="bpf")
r.read(path); r.read_tree(path)
before = links()
pid = os.fork()
if pid == 0:
    r.read(path)
    sys.exit(0)          # a normal exit: atexit and weakref finalizers run in the child
os.waitpid(pid, 0)
after = links()
ok = r.read(path).id == os.stat(path).st_ino
method = r.read_method
r.close()
print(json.dumps([before, after, ok, method]))
"""


def test_child_exit_leaves_the_parents_links(bpf_ok, tree):
    out = subprocess.run([sys.executable, "-c", FORK_EXIT_PROBE, tree["a"][0]],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    before, after, ok, method = json.loads(out.stdout)
    assert ok, "the parent could no longer read after the child exited"
    # the tree link and the removal watcher's tracepoint link, then either
    # the fetch program's rmdir tracepoint link (one bpf() call reads the
    # single cgroup) or the single cgroup's own link
    assert len(before) == 3, (before, method)
    assert after == before, "the child's exit closed the parent's links"


def test_fork_during_a_read_in_another_thread(bpf_ok, tree):
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        r.read(tree["a"][0])
        lock = r._backend._lock
        # stands for another thread being inside read() at the moment of fork
        assert lock.acquire(timeout=5)
        try:
            result = in_child(lambda: r.read(tree["a"][0]).id, timeout=3)
        finally:
            lock.release()
    assert result[0] == "ok" or (result[0] == "raised" and result[3]), result


# --------------------------------------------------------------------------
# many reads: flat fds and RSS

def test_50k_reads_keep_fds_and_rss_flat(no_leaks, tree):
    paths = [tree[k][0] for k in ("a", "a/b/c", "e", "d")]
    root = tree[""][0]
    with pymemcg.Reader(stats=STATS, backend="bpf") as r:
        read, read_tree = r.read, r.read_tree

        def burst(n_single: int, n_tree: int) -> None:
            for i in range(n_single):
                read(paths[i & 3])
            for _ in range(n_tree):
                read_tree(root)

        burst(5000, 500)          # warm-up: links, name cache, allocator arenas
        gc.collect()
        fds0, rss0 = open_fds(), rss_bytes()
        for _ in range(5):
            burst(10000, 400)     # 50,000 single reads and 2,000 tree reads in all
        gc.collect()
        fds1, rss1 = open_fds(), rss_bytes()
        assert fds1 == fds0, f"fds changed: +{fds1 - fds0} -{fds0 - fds1}"
        assert rss1 - rss0 < 2 << 20, f"RSS grew by {(rss1 - rss0) >> 10} KiB"
        assert read(tree["e"][0])["usage"] == 0


def test_soak_script_smoke(bpf_ok):
    """tools/soak.py (make soak runs it with 10^6 reads) works and judges flat."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "soak.py"),
                          "--reads", "20000", "--tree-reads", "4000", "--report-every", "5000"],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout
    assert "fds" in out.stdout and "rss" in out.stdout
