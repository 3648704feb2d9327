"""memory.numa_stat per node: BPF and the text backend against the kernel's
file, on real cgroups of this host (and, in the matrix, of guests booted
with two NUMA nodes); the node list, the cap and the file's two formats."""

import os
import time

import pytest

import pymemcg
from pymemcg import numa
from pymemcg.kernel_probe import kernel_facts
from pymemcg.errors import StatUnavailable, UnknownStat

from conftest import MiB, workload


def _file_values(path: str, version: int, local: bool) -> dict:
    with open(os.path.join(path, numa.NUMA_FILE)) as f:
        return numa.parse_numa_stat(f.read(), version, local)


@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_numa_matches_memory_numa_stat(bpf_ok, cgroups, backend):
    """Every item on every node with memory, hierarchical and (where the file
    prints it) local, equals memory.numa_stat read right before and after
    (the file's read flushes; a value that moved between is read again)."""
    leaf = cgroups.make("numa/leaf")
    cgroups.spawn(leaf, workload(anon=8 * MiB, cache=4 * MiB, shmem=1 * MiB))
    version = 2 if cgroups.v2 else 1
    nodes = numa.memory_nodes()
    for local in (False, True) if version == 1 else (False,):
        with pymemcg.Reader(stats=[], numa=True, local=local, backend=backend,
                            shared_pins=False) as r:
            assert r.stats == numa.expand(numa.items(version), version, nodes)
            for path in (cgroups.base, leaf):
                for _ in range(20):
                    before = _file_values(path, version, local)
                    rec = r.read(path)
                    after = _file_values(path, version, local)
                    if before == after:
                        break
                    time.sleep(0.2)
                else:
                    pytest.fail(f"{path}: memory.numa_stat never held still")
                compared = 0
                for item in numa.items(version):
                    names = [numa.name(item, n) for n in nodes]
                    if not all(n in after for n in names):
                        continue  # not printed by this kernel's file
                    if any(rec.get(n) is None for n in names):
                        assert backend == "bpf", (item, r.sources)
                        assert r.sources[names[0]].startswith("unavailable")
                        continue
                    assert rec.numa(item) == {n: after[numa.name(item, n)] for n in nodes}, \
                        (path, local, item)
                    compared += 1
                if backend == "bpf" and local and \
                        kernel_facts().lruvec_state_local_len is None:
                    # 6.1: per-node local values are per-CPU sums, no array to read
                    assert compared == 0
                    assert all("per CPU only" in r.sources[n] for n in r.stats), r.sources
                    continue
                assert compared >= (4 if version == 1 else 10)
                # the leaf charged anonymous memory: some node holds it
                if path == leaf:
                    assert sum(rec.numa("anon").values()) > 0


def test_numa_tree_column_per_node(bpf_ok, cgroups):
    """read_tree has a column per item and node, the walk's values."""
    cgroups.make("a")
    version = 2 if cgroups.v2 else 1
    nodes = numa.memory_nodes()
    with pymemcg.Reader(stats=["anon"], numa=["anon", "file"], backend="bpf",
                        shared_pins=False) as r:
        snap = r.read_tree(cgroups.base)
        for n in nodes:
            col = snap.column(f"anon:N{n}")
            assert len(col) == 2 and all(isinstance(v, int) for v in col)
        rec = snap[snap.root]
        assert set(rec.numa("file")) == set(nodes)
        with pytest.raises(UnknownStat, match="numa="):
            rec.numa("shmem" if version == 2 else "unevictable")


def test_default_selection_has_no_numa(bpf_ok):
    """NUMA costs nothing unless selected: the default record is unchanged."""
    with pymemcg.Reader(backend="bpf", shared_pins=False) as r:
        assert list(r.stats) == list(pymemcg.DEFAULT_STATS)
        assert not any(numa.is_numa(n) for n in r._be().selection.names)


def test_node_cap_and_lists():
    """Nodes past the cap make NUMA unavailable, not a subset of nodes."""
    assert numa.parse_nodelist("0-1,3\n") == [0, 1, 3]
    assert numa.parse_nodelist("") == []
    many = list(range(numa.MAX_NODES + 1))
    assert numa.expand(["anon"], 2, many) == []
    assert "more than" in numa.nodes_why(many)
    assert numa.expand(["anon"], 2, [0, 2]) == ["anon:N0", "anon:N2"]
    assert numa.nodes_why(None).startswith("this kernel has no NUMA")
    with pytest.raises(UnknownStat):
        numa.expand(["total"], 2, [0])        # a v1 item on v2


def test_parse_both_formats():
    v2 = "anon N0=4096 N1=8192\nfile N0=0 N1=12288\n"
    assert numa.parse_numa_stat(v2, 2, False) == {
        "anon:N0": 4096, "anon:N1": 8192, "file:N0": 0, "file:N1": 12288}
    assert numa.parse_numa_stat(v2, 2, True) == {}
    v1 = "total=3 N0=1 N1=2\nanon=1 N0=1 N1=0\nhierarchical_total=9 N0=4 N1=5\n"
    assert numa.parse_numa_stat(v1, 1, True) == {"total:N0": 1, "total:N1": 2,
                                                 "anon:N0": 1, "anon:N1": 0}
    assert numa.parse_numa_stat(v1, 1, False) == {"total:N0": 4, "total:N1": 5}


def test_record_numa_unavailable_says_why(bpf_ok, monkeypatch, tmp_path):
    """A host with more nodes than the cap (has_memory, where it is read,
    says 40): numa() raises with the reason."""
    copy = tmp_path / "has_memory"
    copy.write_text("0-39\n")
    monkeypatch.setattr(numa, "HAS_MEMORY", str(copy))
    with pymemcg.Reader(stats=["anon"], numa=["anon"], backend="bpf",
                        shared_pins=False) as r:
        rec = r.read(pymemcg.cgroupfs.memory_mount().mountpoint)
        with pytest.raises(StatUnavailable, match="40 nodes"):
            rec.numa("anon")


def test_cadvisor_numa_pages_only_when_asked(bpf_ok, cgroups):
    """container_memory_numa_pages{type,scope,node}: absent by default; asked
    for, one series per type, scope and node, with memory.numa_stat's values
    (v1: pages, scope container the plain lines, hierarchy the
    hierarchical_* ones; v2: the file's bytes, scope container)."""
    from pymemcg.prometheus import MemcgCollector
    leaf = cgroups.make("exp")
    cgroups.spawn(leaf, workload(anon=4 * MiB, cache=2 * MiB, shmem=1 * MiB))
    version = 2 if cgroups.v2 else 1
    nodes = numa.memory_nodes()
    rel = leaf[len(pymemcg.cgroupfs.memory_mount().mountpoint):]
    with MemcgCollector(cgroups.base, stats=["anon"], min_interval=0) as plain:
        assert b"container_memory_numa_pages" not in plain.exposition()
    with MemcgCollector(cgroups.base, stats=["anon"], min_interval=0, numa=True) as c:
        for _ in range(20):
            want = {"container": _file_values(leaf, version, version == 1),
                    "hierarchy": _file_values(leaf, version, False) if version == 1 else {}}
            text = c.exposition().decode()
            again = {"container": _file_values(leaf, version, version == 1),
                     "hierarchy": _file_values(leaf, version, False) if version == 1 else {}}
            if want == again:
                break
        got = {}
        for line in text.splitlines():
            if line.startswith("container_memory_numa_pages{") and f'id="{rel}"' in line:
                labels, value = line.rsplit(" ", 1)
                fields = dict(kv.split("=", 1) for kv in labels[labels.index("{") + 1:-1]
                              .split(","))
                fields = {k: v.strip('"') for k, v in fields.items()}
                got[(fields["type"], fields["scope"], int(fields["node"]))] = int(float(value))
        expect = {(t, scope, n): vals[f"{t}:N{n}"]
                  for scope, vals in again.items() if vals
                  for t in ("file", "anon", "unevictable") for n in nodes}
        assert got == expect


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "kernel_facts")


def _facts(name):
    import json
    from pymemcg.kernel_probe import facts_from_json
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        return facts_from_json(json.load(f))


@pytest.mark.parametrize("release", ["6.1", "6.12", "6.18-host"])
def test_numa_slots_are_state_slots(release):
    """A node item's slot in lruvec_stats is its slot in memcg_vmstats.state[]
    (by enum value on 6.1, compacted on 6.12 and 6.18); v1's items are runs
    of the LRU lists; per-node local values need state_local (6.2+)."""
    from pymemcg import slots
    facts = _facts(release)
    v2 = {r.stat.name: r for r in slots.resolve(
        ["anon", "file", "shmem", "anon:N1", "file:N0", "shmem:N3"], facts, 2, 4096,
        backend=slots.BACKEND_CORE)}
    for item, name in (("anon", "anon:N1"), ("file", "file:N0"), ("shmem", "shmem:N3")):
        assert v2[name].available, v2[name].detail
        assert (v2[name].slot, v2[name].scale) == (v2[item].slot, v2[item].scale)
        assert v2[name].item == int(name.rsplit("N", 1)[1])
        assert v2[name].slot < facts.lruvec_state_len
    with pytest.raises(UnknownStat):              # MEMCG_KMEM: per memcg only
        slots.resolve(["kernel:N0"], facts, 2, 4096)
    v1 = {r.stat.name: r for r in slots.resolve(["total:N0", "anon:N0", "file:N0",
                                                 "unevictable:N0"], facts, 1, 4096)}
    inactive_anon = facts.value("NR_INACTIVE_ANON") if release == "6.1" else 0
    runs = {"total:N0": (0, 5), "anon:N0": (0, 2), "file:N0": (2, 2), "unevictable:N0": (4, 1)}
    for name, (first, run) in runs.items():
        r = v1[name]
        assert r.available and r.scale == 1, r.detail
        assert (r.slot, r.flags >> 8) == (inactive_anon + first, run)
    local = slots.resolve(["total:N0"], facts, 1, 4096, local=True)[0]
    assert local.available == (facts.lruvec_state_local_len is not None)


def test_snapshot_numa_columns(bpf_ok, cgroups):
    """`pymemcg snapshot --numa ITEM` adds a column per node with memory, in
    the file's unit; an item this cgroup version has not fails by name."""
    import json
    import subprocess
    import sys
    version = 2 if cgroups.v2 else 1
    nodes = numa.memory_nodes()
    r = subprocess.run([sys.executable, "-m", "pymemcg", "snapshot", cgroups.base, "--stats",
                        "anon", "--numa", "anon", "--format", "json", "--backend", "bpf"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["stats"] == ["anon"] + [f"anon:N{n}" for n in nodes]
    assert doc["units"]["anon:N0"] == ("pages" if version == 1 else "bytes")
    assert all(isinstance(c["stats"]["anon:N0"], int) for c in doc["cgroups"])
    other = "shmem" if version == 1 else "total"
    r = subprocess.run([sys.executable, "-m", "pymemcg", "snapshot", cgroups.base, "--numa",
                        other], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"numa='{other}'" in r.stderr


@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_reads_refuse_once_the_nodes_with_memory_change(bpf_ok, cgroups, backend, monkeypatch,
                                                        tmp_path):
    """A Reader's per-node stats are of the nodes that had memory when it
    was made. Memory hotplug is simulated where has_memory is read: a copy
    of the kernel's file, at the name NodeWatch reads, rewritten. Once it
    lists other nodes, every read form raises NumaNodesChanged naming the
    remedy, rather than serve a map without the new node; back to the same
    nodes, reads serve again. A Reader without NUMA stats never looks."""
    real = open(numa.HAS_MEMORY, "rb").read()
    nodes = numa.parse_nodelist(real.decode())
    copy = tmp_path / "has_memory"
    copy.write_bytes(real)
    monkeypatch.setattr(numa, "HAS_MEMORY", str(copy))
    fds = set(os.listdir("/proc/self/fd"))
    with pymemcg.Reader(stats=["usage"], numa=["anon"], backend=backend,
                        shared_pins=False) as r:
        assert set(r.read(cgroups.base).numa("anon")) == set(nodes)
        for changed in (nodes + [max(nodes) + 1], nodes[1:], [max(nodes) + 1]):
            copy.write_text(",".join(map(str, changed)) + "\n")
            for call in (r.read, lambda p: r.read_many([p]), r.read_tree):
                with pytest.raises(pymemcg.NumaNodesChanged, match="make a new Reader"):
                    call(cgroups.base)
        copy.write_bytes(real)
        assert set(r.read_many([cgroups.base])[0].numa("anon")) == set(nodes)
        snap = r.read_tree(cgroups.base)
        assert set(snap[snap.root].numa("anon")) == set(nodes)
    assert set(os.listdir("/proc/self/fd")) == fds
    copy.write_text(f"{max(nodes) + 1}\n")
    with pymemcg.Reader(stats=["usage"], backend=backend, shared_pins=False) as r:
        r.read(cgroups.base)
        r.read_tree(cgroups.base)
