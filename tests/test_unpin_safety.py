"""unpin, unpin --stale and prune remove only what is provably pymemcg's.

Every victim here is a scratch file of the test's own: a regression must not
be able to remove anything outside the test's directories. Each case checks
that nothing was removed and that the refusal says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pymemcg import pins


@pytest.fixture
def scratch(pin_dirs):
    """pin_dirs, and a victim file with metadata beside it that names it, in
    the scratch directory that holds the private bpffs."""
    bpffs, meta = pin_dirs
    base = os.path.dirname(bpffs)
    os.makedirs(meta, exist_ok=True)
    victim = os.path.join(base, "victim.txt")
    with open(victim, "w") as f:
        f.write("not a pin\n")
    yield bpffs, meta, base, victim
    os.unlink(victim)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pymemcg", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_a_file_outside_bpffs_is_refused(scratch):
    bpffs, meta, base, victim = scratch
    victim_meta = os.path.join(meta, "victim.txt.json")
    with open(victim_meta, "w") as f:
        json.dump({"format": 1, "root": "/", "pin": victim}, f)
    with pytest.raises(pins.NotAPin, match="not on a bpffs mount"):
        pins.unpin(victim, meta)
    r = cli("unpin", victim, "--meta-dir", meta)
    assert r.returncode == 2 and "unpinned" not in r.stdout, r
    assert "not on a bpffs mount" in r.stderr and "nothing was removed" in r.stderr
    assert "Traceback" not in r.stderr
    assert os.path.exists(victim) and os.path.exists(victim_meta)


def test_dotdot_in_a_name_or_path_is_refused(scratch):
    bpffs, meta, base, victim = scratch
    for pin in ("../victim.txt", os.path.join(bpffs, "..", "victim.txt")):
        with pytest.raises(pins.NotAPin, match=r"'\.\.'"):
            pins.unpin(pin, meta, bpffs)
        r = cli("unpin", pin, "--dir", bpffs, "--meta-dir", meta)
        assert r.returncode == 2 and "'..'" in r.stderr, r
    assert os.path.exists(victim)


def test_symlinks_are_refused(bpf_ok, cgroups, scratch, tmp_path):
    """A symlink in bpffs (to /etc/passwd: unlink never follows the last
    component, so even a broken unpin could only take the link), metadata
    that is a symlink, and a pin reached through a symlinked directory whose
    target is not on bpffs."""
    bpffs, meta, base, victim = scratch
    os.symlink("/etc/passwd", os.path.join(bpffs, "evil"))
    with pytest.raises(pins.NotAPin, match="symlink"):
        pins.unpin("evil", meta, bpffs)
    assert os.path.islink(os.path.join(bpffs, "evil"))

    real = pins.pin(cgroups.make("symlinks"), "real", ["usage"], directory=bpffs, meta_dir=meta)
    real_meta = os.path.join(meta, "real.json")
    os.rename(real_meta, tmp_path / "real.json")
    os.symlink(tmp_path / "real.json", real_meta)
    with pytest.raises(pins.NotAPin, match="symlink is refused"):
        pins.unpin(real.path, meta)
    assert os.path.exists(real.path) and os.path.islink(real_meta)
    os.unlink(real_meta)
    os.rename(tmp_path / "real.json", real_meta)

    elsewhere = str(tmp_path / "elsewhere")
    os.mkdir(elsewhere)
    doomed = os.path.join(elsewhere, "real")
    with open(doomed, "w") as f:
        f.write("a file that shares the pin's name\n")
    os.symlink(elsewhere, tmp_path / "linked")
    with pytest.raises(pins.NotAPin, match="not on a bpffs mount"):
        pins.unpin(str(tmp_path / "linked" / "real"), meta)
    assert os.path.exists(doomed) and os.path.exists(real.path) and os.path.exists(real_meta)
    assert pins.unpin(real.path, meta) == [real.path, real_meta]


def test_bpf_objects_that_are_not_pymemcg_links_are_refused(bpf_ok, scratch):
    """The kernel's own iterator link in every bpffs root (maps.debug, a link
    over BPF maps), and a BPF map pinned by bpftool."""
    bpffs, meta, base, victim = scratch
    if os.path.exists(os.path.join(bpffs, "maps.debug")):
        with pytest.raises(pins.NotAPin, match="not give it as a BPF object"):
            pins.unpin("maps.debug", meta, bpffs)
        assert os.path.exists(os.path.join(bpffs, "maps.debug"))
    subprocess.run(["bpftool", "map", "create", os.path.join(bpffs, "notours"), "type",
                    "array", "key", "4", "value", "4", "entries", "1", "name", "notours"],
                   check=True)
    with open(os.path.join(meta, "notours.json"), "w") as f:
        json.dump({"format": 1, "root": "/", "pin": os.path.join(bpffs, "notours")}, f)
    with pytest.raises(pins.NotAPin, match="pinned BPF map"):
        pins.unpin("notours", meta, bpffs)
    r = cli("unpin", "notours", "--dir", bpffs, "--meta-dir", meta)
    assert r.returncode == 2 and "pinned BPF map" in r.stderr, r
    assert os.path.exists(os.path.join(bpffs, "notours"))
    assert os.path.exists(os.path.join(meta, "notours.json"))
    os.unlink(os.path.join(bpffs, "notours"))


def test_metadata_naming_another_pin_is_refused(bpf_ok, cgroups, scratch):
    bpffs, meta, base, victim = scratch
    root = cgroups.make("two")
    a = pins.pin(root, "a", ["usage"], directory=bpffs, meta_dir=meta)
    b = pins.pin(root, "b", ["usage"], directory=bpffs, meta_dir=meta)
    with open(os.path.join(meta, "b.json")) as f:
        b_doc = f.read()
    with open(os.path.join(meta, "a.json"), "w") as f:
        f.write(b_doc)
    with pytest.raises(pins.NotAPin, match="metadata of"):
        pins.unpin(a.path, meta)
    assert os.path.exists(a.path) and os.path.exists(os.path.join(meta, "a.json"))
    # --stale takes the pin (an orphan: no metadata of its own) but leaves
    # the metadata that is not provably its own, and says so
    r = cli("unpin", "--stale", "--dir", bpffs, "--meta-dir", meta)
    assert r.stdout.splitlines() == [f"removed stale {a.path}"], r
    assert r.returncode == 2 and "left in place" in r.stderr and "metadata of" in r.stderr, r
    assert not os.path.exists(a.path) and os.path.exists(os.path.join(meta, "a.json"))
    assert os.path.exists(b.path)
    assert pins.unpin(b.path, meta) == [b.path, os.path.join(meta, "b.json")]
    os.unlink(os.path.join(meta, "a.json"))


def test_an_untrusted_pin_directory_is_refused(bpf_ok, cgroups, scratch):
    """A directory others can write could have its entries swapped between
    the check and the removal."""
    bpffs, meta, base, victim = scratch
    shared = os.path.join(bpffs, "shared")
    os.mkdir(shared)
    pin = pins.pin(cgroups.make("shared"), "p", ["usage"], directory=shared, meta_dir=meta)
    os.chmod(shared, 0o777)
    with pytest.raises(pins.NotAPin, match="swap"):
        pins.unpin(pin.path, meta)
    assert os.path.exists(pin.path)
    os.chmod(shared, 0o755)
    assert pins.unpin(pin.path, meta) == [pin.path, os.path.join(meta, "p.json")]
