"""Whole-tree snapshots: complete past the 32 KiB session buffer, each
cgroup exactly once, ids equal to st_ino, paths and levels right."""

from __future__ import annotations

import os

import pytest

import pymemcg

N_CGROUPS = 2000


def _make_tree(cgroups, n: int) -> dict:
    """n cgroups under one parent: 40 groups of up to 49 children, some nested.
    Returns {relative path under the parent: st_ino}."""
    made = {}
    i = 0
    g = 0
    while i < n:
        group = f"g{g:03d}"
        cgroups.make(group)
        made[group] = None
        i += 1
        for c in range(49):
            if i >= n:
                break
            rel = f"{group}/c{c:02d}" if c % 7 else f"{group}/c{c:02d}/deep"
            cgroups.make(rel)
            made[rel] = None
            i += 1
            if rel.endswith("/deep"):
                made[os.path.dirname(rel)] = None
                i += 1
        g += 1
    base = cgroups.base
    return {rel: os.stat(os.path.join(base, rel)).st_ino for rel in made}


def usage_now(path: str) -> int:
    name = "memory.usage_in_bytes" if os.path.exists(os.path.join(path, "memory.usage_in_bytes")) \
        else "memory.current"
    with open(os.path.join(path, name)) as f:
        return int(f.read())


def test_snapshot_of_2000_cgroups(bpf_ok, cgroups):
    expected = _make_tree(cgroups, N_CGROUPS)
    assert len(expected) >= N_CGROUPS
    with pymemcg.Reader(stats=["usage", "anon", "file", "pgfault", "oom_kill"],
                        backend="bpf") as r:
        for _ in range(2):  # the second read reuses the grown program and name cache
            snap = r.read_tree(cgroups.base)
            ids = [rec.id for rec in snap.records]
            assert len(ids) == len(set(ids)), "a cgroup appeared twice"
            assert len(snap) == len(expected) + 1  # + the parent itself
            root = snap.by_id(os.stat(cgroups.base).st_ino)
            assert root.path == snap.root and snap.records[0] == root
            for rel, ino in expected.items():
                rec = snap.by_id(ino)
                assert rec.path == snap.root + "/" + rel
                assert snap[rec.path] == rec
                assert rec.level == root.level + rel.count("/") + 1
                assert rec.parent_id == os.stat(os.path.dirname(
                    os.path.join(cgroups.base, rel))).st_ino
                path = os.path.join(cgroups.base, rel)
                if rec["usage"] != usage_now(path):
                    # a page counter, exact, but it moved since the walk: now, both ways
                    assert r.read(path)["usage"] == usage_now(path), rel
                assert rec.get("oom_kill") == 0


def test_tree_follows_creation_and_removal(bpf_ok, cgroups):
    cgroups.make("a/b")
    with pymemcg.Reader(stats=["usage"], backend="bpf") as r:
        before = r.read_tree(cgroups.base)
        assert {p.rsplit("/", 1)[-1] for p in before} >= {"a", "b"}
        os.rmdir(os.path.join(cgroups.base, "a/b"))
        cgroups.make("a/c")
        after = r.read_tree(cgroups.base)
        names = {p.rsplit("/", 1)[-1] for p in after}
        assert "c" in names and "b" not in names
        assert len(after) == 3


def test_text_backend_tree_matches_bpf_tree_shape(bpf_ok, cgroups):
    _make_tree(cgroups, 120)
    with pymemcg.Reader(stats=["usage"], backend="bpf") as b, \
            pymemcg.Reader(stats=["usage"], backend="text") as t:
        sb, st = b.read_tree(cgroups.base), t.read_tree(cgroups.base)
        assert {(r.path, r.id, r.level, r.parent_id) for r in sb.records} == \
            {(r.path, r.id, r.level, r.parent_id) for r in st.records}


@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_walk_order_is_pre_order(bpf_ok, cgroups, backend):
    """Each cgroup comes before its descendants, and a subtree is one run of
    records: the next record is a child, or ends every subtree it is not in."""
    for rel in ["a", "b/x", "b/y/z", "a/x", "c", "b/w"]:
        cgroups.make(rel)
    with pymemcg.Reader(stats=["usage"], backend=backend) as r:
        paths = r.read_tree(cgroups.base).paths
    assert len(set(paths)) == len(paths) == 9
    for i, p in enumerate(paths):
        below = [j for j, q in enumerate(paths) if q.startswith(p + "/")]
        assert below == list(range(i + 1, i + 1 + len(below))), \
            f"the subtree of {p} is not one run of records after it: {paths}"


def test_rename_is_followed(bpf_ok, cgroups):
    """cgroup v1 allows rename: a path must never serve another cgroup."""
    a = cgroups.make("r/a")
    cgroups.make("r/a/kid")
    base = os.path.dirname(a)
    with pymemcg.Reader(stats=["usage"], backend="bpf") as r:
        old_id = r.read(a).id
        before = r.read_tree(base)
        assert before.by_id(old_id).path.endswith("/r/a")
        b = os.path.join(base, "b")
        os.rename(a, b)
        with pytest.raises(pymemcg.CgroupNotFound):
            r.read(a)
        assert r.read(b).id == old_id and r.read(b).path.endswith("/r/b")
        after = r.read_tree(base)
        assert after.by_id(old_id).path.endswith("/r/b")
        assert any(p.endswith("/r/b/kid") for p in after)
        os.mkdir(a)  # the old path, now a different cgroup
        new = r.read(a)
        assert new.id == os.stat(a).st_ino != old_id


def test_name_hash_matches_the_bpf_program(bpf_ok, cgroups):
    from pymemcg.hashes import name_hash, path_hash
    names = ["x", "12345678", "1234567", "a" * 200, "with space", "ünïcode-名前"]
    for name in names:
        cgroups.make(f"h/{name}")
    with pymemcg.Reader(stats=["usage"], backend="bpf") as r:
        snap = r.read_tree(os.path.join(cgroups.base, "h"))
        for name in names:
            rec = snap[snap.root + "/" + name]
            assert rec.name_hash == name_hash(name)
            # single reads carry the hash of the whole path instead
            single = r.read(os.path.join(cgroups.base, "h", name))
            assert single.name_hash == path_hash(single.path) != rec.name_hash


def test_unchanged_tree_reuses_its_paths(bpf_ok, cgroups):
    """A walk of the same shape (ids, parents, names) reuses the last paths;
    any change (a new cgroup, a removal) makes them anew."""
    base = cgroups.make("same")
    cgroups.make("same/x")
    with pymemcg.Reader(stats=["usage"], backend="bpf") as r:
        s1, s2 = r.read_tree(base), r.read_tree(base)
        assert sorted(s1) == sorted(s2) and len(s1) == 2
        assert s1._index is s2._index  # nothing was recomputed
        y = cgroups.make("same/y")
        s3 = r.read_tree(base)
        assert s3._index is not s2._index and s3.root + "/y" in s3 and len(s3) == 3
        os.rmdir(y)
        s4 = r.read_tree(base)
        assert sorted(s4) == sorted(s1) and s4.root + "/y" not in s4
        # the same ids and parents, one name changed: only its name hash moved
        os.rename(os.path.join(base, "x"), os.path.join(base, "z"))
        s5 = r.read_tree(base)
        assert s5._index is not s4._index and len(s5) == 2
        assert s5.root + "/z" in s5 and s5.root + "/x" not in s5
        assert r.read_tree(base)._index is s5._index


def test_overflow_tree_read_by_two_processes_of_one_program(bpf_ok, cgroups):
    """A forked child reads through its parent's program: both walk trees
    that need the overflow map at the same time, on the same map and
    bookkeeping. Each read is the whole tree or, when the other process's
    sessions kept taking the map, ReadError(EAGAIN); never a partial or
    mixed tree."""
    import errno
    import pickle
    import time
    expected = set(_make_tree(cgroups, 500).values()) | {os.stat(cgroups.base).st_ino}
    seconds = 3.0
    with pymemcg.Reader(stats=["usage", "anon", "file", "pgfault", "oom_kill"],
                        backend="bpf", shared_pins=False) as r:
        be = r._backend
        first = r.read_tree(cgroups.base)
        assert {x.id for x in first.records} == expected
        assert len(expected) > be._links.prog.seq_budget  # the map is needed
        prog = be._links.prog.prog

        def loop():
            out = {"whole": 0, "eagain": 0, "bad": []}
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    snap = r.read_tree(cgroups.base)
                except pymemcg.ReadError as e:
                    if e.errno != errno.EAGAIN:
                        out["bad"].append(str(e))
                    out["eagain"] += e.errno == errno.EAGAIN
                    continue
                ids = [x.id for x in snap.records]
                if len(ids) == len(expected) and set(ids) == expected:
                    out["whole"] += 1
                else:
                    out["bad"].append((len(ids), len(set(ids) ^ expected)))
            # the same program throughout (a reload would not share the map)
            out["same"] = be._links.prog.prog == prog
            return out
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(rfd)
                os.write(wfd, pickle.dumps(loop()))
            finally:
                os._exit(0)
        os.close(wfd)
        mine = loop()
        with os.fdopen(rfd, "rb") as f:
            child = pickle.loads(f.read())
        os.waitpid(pid, 0)
    for who, out in (("parent", mine), ("child", child)):
        assert out["bad"] == [] and out["same"], (who, out)
        assert out["whole"] > 0, (who, out)
