"""Stale pins are found by lock, not by pid; bpffs unmounted under readers.

Every test that removes stale pins does it in a private bpffs instance, so
that pymemcg processes elsewhere on the host keep theirs. Namespaces are made
with unshare(1) for a child process; the host's mounts are left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import pymemcg
from pymemcg import bpf as bpf_mod
from pymemcg.cgroupfs import memory_mount, own_memory_cgroup

from conftest import my_pins, open_fds


@pytest.fixture
def pin_dir(bpf_ok, pin_dirs):
    """A Reader pin directory (0700, as bpf.py makes it) on a private bpffs."""
    d = os.path.join(pin_dirs[0], "pymemcg")
    bpf_mod._make_pin_dir(d)
    return d


def _backend(pin_dir):
    # singles=False: single reads through pinned iterator links, the pins
    # these tests are about (not one bpf() call, which pins nothing)
    mount = memory_mount()
    return bpf_mod.BpfBackend(["usage"], False, mount.version, mount.mountpoint, pin_dir=pin_dir,
                              singles=False)


def _python(code: str, *args: str, prefix=(), **kw) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-c", textwrap.dedent(code), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)


def test_pin_named_for_a_live_pid_without_its_lock_is_stale(pin_dir):
    """pid 1 runs, but the owner that named the pin holds no lock: stale."""
    own = own_memory_cgroup()
    be = _backend(None)  # a real link, pinned by hand under a made-up owner
    try:
        link = be._link(pymemcg.reader.resolve_cgroup(own), bpf_mod.ORDER_SELF_ONLY)
        os.mkdir(os.path.join(pin_dir, "owner-1-0badf00d"))
        name = f"v{bpf_mod.FORMAT_VERSION}-{'a' * 12}-0badf00d-{link.cgroup.id}-1-1"
        assert be._lib.pmc_link_pin(link.fd, os.path.join(pin_dir, name).encode()) == 0
        assert bpf_mod.remove_stale_pins(pin_dir) == 1
        assert os.listdir(pin_dir) == []
    finally:
        be.close()


def test_live_owner_keeps_its_pins_seen_from_another_pid_namespace(pin_dir):
    own = own_memory_cgroup()
    be = _backend(pin_dir)
    try:
        be.read(own)
        be.read_tree(own)
        pins = sorted(os.listdir(pin_dir))
        assert len(pins) == 3  # the owner's lock directory and two pins
        # in a new pid namespace this process's pid does not exist
        p = _python("""
            import os, sys
            from pymemcg.bpf import remove_stale_pins
            print(os.getpid(), remove_stale_pins(sys.argv[1]))
        """, pin_dir, prefix=["unshare", "--pid", "--fork"])
        out, _ = p.communicate()
        assert p.returncode == 0
        assert out.split() == ["1", "0"]
        assert sorted(os.listdir(pin_dir)) == pins
        assert be.read(own).id == os.stat(own).st_ino
    finally:
        be.close()
    assert os.listdir(pin_dir) == []


def test_reader_in_a_pid_namespace_keeps_its_pins_until_it_exits(pin_dir):
    """Its pins carry pid 1 (its own namespace's); the host's pid 1 runs
    all along, yet they go once the reader is gone, and not before."""
    p = _python("""
        import os, sys
        from pymemcg import bpf
        from pymemcg.cgroupfs import memory_mount, own_memory_cgroup
        m = memory_mount()
        be = bpf.BpfBackend(["usage"], False, m.version, m.mountpoint, pin_dir=sys.argv[1],
                            singles=False)
        be.read(own_memory_cgroup())
        print("ready", os.getpid(), flush=True)
        sys.stdin.read()
        os._exit(0)  # no close(): its pins stay behind
    """, pin_dir, prefix=["unshare", "--pid", "--fork"])
    try:
        assert p.stdout.readline().split() == ["ready", "1"]
        names = sorted(os.listdir(pin_dir))
        assert [n.split("-")[0] for n in names] == ["owner", f"v{bpf_mod.FORMAT_VERSION}"]
        assert names[1].endswith("-1-1")  # order 1, pid 1
        assert bpf_mod.remove_stale_pins(pin_dir) == 0
        assert sorted(os.listdir(pin_dir)) == names
    finally:
        p.stdin.close()
        p.wait()
    assert bpf_mod.remove_stale_pins(pin_dir) == 1
    assert os.listdir(pin_dir) == []


UNMOUNTED = """
import json, os, subprocess, sys
import pymemcg
from pymemcg import bpf, pins
one, two, private = sys.argv[1:4]
def fds():
    return sorted(os.listdir("/proc/self/fd"))
def pins_of_mine():
    return sorted(p for p in os.listdir(bpf.PIN_DIR) if p.endswith("-%d" % os.getpid()))
out = {"fds0": fds()}
r = pymemcg.Reader(stats=["usage", "limit"], backend="bpf", shared_pins=False)
out["before"] = [r.read(one)["limit"], len(r.read_tree(one))]
out["pins"] = pins_of_mine()
# a shared pin on a bpffs instance of this namespace only
subprocess.run(["mount", "-t", "bpf", "bpf", private], check=True)
shared = pins.pin(one, "one", ["usage", "limit"], tree=False, directory=private + "/p",
                  meta_dir=private + ".meta")
pr = pins.PinReader(shared.path, private + ".meta")
pinned = pymemcg.Reader(stats=["usage", "limit"], backend="bpf",
                        shared_pins=(private + "/p", private + ".meta"))
out["pinned"] = [pr.read()["limit"], pinned.read(one)["limit"], pinned.backend]
subprocess.run(["umount", "-l", "/sys/fs/bpf"], check=True)
subprocess.run(["umount", "-l", private], check=True)
out["gone"] = os.path.exists(bpf.PIN_DIR)
out["after"] = [r.read(one)["limit"], len(r.read_tree(one)), r.read(two)["limit"],
                len(r.read_tree(two))]
out["method"] = r.read_method
try:
    pr.read()
    out["pin_reader"] = "read"
except pymemcg.Error as e:
    out["pin_reader"] = [type(e).__name__, str(e)]
out["pinned_after"] = [pinned.read(one)["limit"], pinned.backend]
r.close(); pinned.close()
out["fds1"] = fds()
print(json.dumps(out))
"""


def test_bpffs_unmounted_under_readers(bpf_ok, cgroups, tmp_path):
    one, two = cgroups.make("one"), cgroups.make("two")
    for cg, limit in ((one, 64 << 20), (two, 32 << 20)):
        with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
    private = tmp_path / "bpf"
    private.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYMEMCG_REQUIRE_BPF"}
    p = _python(UNMOUNTED, one, two, str(private),
                prefix=["unshare", "--mount", "--propagation", "private"], env=env)
    out, _ = p.communicate()
    assert p.returncode == 0
    r = json.loads(out)
    # the tree link's pin, and the single one's unless one bpf() call reads it
    singles_pin = not r["method"].startswith("BPF_PROG_RUN")
    assert r["before"] == [64 << 20, 1] and len(r["pins"]) == 1 + singles_pin
    assert r["pinned"] == [64 << 20, 64 << 20, "pins"]
    assert r["gone"] is False
    # reads go on through the links, a new cgroup too (pinned in the instance
    # the Reader started with, through the lock directory it holds open)
    assert r["after"] == [64 << 20, 1, 32 << 20, 1]
    name, message = r["pin_reader"]
    assert name == "PinGone" and "unmounted" in message and "pin it again" in message
    # a Reader whose pin vanished loads its own program (root can)
    assert r["pinned_after"] == [64 << 20, "pins+bpf"]
    assert r["fds1"] == r["fds0"]
    # close() removed the pins from the bpffs the host still has mounted
    pid_suffix = "-" + r["pins"][0].rsplit("-", 1)[1]
    assert not [n for n in os.listdir(bpf_mod.PIN_DIR) if n.endswith(pid_suffix)]
    assert not [n for n in os.listdir(bpf_mod.PIN_DIR)
                if n.startswith(f"owner{pid_suffix}-")]
