"""The command line, run as `python -m pymemcg` in a subprocess.

The subprocess is in this process's memory cgroup (children inherit it),
so that cgroup must appear in every snapshot of the hierarchy.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

import pymemcg
from pymemcg import catalog
from pymemcg.cgroupfs import memory_mount, own_memory_cgroup
from pymemcg.cli import SNAPSHOT_STATS, human_bytes

ENV = {**os.environ, "PYMEMCG_REQUIRE_BPF": "1"}
BYTES_CELL = re.compile(r"^(\d+ B|\d+\.\d (KiB|MiB|GiB|TiB|PiB|EiB))$")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pymemcg", *args], capture_output=True,
                          text=True, env=ENV, timeout=120)


@pytest.fixture(scope="module")
def mount():
    m = memory_mount()
    assert m is not None, "this host has no memory cgroup hierarchy"
    return m


@pytest.fixture(scope="module")
def own_rel(mount):
    """This process's memory cgroup, relative to the hierarchy root ('/a/b')."""
    own = own_memory_cgroup()
    rel = "/" + os.path.relpath(own, mount.mountpoint)
    return "/" if rel == "/." else rel


def abs_path(mount, rel: str) -> str:
    return mount.mountpoint if rel == "/" else mount.mountpoint + rel


def check_ids(mount, rows, must: set) -> None:
    """id == st_ino of the directory for every cgroup still there; those in `must` are."""
    checked = set()
    for path, cid in rows:
        try:
            ino = os.stat(abs_path(mount, path)).st_ino
        except FileNotFoundError:
            assert path not in must, f"{path} vanished"
            continue  # another session's cgroup, removed since the snapshot
        assert cid == ino, f"{path}: id {cid} != st_ino {ino}"
        checked.add(path)
    assert must <= checked, f"not in the snapshot: {must - checked}"


def assert_values(path: str, values: dict) -> None:
    for name, v in values.items():
        if v is None and name == "usage" and path == "/":
            continue  # v1 root usage is not a counter: pymemcg leaves it unavailable
        assert type(v) is int, f"{path} {name}: {v!r} is not an int"
        assert v >= 0


# --- snapshot ---

def test_snapshot_json(bpf_ok, mount, own_rel):
    r = run_cli("snapshot", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    data = json.loads(r.stdout)
    assert data["backend"] == "bpf"
    assert data["cgroup_version"] == mount.version
    assert data["kernel"] == os.uname().release
    assert data["stats"] == list(SNAPSHOT_STATS)
    cgroups = data["cgroups"]
    assert cgroups[0]["path"] == "/" and cgroups[0]["level"] == 0
    by_path = {c["path"]: c for c in cgroups}
    assert own_rel in by_path
    own = by_path[own_rel]
    assert list(own["stats"]) == list(SNAPSHOT_STATS)
    assert_values(own_rel, own["stats"])
    assert own["level"] == (0 if own_rel == "/" else own_rel.count("/"))
    for c in cgroups:
        assert all(v is None or type(v) is int for v in c["stats"].values()), c
        assert c["level"] == (0 if c["path"] == "/" else c["path"].count("/")), c
    check_ids(mount, [(c["path"], c["id"]) for c in cgroups], {"/", own_rel})
    if own_rel != "/":
        parent = os.path.dirname(abs_path(mount, own_rel))
        assert own["parent_id"] == os.stat(parent).st_ino


def test_snapshot_json_of_a_subtree(bpf_ok, mount, own_rel):
    r = run_cli("snapshot", abs_path(mount, own_rel), "--format", "json",
                "--stats", "anon,file,pgfault")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    first = data["cgroups"][0]
    assert first["path"] == own_rel
    assert first["id"] == os.stat(abs_path(mount, own_rel)).st_ino
    assert list(first["stats"]) == ["anon", "file", "pgfault"]
    assert_values(own_rel, first["stats"])


def test_snapshot_local_json(bpf_ok, own_rel):
    r = run_cli("snapshot", "--format", "json", "--local", "--stats", "anon,pgfault")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["local"] is True
    own = {c["path"]: c for c in data["cgroups"]}[own_rel]
    assert_values(own_rel, own["stats"])


def test_snapshot_csv(bpf_ok, mount, own_rel):
    r = run_cli("snapshot", "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["id", "parent_id", "path", "level", *SNAPSHOT_STATS]
    body = [dict(zip(rows[0], row)) for row in rows[1:]]
    assert all(len(row) == len(rows[0]) for row in rows)
    by_path = {row["path"]: row for row in body}
    own = by_path[own_rel]
    for name in SNAPSHOT_STATS:
        if own[name] == "" and name == "usage" and own_rel == "/":
            continue
        assert re.fullmatch(r"\d+", own[name]), (name, own[name])
    for row in body:  # exact integers or empty (unavailable), nothing else
        assert all(re.fullmatch(r"\d*", row[n]) for n in SNAPSHOT_STATS), row
    check_ids(mount, [(row["path"], int(row["id"])) for row in body], {"/", own_rel})


def test_snapshot_table(bpf_ok, mount, own_rel):
    r = run_cli("snapshot")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    summary = lines[0]
    assert "bpf" in summary
    assert os.uname().release in summary
    assert f"cgroup v{mount.version}" in summary
    m = re.search(r"(\d+) cgroups", summary)
    assert m, summary
    header, rows = lines[1], lines[2:]
    assert int(m.group(1)) == len(rows)
    assert re.split(r"\s{2,}", header.strip()) == ["cgroup", *SNAPSHOT_STATS]
    assert rows[0].split()[0] == "/"
    # the path is indented two spaces per level below the root
    level = 0 if own_rel == "/" else own_rel.count("/")
    own_rows = [row for row in rows if row.lstrip().startswith(own_rel + " ")]
    assert len(own_rows) == 1, rows
    row = own_rows[0]
    assert row.startswith(" " * (2 * level) + own_rel)
    cells = re.split(r"\s{2,}", row.strip())
    assert cells[0] == own_rel and len(cells) == 1 + len(SNAPSHOT_STATS), cells
    for name, cell in zip(SNAPSHOT_STATS, cells[1:]):
        if catalog.STATS[name].unit == catalog.BYTES:
            assert BYTES_CELL.match(cell), (name, cell)
        else:
            assert re.fullmatch(r"\d+", cell), (name, cell)


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(1024 * 1024 - 1) == "1.0 MiB"  # not "1024.0 KiB"
    assert human_bytes(5 * 2**30 + 2**29) == "5.5 GiB"
    assert human_bytes(9223372036854771712) == "8.0 EiB"


# --- errors ---

def test_snapshot_nonexistent_is_a_user_error():
    r = run_cli("snapshot", "/nonexistent")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pymemcg: ") and "/nonexistent" in lines[0]


def test_unknown_stat_is_a_user_error():
    r = run_cli("snapshot", "--stats", "anon,no_such_stat")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("pymemcg: ") and "no_such_stat" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# --- stats, --version ---

def test_stats_lists_every_stat():
    r = run_cli("stats")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "unit", "available", "backend", "via"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == [s.name for s in pymemcg.stats()]
    for line in lines[1:]:
        name, unit, available = line.split()[:3]
        assert unit == catalog.STATS[name].unit
        assert available in ("yes", "no")


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout == f"pymemcg {pymemcg.__version__}\n"
