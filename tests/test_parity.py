"""The BPF backend against memory.stat, on this kernel, with real memory.

Each test lets the cgroup go quiet, flushes (reading memory.stat does), and
then requires every stat the BPF backend reports available to equal the
kernel's own text exactly. The expected values are parsed here, with this
file's own key map, not with pymemcg's text backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import pymemcg
from pymemcg import catalog

from conftest import MiB, workload

# cgroup v1 memory.stat key -> stat name (mm/memcontrol-v1.c memcg1_stat_names)
V1_KEYS = {
    "cache": "file", "rss": "anon", "rss_huge": "anon_thp", "shmem": "shmem",
    "mapped_file": "file_mapped", "dirty": "file_dirty", "writeback": "file_writeback",
    "workingset_refault_anon": "workingset_refault_anon",
    "workingset_refault_file": "workingset_refault_file", "swap": "swap",
    "swapcached": "swapcached", "pgpgin": "pgpgin", "pgpgout": "pgpgout",
    "pgfault": "pgfault", "pgmajfault": "pgmajfault", "inactive_anon": "inactive_anon",
    "active_anon": "active_anon", "inactive_file": "inactive_file",
    "active_file": "active_file", "unevictable": "unevictable",
}
V1_COUNTERS = {
    "usage": "memory.usage_in_bytes", "peak": "memory.max_usage_in_bytes",
    "limit": "memory.limit_in_bytes", "failcnt": "memory.failcnt",
    "memsw_usage": "memory.memsw.usage_in_bytes", "memsw_peak": "memory.memsw.max_usage_in_bytes",
    "memsw_limit": "memory.memsw.limit_in_bytes", "memsw_failcnt": "memory.memsw.failcnt",
    "soft_limit": "memory.soft_limit_in_bytes",
}
V2_COUNTERS = {"usage": "memory.current", "peak": "memory.peak", "swap_usage": "memory.swap.current"}
# the limits and protections (none on the v2 root), one number or "max" each
V2_SETTINGS = {
    "limit": "memory.max", "swap_limit": "memory.swap.max", "memory_min": "memory.min",
    "memory_low": "memory.low", "memory_high": "memory.high", "swap_high": "memory.swap.high",
    "zswap_max": "memory.zswap.max", "oom_group": "memory.oom.group",
}
# PAGE_COUNTER_MAX pages in bytes: what v1's files print for no limit
NO_LIMIT_V1 = (2**63 - 1) // os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PAGE_SIZE")

ALL = list(catalog.STATS)


def _kv(path: str) -> dict:
    with open(path) as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def _number(path: str, name: str):
    """A one-number file: "max", or a v1 limit file's PAGE_COUNTER_MAX bytes,
    is pymemcg.MAX for a limit or protection."""
    with open(path) as f:
        text = f.read().strip()
    if catalog.STATS[name].tunable and text in ("max", str(NO_LIMIT_V1)):
        return pymemcg.MAX
    return int(text)


def kernel_values(cg: str, version: int, local: bool) -> dict:
    """What the kernel's own files say, keyed by stat name."""
    out = {}
    stat = _kv(os.path.join(cg, "memory.stat"))
    if version == 1:
        for key, name in V1_KEYS.items():
            k = key if local else "total_" + key
            if k in stat:
                out[name] = stat[k]
        for name, fname in V1_COUNTERS.items():
            if os.path.exists(os.path.join(cg, fname)):
                out[name] = _number(os.path.join(cg, fname), name)
        if not local:
            out["oom_kill"] = _kv(os.path.join(cg, "memory.oom_control"))["oom_kill"]
    else:
        if not local:
            out.update({k: v for k, v in stat.items() if k in catalog.STATS})
        elif not any(e.is_dir() for e in os.scandir(cg)):
            # v2 prints no local values, but a leaf is its whole subtree
            out.update({k: v for k, v in stat.items() if k in catalog.STATS})
        for name, fname in {**V2_COUNTERS, **V2_SETTINGS}.items():
            if os.path.exists(os.path.join(cg, fname)):
                out[name] = _number(os.path.join(cg, fname), name)
        leaf = not any(e.is_dir() for e in os.scandir(cg))
        zswap = os.path.join(cg, "memory.zswap.current")
        if os.path.exists(zswap) and (not local or leaf):  # the subtree's value
            out["zswap_current"] = _number(zswap, "zswap_current")
        # the cgroup's own counts, for local and hierarchical reads alike
        out.update({k: v for k, v in _kv(os.path.join(cg, "cgroup.stat")).items()
                    if k in catalog.STATS})
        # the v2 root cgroup has no memory.events (nor memory.current/peak)
        events_file = os.path.join(cg, "memory.events.local" if local else "memory.events")
        if os.path.exists(events_file):
            out.update({k: v for k, v in _kv(events_file).items() if k in catalog.STATS})
    return out


def quiet_read(reader: pymemcg.Reader, cg: str, version: int, local: bool):
    """(record, kernel values) taken while nothing changed in between."""
    for _ in range(50):
        before = kernel_values(cg, version, local)  # reading memory.stat flushes
        rec = reader.read(cg)
        after = kernel_values(cg, version, local)
        if before == after:
            return rec, after
        time.sleep(0.2)
    pytest.fail(f"{cg} never went quiet")


def assert_parity(rec: pymemcg.Record, expected: dict) -> int:
    compared = 0
    mismatches = {}
    for name, want in expected.items():
        if name not in rec.keys():
            continue
        got = rec.get(name)
        if got is None:
            # allowed only where this kernel cannot serve the stat at all (the
            # Reader said so when it resolved it), never for one record
            assert rec.source(name).startswith("unavailable:"), \
                f"{name}: memory.stat shows {want} but BPF could not read it " \
                f"({rec.source(name)})"
            continue
        if got != want:
            mismatches[name] = (got, want)
        compared += 1
    assert not mismatches, f"BPF != kernel text (got, want): {mismatches}"
    return compared


@pytest.mark.parametrize("local", [False, True], ids=["hierarchical", "local"])
def test_leaf_parity(bpf_ok, cgroups, cgroup_version, local):
    leaf = cgroups.make("leaf")
    proc = cgroups.spawn(leaf, workload())
    os.sync()
    with pymemcg.Reader(stats=ALL, local=local, backend="bpf") as r:
        rec, kernel = quiet_read(r, leaf, cgroup_version, local)
        compared = assert_parity(rec, kernel)
    # at least the page counters and events; far more where the kernel keeps
    # the values (local ones are per-CPU sums on 6.1, which BPF does not serve)
    assert compared >= 8
    if rec.get("anon") is not None:
        assert compared >= 20
    # the workload's memory is really there, so the comparison is not of zeros
    # (where the kernel lets BPF serve the value at all). The bounds leave room
    # for per-CPU updates not yet flushed: the kernel's text lags the same way.
    def check(name, low):
        if rec.get(name) is not None:
            assert rec[name] >= low, (name, rec[name])
    check("anon", 20 * MiB)
    check("file", 20 * MiB)  # 16 MiB of file and 8 MiB of shmem are page cache
    check("shmem", 6 * MiB)
    check("pgfault", 20 * MiB // 4096)  # the workload asks for small pages
    assert rec["usage"] >= 40 * MiB
    assert rec.id == os.stat(leaf).st_ino
    proc.stdin.close()
    proc.wait()


@pytest.mark.parametrize("local", [False, True], ids=["hierarchical", "local"])
def test_subtree_parity(bpf_ok, cgroups, cgroup_version, local):
    parent = cgroups.make("p")
    a, b = cgroups.make("p/a"), cgroups.make("p/b/c")
    cgroups.spawn(a, workload(anon=16 * MiB, cache=8 * MiB, shmem=4 * MiB))
    cgroups.spawn(b, workload(anon=8 * MiB, cache=4 * MiB, shmem=2 * MiB))
    os.sync()
    with pymemcg.Reader(stats=ALL, local=local, backend="bpf") as r:
        for cg in (parent, a, b, os.path.dirname(b)):
            rec, kernel = quiet_read(r, cg, cgroup_version, local)
            assert_parity(rec, kernel)
        rec = r.read(parent)
    if local:
        if rec.get("anon") is not None:  # not served locally on 6.1
            assert rec["anon"] < 1 * MiB  # the parent itself runs nothing
    else:
        assert rec["anon"] >= 20 * MiB  # 24 MiB, less what is not yet flushed


@pytest.mark.parametrize("local", [False, True], ids=["hierarchical", "local"])
def test_read_many_parity(bpf_ok, cgroups, cgroup_version, local):
    """read_many of a subtree's cgroups against the kernel's files: the
    second call on is one BPF_PROG_RUN where the kernel takes the one-call
    program, iterator sessions where it does not."""
    parent = cgroups.make("m")
    a, c = cgroups.make("m/a"), cgroups.make("m/b/c")
    cgroups.spawn(a, workload(anon=16 * MiB, cache=8 * MiB, shmem=4 * MiB))
    cgroups.spawn(c, workload(anon=8 * MiB, cache=4 * MiB, shmem=2 * MiB))
    os.sync()
    paths = [parent, a, os.path.dirname(c), c, a]
    with pymemcg.Reader(stats=ALL, local=local, backend="bpf") as r:
        r.read_many(paths)
        for _ in range(50):
            before = [kernel_values(p, cgroup_version, local) for p in paths]
            recs = r.read_many(paths)
            after = [kernel_values(p, cgroup_version, local) for p in paths]
            if before == after:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{parent} never went quiet")
    for path, rec, expected in zip(paths, recs, after):
        assert rec.id == os.stat(path).st_ino
        assert assert_parity(rec, expected) >= 8
    if not local:
        assert recs[0]["anon"] >= 20 * MiB  # 24 MiB, less what is not yet flushed


def test_tree_read_matches_single_reads(bpf_ok, cgroups, cgroup_version):
    parent = cgroups.make("t")
    cgroups.make("t/x/y")
    cgroups.spawn(cgroups.make("t/z"), workload(anon=8 * MiB, cache=4 * MiB, shmem=1 * MiB))
    os.sync()
    with pymemcg.Reader(stats=ALL, backend="bpf") as r:
        for _ in range(50):
            before = {p: kernel_values(os.path.join(parent, p), cgroup_version, False)
                      for p in ("", "x", "x/y", "z")}
            snap = r.read_tree(parent)
            after = {p: kernel_values(os.path.join(parent, p), cgroup_version, False)
                     for p in ("", "x", "x/y", "z")}
            if before == after:
                break
            time.sleep(0.2)
        rel = snap.root
        for p, expected in after.items():
            key = rel if not p else rel.rstrip("/") + "/" + p
            assert_parity(snap[key], expected)


def test_oom_kill(bpf_ok, cgroups, cgroup_version):
    cg = cgroups.make("oom")
    limit = 32 * MiB
    if cgroup_version == 1:
        with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        if os.path.exists(os.path.join(cg, "memory.memsw.limit_in_bytes")):
            with open(os.path.join(cg, "memory.memsw.limit_in_bytes"), "w") as f:
                f.write(str(limit))  # no escape into swap
    else:
        for name in ("memory.max", "memory.swap.max"):
            if os.path.exists(os.path.join(cg, name)):
                with open(os.path.join(cg, name), "w") as f:
                    f.write(str(limit) if name == "memory.max" else "0")

    def enter():
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    hog = subprocess.run([sys.executable, "-c", "b = bytearray(256 << 20)\nb[::4096] = b'x' * "
                          "len(b[::4096])"], preexec_fn=enter, capture_output=True, timeout=120)
    assert hog.returncode == -9, f"the hog was not OOM-killed: {hog}"

    names = ["oom", "oom_kill", "max", "limit", "usage", "failcnt" if cgroup_version == 1 else "peak"]
    with pymemcg.Reader(stats=names, backend="bpf") as r:
        rec, kernel = quiet_read(r, cg, cgroup_version, False)
        assert_parity(rec, kernel)
        assert rec["oom_kill"] == 1
        assert rec["oom"] >= 1
        assert rec["limit"] == limit
    with pymemcg.Reader(stats=["oom_kill"], local=True, backend="bpf") as r:
        assert r.read(cg)["oom_kill"] == 1


def _write(cg: str, fname: str, value: object) -> bool:
    """Write value to the cgroup's file; False where this kernel lacks it."""
    if not os.path.exists(os.path.join(cg, fname)):
        return False
    with open(os.path.join(cg, fname), "w") as f:
        f.write(str(value))
    return True


# what test_limits_parity sets: file -> (stat, value)
V1_SET = {"memory.soft_limit_in_bytes": ("soft_limit", 32 * MiB),
          "memory.limit_in_bytes": ("limit", 256 * MiB),
          "memory.memsw.limit_in_bytes": ("memsw_limit", 512 * MiB)}
V2_SET = {"memory.min": ("memory_min", 4 * MiB), "memory.low": ("memory_low", 8 * MiB),
          "memory.high": ("memory_high", 192 * MiB), "memory.max": ("limit", 256 * MiB),
          "memory.swap.high": ("swap_high", 64 * MiB), "memory.swap.max": ("swap_limit", 128 * MiB),
          "memory.zswap.max": ("zswap_max", 32 * MiB), "memory.oom.group": ("oom_group", 1)}


@pytest.mark.parametrize("local", [False, True], ids=["hierarchical", "local"])
def test_limits_parity(bpf_ok, cgroups, cgroup_version, local):
    """Limits, protections and cgroup.stat's counts set to values of our own
    on a parent (its children keep "max"), read through single reads and a
    tree walk, against the files."""
    parent = cgroups.make("lim")
    kids = [cgroups.make("lim/a"), cgroups.make("lim/b")]
    cgroups.spawn(kids[0], workload(anon=4 * MiB, cache=2 * MiB, shmem=1 * MiB))
    wanted = {stat: value for fname, (stat, value) in
              (V1_SET if cgroup_version == 1 else V2_SET).items() if _write(parent, fname, value)}
    assert "limit" in wanted
    with pymemcg.Reader(stats=ALL, local=local, backend="bpf") as r:
        for cg in [parent] + kids:
            rec, kernel = quiet_read(r, cg, cgroup_version, local)
            assert_parity(rec, kernel)
        rec = r.read(parent)
        snap = r.read_tree(parent)
    for stat, value in wanted.items():
        assert rec[stat] == value, stat
    assert snap[snap.root]["limit"] == 256 * MiB
    # a limit not set is MAX, in either version's files (v1 prints a number for it)
    assert snap[snap.root.rstrip("/") + "/a"]["limit"] is pymemcg.MAX
    if cgroup_version == 2:
        assert rec["nr_descendants"] == 2 and rec["oom_group"] == 1
        assert snap[snap.root.rstrip("/") + "/b"]["memory_high"] is pymemcg.MAX
    else:
        # the counts are the cgroup's, though no v1 file prints them
        assert rec["nr_descendants"] == 2
        for stat in ("memory_min", "oom_group"):
            assert rec.get(stat) is None and "only on cgroup v2" in rec.source(stat)


def test_root_cgroup_parity(bpf_ok, cgroup_version):
    """The hierarchy root: its usage is special-cased by the kernel on v1."""
    root = pymemcg.cgroupfs.memory_mount().mountpoint
    names = [n for n in ALL if n not in ("peak", "failcnt", "memsw_peak", "memsw_failcnt")]
    with pymemcg.Reader(stats=names, backend="bpf") as r:
        for _ in range(100):
            before = kernel_values(root, cgroup_version, False)
            rec = r.read(root)
            after = kernel_values(root, cgroup_version, False)
            if before == after:
                break
        else:
            # a busy host: the root sums everything and never holds still;
            # compare the stats that did (the same before and after the read)
            after = {k: v for k, v in after.items() if before.get(k) == v}
        # the root's usage files are global approximations, not its counter
        for name in ("usage", "memsw_usage", "swap_usage"):
            after.pop(name, None)
            assert rec.get(name) is None
        assert assert_parity(rec, after) >= 10, f"too few stats held still to compare: {after}"
        assert rec.level == 0 and rec.path == "/"


def _has_flush_kfunc() -> bool:
    from pymemcg import slots
    from pymemcg.kernel_probe import kernel_facts
    return slots.kfunc_family(kernel_facts()) != slots.KFUNCS_NONE


@pytest.mark.parametrize("local", [False, True], ids=["hierarchical", "local"])
def test_flush_parity(bpf_ok, cgroups, cgroup_version, local, monkeypatch):
    """flush=True folds pending per-CPU updates in before reading: read first,
    then memory.stat, and they agree without memory.stat having flushed first."""
    if not _has_flush_kfunc():
        # this kernel has no flush kfunc: a clear error, or text where allowed
        with pytest.raises(pymemcg.FlushUnavailable, match="flush=False"):
            pymemcg.Reader(stats=["anon"], backend="bpf", flush=True)
        monkeypatch.delenv("PYMEMCG_REQUIRE_BPF", raising=False)
        with pytest.warns(pymemcg.FallbackWarning, match="flush kfunc"):
            with pymemcg.Reader(stats=["anon"], flush=True) as r:
                assert r.backend == "text"
        return
    leaf = cgroups.make("flush")
    proc = cgroups.spawn(leaf, workload())
    with pymemcg.Reader(stats=ALL, local=local, backend="bpf", flush=True) as r:
        assert r.sources["pgfault"].startswith("bpf/")
        first = r.read(leaf)  # before anything read memory.stat
        if first.get("anon") is not None:
            assert first["anon"] >= 20 * MiB
        for _ in range(50):
            rec = r.read(leaf)
            kernel = kernel_values(leaf, cgroup_version, local)
            again = r.read(leaf)
            if rec == again:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{leaf} never went quiet")
        assert assert_parity(rec, kernel) >= 8
        # flushing needs Linux 7.0+, where single reads are one bpf() call
        assert r.read_method.startswith("BPF_PROG_RUN"), r.read_method
        many = r.read_many([leaf, leaf])
        assert [m.id for m in many] == [rec.id, rec.id]
        assert assert_parity(many[0], kernel_values(leaf, cgroup_version, local)) >= 8
    proc.stdin.close()
    proc.wait()
