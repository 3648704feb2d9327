"""A Reader reads through a matching shared pin instead of loading its own
program: as root (no program of its own is loaded, seen in /proc/self/fd)
and as nobody (bpf() is forbidden to it here), against memory.stat."""

from __future__ import annotations

import os
import warnings

import pytest

import pymemcg
from pymemcg import pins

from conftest import as_nobody, my_links, open_fds, workload
from test_parity import assert_parity, kernel_values, quiet_read

NOBODY = 65534
STATS = ["usage", "limit", "anon", "file", "shmem", "file_mapped", "pgfault", "pgmajfault"]


def bpf_progs() -> int:
    """BPF programs this process holds open (a loaded Reader holds three)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-prog"
        except OSError:
            pass
    return n


@pytest.fixture
def shared(bpf_ok, cgroups, pin_dirs):
    """A subtree with a workload, a tree pin of its root and a single pin of
    the workload's cgroup, both readable by group nobody."""
    bpffs, meta = pin_dirs
    root = cgroups.make("shared")
    leaf = cgroups.make("shared/work")
    other = cgroups.make("shared/other")
    with open(os.path.join(leaf, "memory.limit_in_bytes"), "w") as f:
        f.write(str(256 << 20))
    cgroups.spawn(leaf, workload())
    kw = dict(group=NOBODY, mode=0o640, directory=bpffs, meta_dir=meta)
    tree = pins.pin(root, "tree", STATS, **kw)
    one = pins.pin(leaf, "one", STATS, tree=False, **kw)
    yield dict(root=root, leaf=leaf, other=other, tree=tree, one=one, dirs=(bpffs, meta))
    for p in (tree, one):
        pins.unpin(p.path, meta)


def _reader(dirs, **kw) -> pymemcg.Reader:
    return pymemcg.Reader(stats=STATS, shared_pins=dirs, **kw)


def test_nobody_reads_bpf_values_through_pins(shared, cgroup_version):
    leaf, root = shared["leaf"], shared["root"]

    def read():
        os.environ.pop("PYMEMCG_REQUIRE_BPF", None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _reader(shared["dirs"]) as r:
                rec, expected = quiet_read(r, leaf, cgroup_version, False)
                compared = assert_parity(rec, expected)
                snap = r.read_tree(root)
                out = dict(compared=compared, backend=r.backend, pins=r.pins,
                           source=rec.source("anon"), sources=r.sources,
                           tree=[(x.path, x.id, x.get("limit")) for x in snap.records],
                           warned=[str(w.message) for w in caught])
                # a cgroup no pin serves: this process cannot load a program
                out["other"] = r.read(shared["other"]).get("limit")
                out["after"] = (r.backend, [str(w.message) for w in caught],
                                r.read(leaf).source("anon"))
                return out
    result = as_nobody(read)
    assert result[0] == "ok", result
    r = result[1]
    assert r["compared"] >= 6
    assert r["backend"] == "pins" and r["warned"] == []
    assert r["pins"] == {shared["one"].path: "cgroup " + pymemcg.cgroupfs.resolve_cgroup(leaf).relpath,
                         shared["tree"].path: "tree " + pymemcg.cgroupfs.resolve_cgroup(root).relpath}
    assert r["source"].startswith(f"shared pin {shared['one'].path}: bpf/")
    assert all(s.startswith("shared pins: ") for s in r["sources"].values())
    with pymemcg.Reader(stats=STATS, backend="bpf", shared_pins=False) as direct:
        want = [(x.path, x.id, x.get("limit")) for x in direct.read_tree(root).records]
    assert r["tree"] == want and len(want) == 3
    backend, warned, source = r["after"]
    assert r["other"] == kernel_values(shared["other"], cgroup_version, False)["limit"]
    assert backend == "pins+text"
    assert len(warned) == 1 and "memory.stat text" in warned[0]
    assert source.startswith("shared pin ")  # pinned reads stay on the pin


def test_root_reader_loads_no_program_while_pins_serve(shared, cgroup_version, no_leaks):
    progs, fds = bpf_progs(), open_fds()
    with _reader(shared["dirs"], backend="bpf") as r:
        rec, expected = quiet_read(r, shared["leaf"], cgroup_version, False)
        assert_parity(rec, expected)
        snap = r.read_tree(shared["root"])
        assert len(snap) == 3 and snap.records[0].source("anon").startswith("shared pin ")
        # no program, no link, no pin of its own: only the pins' sessions
        assert (bpf_progs(), open_fds(), r.backend) == (progs, fds, "pins")
        assert r.read(shared["other"]).id == os.stat(shared["other"]).st_ino
        assert r.backend == "pins+bpf" and bpf_progs() > progs
        # its own single read: one bpf() call, or an iterator link it pins
        assert "BPF_PROG_RUN" in r.read_method or my_links()
        # the pin still serves what it serves
        assert r.read(shared["leaf"]).source("anon").startswith("shared pin ")
    assert bpf_progs() == progs


def test_unpinned_under_a_reader_it_loads_its_own(shared, no_leaks):
    progs = bpf_progs()
    with _reader(shared["dirs"], backend="bpf") as r:
        limit = r.read(shared["leaf"])["limit"]
        assert bpf_progs() == progs
        pins.unpin(shared["one"].path, shared["dirs"][1])
        rec = r.read(shared["leaf"])
        assert rec["limit"] == limit == 256 << 20
        assert rec.source("limit").startswith("bpf/") and r.backend == "pins+bpf"
        assert list(r.pins) == [shared["one"].path]  # it did read through it before


def test_pins_that_do_not_match_are_not_used(shared, no_leaks):
    bpffs, meta = shared["dirs"]
    # another selection, local values, or a single pin asked for a tree
    for kw in (dict(stats=STATS[:3]), dict(stats=STATS, local=True)):
        with pymemcg.Reader(backend="bpf", shared_pins=(bpffs, meta), **kw) as r:
            assert r.backend == "bpf"  # loaded its own at once: nothing matched
    # metadata others could have written is not trusted
    os.chmod(meta, 0o777)
    try:
        with pymemcg.Reader(stats=STATS, backend="bpf", shared_pins=(bpffs, meta)) as r:
            assert r.backend == "bpf"
    finally:
        os.chmod(meta, 0o755)
    # the same stats in another order match (records follow the pin's order)
    with pymemcg.Reader(stats=STATS[::-1], backend="bpf", shared_pins=(bpffs, meta)) as r:
        assert r.read(shared["leaf"])["limit"] == 256 << 20 and r.backend == "pins"
        snap = r.read_tree(shared["leaf"])  # only a single pin serves the leaf
        assert len(snap) == 1 and r.backend == "pins+bpf"


def test_pinned_tree_too_big_for_one_session(bpf_ok, cgroups, pin_dirs):
    bpffs, meta = pin_dirs
    root = cgroups.make("big")
    for i in range(400):  # 400 records of 40 stats do not fit 32 KiB
        os.mkdir(os.path.join(root, f"c{i}"))
    stats = list(pymemcg.catalog.STATS)[:40]
    big = pins.pin(root, "big", stats, group=NOBODY, mode=0o640, directory=bpffs,
                   meta_dir=meta)
    try:
        def read():
            os.environ.pop("PYMEMCG_REQUIRE_BPF", None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pymemcg.FallbackWarning)
                with pymemcg.Reader(stats=stats, shared_pins=(bpffs, meta)) as r:
                    return len(r.read_tree(root))
        result = as_nobody(read)
        assert result[:2] == ("raised", "PinTooSmall"), result
        assert "32 KiB" in result[2] and "pin fewer stats" in result[2]
        # root can load its own program: it reads the whole tree with it
        with pymemcg.Reader(stats=stats, backend="bpf", shared_pins=(bpffs, meta)) as r:
            assert r.backend == "pins"
            assert len(r.read_tree(root)) == 401 and r.backend == "pins+bpf"
            assert len(r.read_tree(root)) == 401
    finally:
        pins.unpin(big.path, meta)


def test_nobody_with_backend_bpf_gets_a_clear_error_where_no_pin_serves(shared):
    def read():
        with _reader(shared["dirs"], backend="bpf") as r:
            limit = r.read(shared["leaf"])["limit"]
            try:
                r.read(shared["other"])
            except pymemcg.Error as e:
                return limit, type(e).__name__, str(e)
    result = as_nobody(read)
    assert result[0] == "ok", result
    limit, name, message = result[1]
    assert limit == 256 << 20 and name == "PermissionDenied"
    assert message.startswith(f"no shared pin serves {shared['other']}") and "root" in message
