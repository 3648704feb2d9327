"""Shared pins of a NUMA selection: a pin made with per-node stats
(`pymemcg pin --numa`, or pins.pin() with a Reader(numa=...)'s stats) serves
each node's value to whoever reads it, a PinReader or a Reader(numa=...) that
it matches, equal to memory.numa_stat."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import pymemcg
from pymemcg import numa, pins

from conftest import MiB, workload


def _still_file(path: str, version: int, read):
    """`read()` between two equal reads of memory.numa_stat (the file's read
    flushes the stats), and that file's values."""
    for _ in range(20):
        with open(os.path.join(path, numa.NUMA_FILE)) as f:
            before = numa.parse_numa_stat(f.read(), version, False)
        got = read()
        with open(os.path.join(path, numa.NUMA_FILE)) as f:
            after = numa.parse_numa_stat(f.read(), version, False)
        if before == after:
            return got, after
        time.sleep(0.2)
    pytest.fail(f"{path}: memory.numa_stat never held still")


def test_a_numa_pin_serves_each_nodes_values(bpf_ok, cgroups, pin_dirs):
    bpffs, meta = pin_dirs
    version = 2 if cgroups.v2 else 1
    nodes = numa.memory_nodes()
    leaf = cgroups.make("numa-pin/leaf")
    root = os.path.dirname(leaf)
    cgroups.spawn(leaf, workload(anon=8 * MiB, cache=4 * MiB, shmem=1 * MiB))
    items = ["anon", "file"]
    made = subprocess.run([sys.executable, "-m", "pymemcg", "pin", root, "--name", "numa-tree",
                           "--stats", "usage", "--numa", ",".join(items), "--dir", bpffs,
                           "--meta-dir", meta], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    info = pins.pins(bpffs, meta)[0]
    with pymemcg.Reader(stats=["usage"], numa=items, backend="bpf", shared_pins=False) as own:
        assert sorted(info.stats) == sorted(own.stats)
    assert [n for n in info.stats if numa.is_numa(n)] == numa.expand(items, version, nodes)
    try:
        with pymemcg.Reader(stats=["usage"], numa=items, backend="bpf",
                            shared_pins=(bpffs, meta)) as r:
            snap, file = _still_file(root, version, lambda: r.read_tree(root))
            assert r.backend == "pins" and list(r.pins) == [info.path], r.pins
            for item in items:
                assert snap[snap.root].numa(item) == \
                    {n: file[numa.name(item, n)] for n in nodes}, item
            leaf_rec = [rec for rec in snap.records if rec.path.endswith("/leaf")][0]
            assert sum(leaf_rec.numa("anon").values()) > 0
        snap, file = _still_file(root, version, lambda: pins.PinReader(info.path, meta).read())
        for item in items:
            assert snap[snap.root].numa(item) == {n: file[numa.name(item, n)] for n in nodes}
    finally:
        pins.unpin(info.path, meta)


def test_a_numa_pin_refuses_once_the_nodes_with_memory_change(bpf_ok, cgroups, pin_dirs,
                                                              monkeypatch, tmp_path):
    """A pin's per-node stats are of the nodes that had memory when it was
    made; memory hotplug (simulated where has_memory is read: a copy of the
    kernel's file, rewritten) makes its reader refuse, naming the remedy,
    rather than serve a map without the new node."""
    bpffs, meta = pin_dirs
    root = cgroups.make("numa-pin-nodes")
    nodes = numa.memory_nodes()
    with pymemcg.Reader(stats=["usage"], numa=["anon"], backend="bpf", shared_pins=False) as own:
        stats = own.stats
    info = pins.pin(root, "numa-nodes", stats, directory=bpffs, meta_dir=meta)
    copy = tmp_path / "has_memory"
    copy.write_text(",".join(map(str, nodes)) + "\n")
    monkeypatch.setattr(numa, "HAS_MEMORY", str(copy))
    try:
        reader = pins.PinReader(info.path, meta)
        snap = reader.read()
        assert set(snap[snap.root].numa("anon")) == set(nodes)
        copy.write_text(",".join(map(str, nodes + [max(nodes) + 1])) + "\n")
        with pytest.raises(pymemcg.NumaNodesChanged, match="pin it again"):
            reader.read()
    finally:
        pins.unpin(info.path, meta)
