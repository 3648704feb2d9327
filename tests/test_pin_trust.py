"""Decoding never trusts what someone other than root could have written.

The attack: root pins a cgroup for user U (`pymemcg pin CG --owner U --mode
0640 --stats anon,file,usage`); U rewrites the pin's metadata with the stats
in another order; a root Reader with the same stats reads through the pin.
It must raise or ignore the pin, never report usage as anon. The program
itself says what its records hold (the trailer's selection digest), and
metadata that anyone but root can write is refused. Nor does a pin's path
outlive its cgroup: a record is labelled only with the path its cgroup has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pymemcg
from pymemcg import pins, wire
from pymemcg.backends.bpf import BpfBackend
from pymemcg.programs import ORDER_DESCENDANTS_PRE, ORDER_SELF_ONLY
from pymemcg.cgroupfs import memory_mount
from pymemcg.record_format import TRAILER

from conftest import MiB, as_nobody, workload

NOBODY = 65534
STATS = ["anon", "file", "usage"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pymemcg", *args], capture_output=True,
                          text=True, cwd=cwd)


def reverse_stats(meta_file: str) -> None:
    """The attack: the same stats in another order (the pin's owner could
    write the file until it was made root's)."""
    with open(meta_file) as f:
        doc = json.load(f)
    doc["stats"].reverse()
    with open(meta_file, "w") as f:
        json.dump(doc, f)


@pytest.fixture
def victim(bpf_ok, cgroups, pin_dirs):
    """A cgroup whose usage, anon and file differ by many MiB, pinned by the
    CLI for user nobody as in the attack."""
    bpffs, meta = pin_dirs
    cg = cgroups.make("victim")
    cgroups.spawn(cg, workload(anon=32 * MiB, cache=24 * MiB, shmem=8 * MiB))
    r = cli("pin", cg, "--name", "x", "--owner", "nobody", "--mode", "0640",
            "--stats", ",".join(STATS), "--dir", bpffs, "--meta-dir", meta)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(cg, "memory.stat")) as f:
        f.read()  # a child's stats read 0 until something flushes them
    with pymemcg.Reader(stats=STATS, backend="bpf", shared_pins=False) as r:
        truth = r.read(cg).as_dict()
    assert truth["usage"] > truth["anon"] + 16 * MiB  # a swap would show
    return dict(cg=cg, pin=os.path.join(bpffs, "x"), meta=os.path.join(meta, "x.json"),
                dirs=(bpffs, meta), truth=truth)


def read_through_pins(victim):
    """What a root Reader (shared pins on) answers: ("raised", class) or
    ("read", values, backend)."""
    try:
        with pymemcg.Reader(stats=STATS, backend="bpf", shared_pins=victim["dirs"]) as r:
            snap = r.read_tree(victim["cg"])
            return ("read", snap.records[0].as_dict(), r.backend)
    except pymemcg.Error as e:
        return ("raised", type(e).__name__, str(e))


def assert_not_mislabelled(outcome, truth):
    if outcome[0] == "raised":
        return
    values = outcome[1]
    for name in STATS:  # the workload sleeps: only a few pages move
        assert abs(values[name] - truth[name]) < 4 * MiB, (name, values, truth)


def test_programs_say_what_their_records_hold(bpf_ok, cgroups):
    """Every session's trailer carries the digest of the selection the
    program was loaded with, one for each program (tree, single cgroup)."""
    cg = cgroups.make("sel")
    os.mkdir(os.path.join(cg, "kid"))
    mount = memory_mount()
    for local in (False, True):
        be = BpfBackend(STATS, local, mount.version, mount.mountpoint,
                        singles=False)
        try:
            root = pymemcg.cgroupfs.resolve_cgroup(cg)
            for order, path in ((ORDER_DESCENDANTS_PRE, False), (ORDER_SELF_ONLY, True)):
                n = be._walks.sessions.run(be._links.link(root, order))
                held = TRAILER.unpack_from(be._buf, n - TRAILER.size)[0]
                assert held == wire.selection_digest(STATS, local, path)
                assert held != wire.selection_digest(STATS[::-1], local, path)
                assert held != wire.selection_digest(STATS, not local, path)
                assert held != wire.selection_digest(STATS, local, not path)
        finally:
            be.close()


def test_a_program_of_another_selection_is_refused(bpf_ok, cgroups):
    """The Reader checks its own sessions too (fast path included): records
    of another selection raise SelectionMismatch instead of being decoded."""
    cg = cgroups.make("own")
    mount = memory_mount()
    be = BpfBackend(STATS, False, mount.version, mount.mountpoint, singles=False)
    try:
        assert be.read(cg)["usage"] >= 0 and be.read(cg)["usage"] >= 0  # fast path learnt
        assert len(be.read_tree(cg)) == 1
        # as if the loaded program held the stats in the opposite order
        other = wire.selection_digest(STATS[::-1], False, True)
        be._sel_path = be._singles.sel_path = be._walks.sel_tree = other
        with pytest.raises(pymemcg.SelectionMismatch, match="another selection"):
            be.read(cg)
        with pytest.raises(pymemcg.SelectionMismatch, match="another selection"):
            be.read_tree(cg)
    finally:
        be.close()


def test_root_owned_metadata_with_stats_reordered(victim):
    """Even metadata root wrote cannot relabel values: the program's digest
    disagrees, and both readers say so."""
    reverse_stats(victim["meta"])
    outcome = read_through_pins(victim)
    assert_not_mislabelled(outcome, victim["truth"])
    assert outcome[:2] == ("raised", "SelectionMismatch"), outcome
    assert "unpin it and pin it again" in outcome[2]
    with pytest.raises(pymemcg.SelectionMismatch):
        pins.PinReader(victim["pin"], victim["dirs"][1]).read()


def test_the_pins_owner_cannot_relabel_its_values(victim):
    """The attack end to end: the pin's owner rewrites the metadata."""
    tampered = as_nobody(lambda: reverse_stats(victim["meta"]))
    outcome = read_through_pins(victim)
    assert_not_mislabelled(outcome, victim["truth"])
    assert tampered[:2] == ("raised", "PermissionError"), tampered
    # and the pin still serves, root and its owner
    assert outcome[0] == "read" and outcome[2] == "pins", outcome
    mine = as_nobody(lambda: pins.PinReader(victim["pin"], victim["dirs"][1]).read()
                     .records[0].as_dict())
    assert mine[0] == "ok", mine
    assert_not_mislabelled(("read", mine[1]), victim["truth"])


def test_the_pin_is_the_owners_the_metadata_roots(victim):
    """pin --owner gives the pin (read-only) to its owner; the metadata it
    is decoded by stays root's, readable by everyone."""
    st = os.stat(victim["pin"])
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (NOBODY, 0, 0o640)
    st = os.stat(victim["meta"])
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o644)


@pytest.mark.parametrize("change", ["owned by nobody", "group-writable", "world-writable",
                                    "a symlink"])
def test_metadata_others_could_write_is_refused(victim, tmp_path, change):
    """Metadata as the pin's owner could have left it (before the fix, its
    owner's file): the Reader ignores the pin and reads with its own
    program, PinReader refuses it, and nothing is mislabelled, whatever it
    says."""
    meta = victim["meta"]
    if change == "owned by nobody":
        os.chown(meta, NOBODY, NOBODY)
    elif change == "group-writable":
        os.chmod(meta, 0o664)
    elif change == "world-writable":
        os.chmod(meta, 0o646)
    else:
        elsewhere = tmp_path / "x.json"
        os.rename(meta, elsewhere)
        os.symlink(elsewhere, meta)
    outcome = read_through_pins(victim)
    assert_not_mislabelled(outcome, victim["truth"])
    assert outcome[0] == "read" and outcome[2] == "bpf", outcome  # the pin was not used
    with pytest.raises(pins.UntrustedMetadata if change != "a symlink" else pins.PinMismatch,
                       match="owned by root" if change != "a symlink" else "symlink"):
        pins.PinReader(victim["pin"], victim["dirs"][1])
    # what it says does not matter any more
    reverse_stats(meta)
    assert_not_mislabelled(read_through_pins(victim), victim["truth"])


def test_pin_mode_with_write_bits_is_refused(bpf_ok, cgroups, pin_dirs):
    bpffs, meta = pin_dirs
    cg = cgroups.make("modes")
    for mode in ("660", "0602", "4640", "1640", "rw"):
        r = cli("pin", cg, "--name", "w", "--mode", mode, "--stats", "usage",
                "--dir", bpffs, "--meta-dir", meta)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (mode, r.stderr)
        assert "mode" in r.stderr, r.stderr
        assert not os.path.exists(os.path.join(bpffs, "w"))
        assert not os.path.exists(os.path.join(meta, "w.json"))
    with pytest.raises(pins.InvalidPin, match="must not be writable by its group or others"):
        pins.pin(cg, "w", ["usage"], mode=0o620, directory=bpffs, meta_dir=meta)
    assert pins.pin(cg, "r", ["usage"], mode=0o440, directory=bpffs, meta_dir=meta).mode == 0o440


@pytest.mark.parametrize("tree", [False, True])
def test_pin_reader_answers_for_the_cgroup_at_the_path(bpf_ok, cgroups, pin_dirs, tree):
    """cgroup v1 allows rename: after the pinned cgroup moves and another
    is made at its old path, a read is not labelled with the old path."""
    if memory_mount().version != 1:
        pytest.skip("cgroup v2 does not rename cgroups")
    bpffs, meta = pin_dirs
    cg = cgroups.make("moving/here")
    info = pins.pin(cg, "moving", ["usage", "limit"], tree=tree, directory=bpffs,
                    meta_dir=meta)
    reader = pins.PinReader(info.path, meta)
    first = reader.read()
    first = first.records[0] if tree else first
    assert first.id == os.stat(cg).st_ino
    os.rename(cg, os.path.join(os.path.dirname(cg), "there"))
    os.mkdir(cg)  # another cgroup where the pinned one was
    for r in (reader, pins.PinReader(info.path, meta)):
        try:
            got = r.read()
        except pymemcg.Error as e:
            assert type(e).__name__ == "PinMoved", e
            assert f"serves cgroup {first.id}" in str(e) and str(os.stat(cg).st_ino) in str(e)
            assert "renamed or moved" in str(e) and f"pin {cg} again" in str(e)
            continue
        got = got.records[0] if tree else got
        assert got.id == os.stat(cg).st_ino, (got.path, got.id, os.stat(cg).st_ino)
    os.rmdir(cg)  # and nothing there
    with pytest.raises(pymemcg.ReadError, match="renamed or moved"):
        reader.read()
