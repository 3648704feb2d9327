"""Shared pins: made by root with an owner, group and mode, read by an
unprivileged user (uid/gid nobody, no capabilities: bpf() is forbidden to it
here) through open + read of the pin, decoded by the same code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pymemcg
from pymemcg import pins
from pymemcg.cgroupfs import own_memory_cgroup

from conftest import as_nobody

NOBODY = 65534


def test_unprivileged_reader_reads_a_shared_pin(bpf_ok, cgroups, pin_dirs):
    bpffs, meta = pin_dirs
    kids = [cgroups.make(f"shared/k{i}") for i in range(5)]
    root = os.path.dirname(kids[0])
    with open(os.path.join(kids[0], "memory.limit_in_bytes"), "w") as f:
        f.write(str(48 << 20))
    info = pins.pin(root, "test-tree", ["usage", "limit", "anon"], group=NOBODY, mode=0o640,
                    directory=bpffs, meta_dir=meta)
    assert (info.group, info.mode, info.tree, info.current) == (NOBODY, 0o640, True, True)
    assert [p.path for p in pins.pins(bpffs, meta)] == [info.path]
    single = pins.pin(kids[0], "test-one", ["usage", "limit"], tree=False, group=NOBODY,
                      mode=0o640,
                      directory=bpffs, meta_dir=meta)

    def read():
        snap = pins.PinReader(info.path, meta).read()
        one = pins.PinReader(single.path, meta).read()
        return ([(r.path, r.id, r.get("limit")) for r in snap.records],
                (one.path, one.id, one["limit"]))
    result = as_nobody(read)
    assert result[0] == "ok", result
    tree, one = result[1]
    with pymemcg.Reader(stats=["usage", "limit", "anon"], backend="bpf") as r:
        direct = r.read_tree(root)
    assert tree == [(x.path, x.id, x.get("limit")) for x in direct.records]
    assert one == (direct.records[1].path, os.stat(kids[0]).st_ino, 48 << 20)
    pins.unpin(info.path, meta)
    pins.unpin(single.path, meta)
    assert pins.pins(bpffs, meta) == []


def test_pin_without_permission_and_oversized_tree(bpf_ok, cgroups, pin_dirs):
    bpffs, meta = pin_dirs
    root = cgroups.make("big")
    for i in range(400):  # 400 records of 40 stats do not fit 32 KiB
        os.mkdir(os.path.join(root, f"c{i}"))
    big = pins.pin(root, "big", list(pymemcg.catalog.STATS)[:40], group=NOBODY, mode=0o640,
                   directory=bpffs, meta_dir=meta)
    closed = pins.pin(root, "closed", ["usage"], directory=bpffs, meta_dir=meta)  # 0600 root

    def read(path):
        return lambda: pins.PinReader(path, meta).read()
    r = as_nobody(read(big.path))
    assert r[:2] == ("raised", "PinTooSmall") and "32 KiB" in r[2], r
    r = as_nobody(read(closed.path))
    assert r[0] == "raised" and r[1] in ("PermissionError", "ReadError", "PinMismatch"), r
    with pytest.raises(pymemcg.BpfUnavailable, match="exists"):
        pins.pin(root, "closed", ["usage"], directory=bpffs, meta_dir=meta)
    pins.unpin(big.path, meta)
    pins.unpin(closed.path, meta)


def test_pin_dir_that_is_a_symlink_is_refused(bpf_ok, pin_dirs, tmp_path):
    bpffs, meta = pin_dirs
    link = tmp_path / "bpf-link"
    link.symlink_to(bpffs)
    with pytest.raises(pymemcg.BpfUnavailable, match="symlink"):
        pins.pin(own_memory_cgroup(), "x", ["usage"], directory=str(link), meta_dir=meta)


def test_cli_pin_pins_unpin(bpf_ok, cgroups, pin_dirs):
    import sys
    bpffs, meta = pin_dirs
    root = cgroups.make("cli")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pymemcg", *args], capture_output=True,
                              text=True)
    r = cli("pin", root, "--name", "t", "--stats", "usage,anon", "--group", "nogroup",
            "--mode", "640", "--dir", bpffs, "--meta-dir", meta)
    assert r.returncode == 0, r.stderr
    assert "owner 0:65534 mode 640" in r.stdout
    r = cli("pins", "--dir", bpffs, "--meta-dir", meta)
    assert r.returncode == 0 and "usage,anon" in r.stdout and "current" in r.stdout
    r = cli("pin", root, "--name", "t", "--dir", bpffs, "--meta-dir", meta)
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr
    r = cli("unpin", os.path.join(bpffs, "t"), "--meta-dir", meta)
    assert r.returncode == 0 and "t" not in os.listdir(bpffs) and os.listdir(meta) == []


def test_stale_shared_pins_are_listed_and_pruned(bpf_ok, cgroups, pin_dirs):
    """A pin whose cgroup was removed keeps that cgroup allocated: `pins`
    says so and `unpin --stale` removes it (and metadata without a pin),
    leaving live pins and files that are not pymemcg's alone."""
    bpffs, meta = pin_dirs
    gone, kept = cgroups.make("stale/gone"), cgroups.make("stale/kept")
    doomed = pins.pin(gone, "doomed", ["usage"], tree=False, directory=bpffs, meta_dir=meta)
    live = pins.pin(kept, "live", ["usage"], directory=bpffs, meta_dir=meta)
    lost = pins.pin(kept, "lost", ["usage"], directory=bpffs, meta_dir=meta)
    os.unlink(lost.path)  # its metadata stays, naming it
    with open(os.path.join(meta, "orphan.json"), "w") as f:
        f.write("{}")  # names no pin: not provably pymemcg's, so left alone
    os.rmdir(gone)
    # a renamed cgroup (cgroup v1 allows it) is alive: the pin still walks it
    renamed = os.path.join(os.path.dirname(kept), "renamed")
    os.rename(kept, renamed)
    cgroups.make("stale/kept")  # the old name, now another cgroup
    with pytest.raises(pymemcg.ReadError, match="was removed"):
        pins.PinReader(doomed.path, meta).read()  # not mistaken for a too-big tree
    listed = {p.path: p.alive for p in pins.pins(bpffs, meta)}
    assert listed == {doomed.path: False, live.path: True}
    out = subprocess.run([sys.executable, "-m", "pymemcg", "pins", "--dir", bpffs,
                          "--meta-dir", meta], capture_output=True, text=True, check=True).stdout
    assert "CGROUP GONE" in out.splitlines()[0] and "CGROUP GONE" not in out.splitlines()[1]
    assert subprocess.run([sys.executable, "-m", "pymemcg", "unpin"],
                          capture_output=True, text=True).returncode == 2
    r = subprocess.run([sys.executable, "-m", "pymemcg", "unpin", "--stale", "--dir", bpffs,
                        "--meta-dir", meta], capture_output=True, text=True)
    assert r.stdout.splitlines() == [f"removed stale {doomed.path}",
                                     f"removed stale {os.path.join(meta, 'doomed.json')}",
                                     f"removed stale {os.path.join(meta, 'lost.json')}"], r
    assert r.returncode == 2 and "left in place" in r.stderr and "orphan.json" in r.stderr
    assert [p.path for p in pins.pins(bpffs, meta)] == [live.path]
    assert sorted(os.listdir(meta)) == ["live.json", "orphan.json"]
    refused: list = []
    assert pins.prune(bpffs, meta, refused=refused) == []  # nothing more it may do
    assert len(refused) == 1 and "not pin metadata" in refused[0]
    pins.unpin(live.path, meta)


def test_cli_unpin_by_name_from_anywhere_and_orphans(bpf_ok, cgroups, pin_dirs, tmp_path):
    """unpin takes the name given to pin --name (or a path) wherever it runs,
    and says when there is nothing to remove; pins lists pins without
    metadata as orphans, with the command that removes them; --stale
    removes them too."""
    import re
    bpffs, meta = pin_dirs
    root = cgroups.make("names")
    elsewhere = str(tmp_path)  # the commands run here, not in the pin directory
    dirs = ("--dir", bpffs, "--meta-dir", meta)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pymemcg", *args], capture_output=True,
                              text=True, cwd=elsewhere)

    def ours():  # the kernel pins maps.debug and progs.debug in every bpffs root
        return sorted(set(os.listdir(bpffs)) - {"maps.debug", "progs.debug"})
    for name in "abcd":
        assert cli("pin", root, "--name", name, "--stats", "usage", *dirs).returncode == 0
    r = cli("unpin", "a", *dirs)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"unpinned {bpffs}/a", f"removed {meta}/a.json"]
    assert ours() == ["b", "c", "d"]
    r = cli("unpin", "a", *dirs)  # nothing left: an error, not "unpinned"
    assert (r.returncode, r.stdout) == (2, ""), r
    assert "nothing to remove" in r.stderr and f"{bpffs}/a" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pymemcg", "unpin", "bpf/b", *dirs],
                       capture_output=True, text=True, cwd=os.path.dirname(bpffs))  # a path
    assert r.returncode == 0 and ours() == ["c", "d"], r.stderr

    for name in "cd":  # orphans: their metadata is gone, the pins still serve
        os.unlink(os.path.join(meta, f"{name}.json"))
    r = cli("pins", *dirs)
    assert r.returncode == 0
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert sorted(lines) == [f"{bpffs}/c", f"{bpffs}/d"]
    assert all("ORPHAN" in line and "no metadata" in line for line in lines.values())
    command = re.search(r"`pymemcg (unpin [^`]*)`", lines[f"{bpffs}/c"]).group(1).split()
    assert command == ["unpin", f"{bpffs}/c", "--meta-dir", meta]
    r = cli(*command)
    assert r.returncode == 0 and ours() == ["d"], r.stderr
    r = cli("unpin", "--stale", *dirs)
    assert r.returncode == 0 and r.stdout.splitlines() == [f"removed stale {bpffs}/d"]
    assert ours() == [] and os.listdir(meta) == []
    assert cli("pins", *dirs).stdout == ""


def test_pin_reader_that_never_gets_a_whole_trailer_says_retry(monkeypatch):
    """A session whose trailer says another session took the bookkeeping
    (visited = 2**64-1) every time is EAGAIN, not a tree too big for the pin."""
    import errno
    from pymemcg import wire
    from pymemcg._record_h import FORMAT_VERSION
    doc = {"format": FORMAT_VERSION, "tree": True, "stats": ["usage"], "local": False,
           "root": "/x", "cgroup_id": 5}
    reader = pins.PinReader.from_doc("/nowhere/pin", doc)
    buf = wire.encode_record(reader.selection, 5, 1, 1, 0, 1, [7]) + wire.encode_trailer(
        9, 2**64 - 1, wire.selection_digest(["usage"], False, False))

    def session():
        reader._buf[:len(buf)] = buf
        return len(buf)
    monkeypatch.setattr(reader, "_session", session)
    with pytest.raises(pymemcg.ReadError, match="read again") as e:
        reader.records()
    assert e.value.errno == errno.EAGAIN and not isinstance(e.value, pins.PinTooSmall)
