"""A Reader needs no bpffs: its links are fds. Only shared pins need a
writable bpffs, and they say so when it is read-only.

Each case runs in a private mount namespace (as in a Kubernetes container,
where /sys is read-only and /sys/fs/bpf often absent); the host's mounts are
not touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pymemcg.cgroupfs import memory_mount


def limit_file() -> str:
    return "memory.limit_in_bytes" if memory_mount().version == 1 else "memory.max"

PROBE = r"""
import json, os, sys, pymemcg
from pymemcg import pins
cg, try_pin = sys.argv[1], sys.argv[2] == "pin"
out = {}
with pymemcg.Reader(stats=["usage", "anon"], backend="bpf") as r:
    out["backend"] = r.backend
    out["read"] = r.read(cg).id == os.stat(cg).st_ino
    out["tree"] = r.read_tree(cg).records[0].id == os.stat(cg).st_ino
with open("/proc/self/mountinfo") as f:
    out["bpffs"] = [l.split()[4] for l in f if " - bpf " in l and " /sys/fs/bpf " in l]
if try_pin:
    try:
        pins.pin(cg, "probe", ["usage"], meta_dir="/run/pymemcg-probe-%d" % os.getpid())
        out["pin"] = "pinned"
    except pymemcg.Error as e:
        out["pin"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""

SETUP = {
    # bpffs mounted read-only
    "read-only": "grep -q ' /sys/fs/bpf .* - bpf ' /proc/self/mountinfo || "
                 "mount -t bpf bpf /sys/fs/bpf; mount -o remount,bind,ro /sys/fs/bpf",
    # no bpffs at all
    "absent": "while grep -q ' /sys/fs/bpf .* - bpf ' /proc/self/mountinfo; do "
              "umount /sys/fs/bpf; done",
}


@pytest.mark.parametrize("case", sorted(SETUP))
def test_reader_without_a_writable_bpffs(bpf_ok, cgroups, case):
    cg = cgroups.make("probe")
    script = f"set -e; {SETUP[case]}; exec \"$0\" -c \"$1\" \"$2\" \"$3\""
    # (pinning where no bpffs is mounted would mount one and pin for real)
    try_pin = "pin" if case == "read-only" else "no"
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                          sys.executable, PROBE, cg, try_pin], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["backend"] == "bpf" and got["read"] and got["tree"], got
    # the Reader mounted no bpffs behind the caller's back
    assert got["bpffs"] == (["/sys/fs/bpf"] if case == "read-only" else []), got
    if try_pin == "pin":
        # shared pins are disabled, with the real cause named
        assert got["pin"].startswith("BpfUnavailable"), got
        assert "Read-only file system" in got["pin"], got


UNMOUNTED = """
import json, os, subprocess, sys
import pymemcg
from pymemcg import pins
one, two, private = sys.argv[1:4]
def fds():
    return sorted(os.listdir("/proc/self/fd"))
out = {"fds0": fds()}
r = pymemcg.Reader(stats=["usage", "limit"], backend="bpf", shared_pins=False)
out["before"] = [r.read(one)["limit"], len(r.read_tree(one))]
# a shared pin on a bpffs instance of this namespace only
subprocess.run(["mount", "-t", "bpf", "bpf", private], check=True)
shared = pins.pin(one, "one", ["usage", "limit"], tree=False, directory=private + "/p",
                  meta_dir=private + ".meta")
pr = pins.PinReader(shared.path, private + ".meta")
pinned = pymemcg.Reader(stats=["usage", "limit"], backend="bpf",
                        shared_pins=(private + "/p", private + ".meta"))
out["pinned"] = [pr.read()["limit"], pinned.read(one)["limit"], pinned.backend]
subprocess.run(["umount", "-l", private], check=True)
out["after"] = [r.read(one)["limit"], len(r.read_tree(one)), r.read(two)["limit"],
                len(r.read_tree(two))]
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


def test_shared_pin_unmounted_under_readers(bpf_ok, cgroups, tmp_path):
    """A shared pin whose bpffs goes away: PinReader says so, a Reader that
    read through it loads its own program; a Reader's own reads go on."""
    one, two = cgroups.make("one"), cgroups.make("two")
    for cg, limit in ((one, 64 << 20), (two, 32 << 20)):
        with open(os.path.join(cg, limit_file()), "w") as f:
            f.write(str(limit))
    private = tmp_path / "bpf"
    private.mkdir()
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                          "-c", UNMOUNTED, one, two, str(private)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["before"] == [64 << 20, 1]
    assert r["pinned"] == [64 << 20, 64 << 20, "pins"]
    assert r["after"] == [64 << 20, 1, 32 << 20, 1]
    name, message = r["pin_reader"]
    assert name == "PinGone" and "unmounted" in message and "pin it again" in message
    assert r["pinned_after"] == [64 << 20, "pins+bpf"]
    assert r["fds1"] == r["fds0"]
