"""pymemcg.verify() and `pymemcg verify` on the real kernel.

verify() makes its own probe cgroups and processes: these tests check what it
reports (every served stat once, no mismatch, enough stats compared), that a
wrong BPF value is caught, and that it leaves nothing behind, also when it is
interrupted.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
import time

import pytest

import pymemcg
from pymemcg import cli
from pymemcg.cgroupfs import own_memory_cgroup

from conftest import as_nobody, my_links, open_fds

# pymemcg.verify is the function; its package is pymemcg.parity
from pymemcg import parity
from pymemcg.parity import compare as comparison, files
from pymemcg.parity.probe import Probe

ENV = {**os.environ, "PYMEMCG_REQUIRE_BPF": "1"}
#: this host compares about 30 (cgroup v1 prints few stats); v2 hosts far more
MIN_COMPARED = 25


def probes() -> set:
    """Probe cgroups of this process under its own memory cgroup."""
    own = own_memory_cgroup()
    mine = f"{parity.PROBE_PREFIX}{os.getpid()}-"
    return {e for e in os.listdir(own) if e.startswith(mine)}


def children() -> set:
    """Live processes whose parent is this process."""
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.add(int(pid))
    return out


def in_probe(pid: int, owner: int = None) -> bool:
    """Whether process `pid` is in a probe cgroup of verify run by `owner`
    (default: this process)."""
    mine = f"{parity.PROBE_PREFIX}{os.getpid() if owner is None else owner}-"
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return mine in f.read()
    except OSError:
        return False


class Leaks:
    """What verify could leave behind: probe cgroups, fds, links, processes."""

    def __init__(self) -> None:
        gc.collect()
        self.fds, self.links, self.kids = open_fds(), my_links(), children()
        assert not probes()

    def check(self, pids=()) -> None:
        gc.collect()
        assert not probes(), f"probe cgroups left behind: {probes()}"
        assert open_fds() <= self.fds, f"fds left behind: {open_fds() - self.fds}"
        assert my_links() <= self.links, f"links left behind: {my_links() - self.links}"
        assert children() <= self.kids, f"processes left behind: {children() - self.kids}"
        assert not [p for p in pids if in_probe(p)], "workers still in a probe cgroup"


@pytest.fixture(scope="module")
def run(bpf_ok):
    """One verify() here, timed, with the leak checks around it."""
    leaks = Leaks()
    t0 = time.monotonic()
    result = pymemcg.verify()
    elapsed = time.monotonic() - t0
    leaks.check(result.workload["pids"])
    c = result.counts
    print(f"\nverify here: Linux {result.kernel} v{result.cgroup_version}: {c['served']} served, "
          f"{c['exact']} exact ({c['exact_nonzero']} nonzero), {c['mismatch']} mismatched, "
          f"{c['not compared']} not compared, {c['comparisons']} comparisons, "
          f"{elapsed:.1f} s, {result.workload['rounds']} rounds")
    return result, elapsed


def test_no_mismatch_here(run):
    result, elapsed = run
    bad = [s.as_dict() for s in result.stats if s.outcome == parity.MISMATCH]
    assert result.ok and not bad, bad
    assert result.counts[parity.EXACT] >= MIN_COMPARED, result.counts
    assert elapsed < 30, f"verify took {elapsed:.1f} s"
    assert result.workload["oom_killed"], "the probe's OOM kill did not happen"


def test_every_served_stat_once(run):
    result, _ = run
    names = [s.name for s in result.stats]
    assert len(names) == len(set(names))
    served = {s.name for local in (False, True) for s in pymemcg.stats(local=local)
              if s.backend == "bpf"}
    assert set(names) == served
    counts = result.counts
    assert counts["served"] == len(names)
    assert counts[parity.EXACT] + counts[parity.MISMATCH] + counts[parity.NOT_COMPARED] == len(names)
    for s in result.stats:
        assert s.outcome in (parity.EXACT, parity.MISMATCH, parity.NOT_COMPARED)
        if s.outcome == parity.NOT_COMPARED:
            assert s.why and not s.checks, s
        else:
            assert s.checks and s.against, s
        if s.outcome == parity.EXACT:
            assert all(c.outcome == parity.EXACT and c.bpf == c.file for c in s.checks), s


def test_compared_values_are_real(run):
    """The probe's memory is there, so exact is not a comparison of zeros."""
    result, _ = run
    by = {s.name: s for s in result.stats}
    w = parity.Workload()

    def value(name, cgroup, local=False):
        (c,) = [c for c in by[name].checks
                if c.cgroup == cgroup and c.local == local and c.method == "read"]
        return c.file

    assert value("anon", "work") >= w.anon
    assert value("shmem", "work") >= w.shmem
    assert value("file", "work") >= w.cache + w.shmem + w.dirty
    assert value("file_mapped", "work") >= w.mapped
    # the dirty file is written back after 30 s, or sooner when the host
    # writes a lot: its value is compared, but may be 0
    assert by["file_dirty"].outcome == parity.EXACT
    assert value("usage", ".") >= w.anon + w.cache + w.shmem + w.leaf_anon
    assert value("anon", ".") >= w.anon + w.leaf_anon   # hierarchical: the children's sum
    assert value("oom_kill", "oom") == 1
    assert value("limit", "oom") == w.oom_limit
    # every cgroup of the probe, hierarchical and local, single reads and walks
    kinds = {(c.cgroup, c.local, c.method) for c in by["usage"].checks}
    assert kinds == {(cg, local, m) for cg in parity.PROBE_CGROUPS for local in (False, True)
                     for m in ("read", "read_tree")}
    if result.cgroup_version == 1:
        assert value("anon", ".", local=True) == 0     # the probe itself runs nothing
        assert value("failcnt", "oom") > 0


def test_compare_catches_a_wrong_value():
    """compare() on made-up values: equal is exact, off by one page is a
    mismatch, a value that moved is left to read again."""
    files = {"anon": (8192, "memory.stat anon"), "file": (4096, "memory.stat file"),
             "usage": (12288, "memory.current")}
    moved = dict(files, usage=(16384, "memory.current"))
    names = list(files)
    ok = comparison.compare({"anon": 8192, "file": 4096, "usage": 12288}, files, files, names)
    assert {n: o[0] for n, o in ok.items()} == {n: parity.EXACT for n in names}
    bad = comparison.compare({"anon": 8192 + 4096, "file": None, "usage": 12288}, files, moved, names)
    assert bad["anon"][:3] == (parity.MISMATCH, 12288, 8192) and "+4096" in bad["anon"][3]
    assert bad["file"][0] == parity.MISMATCH          # served, but BPF gave nothing
    assert "usage" not in bad                       # moved across the read: undecided


def test_mismatch_is_reported_and_exits_1(bpf_ok, monkeypatch, capsys):
    """A BPF value made wrong on its way into the comparison: verify reports
    that stat (only it) as a mismatch, and `pymemcg verify` exits 1."""
    real = comparison.compare

    def wrong_anon(bpf, before, after, names):
        if "anon" in bpf and bpf["anon"] is not None:
            bpf = dict(bpf, anon=bpf["anon"] + 4096)
        return real(bpf, before, after, names)

    monkeypatch.setattr(comparison, "compare", wrong_anon)
    leaks = Leaks()
    assert cli.main(["verify", "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    leaks.check(doc["workload"]["pids"])
    by = {s["name"]: s for s in doc["stats"]}
    assert by["anon"]["outcome"] == "mismatch"
    assert by["anon"]["bpf"] == by["anon"]["file"] + 4096, by["anon"]
    assert "+4096" in by["anon"]["why"]
    assert doc["counts"]["mismatch"] == 1 and not doc["ok"]
    assert [s["name"] for s in doc["stats"] if s["outcome"] == "mismatch"] == ["anon"]


def test_cli_json_and_table(bpf_ok):
    p = subprocess.run([sys.executable, "-m", "pymemcg", "verify", "--format", "json"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout[-2000:]
    doc = json.loads(p.stdout)
    assert doc["kernel"] == os.uname().release
    assert doc["cgroup_version"] in (1, 2) and doc["backend"].startswith("bpf")
    assert doc["counts"]["mismatch"] == 0 and doc["counts"]["exact"] >= MIN_COMPARED
    for s in doc["stats"]:
        assert {"name", "outcome", "bpf", "file", "why"} <= set(s)
    assert sum(doc["counts"][k] for k in ("exact", "mismatch", "not compared")) == \
        doc["counts"]["served"] == len(doc["stats"])
    t = subprocess.run([sys.executable, "-m", "pymemcg", "verify"], capture_output=True,
                       text=True, env=ENV, timeout=120)
    assert t.returncode == 0, t.stderr
    assert "verdict: every compared stat is exact" in t.stdout
    assert f"{doc['counts']['served']} stats served by BPF" in t.stdout
    assert not probes()


def test_interrupted_leaves_nothing(bpf_ok, monkeypatch):
    """Ctrl-C while the probe runs: the probe, its processes and links go."""
    seen = {}

    def interrupt(probe, *args):
        seen["pids"] = list(probe.worker_pids)
        seen["path"] = probe.path
        assert os.path.isdir(probe.cgroup("mid/leaf"))
        raise KeyboardInterrupt

    monkeypatch.setattr(Probe, "wait_until_quiet", interrupt)
    leaks = Leaks()
    with pytest.raises(KeyboardInterrupt):
        pymemcg.verify()
    assert len(seen["pids"]) == 3 and not os.path.exists(seen["path"])
    leaks.check(seen["pids"])


def test_failing_workload_leaves_nothing(bpf_ok):
    """A workload that cannot start is a clear error, and nothing stays."""
    leaks = Leaks()
    with pytest.raises(pymemcg.VerifyUnavailable, match="cache_dir"):
        pymemcg.verify(cache_dir="/nonexistent/pymemcg-verify")
    leaks.check()


def test_needs_root():
    outcome = as_nobody(lambda: pymemcg.verify())
    assert outcome[0] == "raised" and outcome[1] == "VerifyUnavailable", outcome
    assert "needs root" in outcome[2] and outcome[3]


def test_file_values_rules():
    """Which file serves which value: v2 prints no local values except at a
    leaf (its subtree is itself) and in memory.events.local; v1 prints both."""
    v2 = {"memory.stat": "anon 4096\nfile 8192\n", "memory.current": "12288\n",
          "memory.max": "max\n", "memory.events": "oom_kill 2\n",
          "memory.events.local": "oom_kill 1\n"}
    vals, why = files.file_values(v2, 2, local=True, leaf=False)
    assert "anon" not in vals and "hierarchical values only" in why["anon"]
    assert vals["oom_kill"] == (1, "memory.events.local oom_kill")
    assert vals["limit"][0] is pymemcg.MAX   # "max": no limit
    vals, _ = files.file_values(v2, 2, local=True, leaf=True)
    assert vals["anon"][0] == 4096 and "leaf" in vals["anon"][1]
    vals, why = files.file_values(v2, 2, local=False, leaf=False)
    assert vals["oom_kill"][0] == 2 and "pgpgin" in why and "v1" in why["pgpgin"]
    v1 = {"memory.stat": "rss 4096\ntotal_rss 8192\n", "memory.oom_control": "oom_kill 3\n",
          "memory.kmem.usage_in_bytes": "65536\n"}
    vals, why = files.file_values(v1, 1, local=True, leaf=False)
    assert vals["anon"] == (4096, "memory.stat rss") and "kernel" not in vals
    assert "oom_kill" not in vals and "max" in why and "memory.events" in why["max"]
    vals, _ = files.file_values(v1, 1, local=False, leaf=False)
    assert vals["anon"][0] == 8192 and vals["kernel"][0] == 65536 and vals["oom_kill"][0] == 3


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_cli_signal_leaves_nothing(bpf_ok, sig):
    """`pymemcg verify` stopped by Ctrl-C or SIGTERM while its probe runs
    exits 130 and leaves no probe cgroup and no process in one."""
    import signal
    from conftest import sigint_default
    own = own_memory_cgroup()
    p = subprocess.Popen([sys.executable, "-m", "pymemcg", "verify"], env=ENV, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=sigint_default)
    mine = f"{parity.PROBE_PREFIX}{p.pid}-"
    deadline = time.monotonic() + 60
    while not any(e.startswith(mine) for e in os.listdir(own)):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    time.sleep(0.5)   # the workload is charging or the probe settling
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=60)
    assert p.returncode == cli.EXIT_INTERRUPTED, (out, err)
    assert not [e for e in os.listdir(own) if e.startswith(mine)]
    left = [pid for pid in filter(str.isdigit, os.listdir("/proc")) if in_probe(int(pid), p.pid)]
    assert not left, f"processes left in probe cgroups: {left}"


# --- the package: its names, and the workload as a real module ---

def test_verify_is_the_function_and_its_package_is_not_shadowed():
    """pymemcg.verify is the function; its code is the package pymemcg.parity,
    importable by that name, where every submodule is reached as itself
    (no function in the package takes a submodule's name)."""
    import inspect
    import pkgutil
    assert inspect.isfunction(pymemcg.verify) and pymemcg.verify is parity.verify
    assert importlib.import_module("pymemcg.parity") is parity
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pymemcg.verify")   # a function, not a module
    names = {m.name for m in pkgutil.iter_modules(parity.__path__)}
    assert names == {"results", "files", "compare", "probe", "workload"}, names
    for name in names:
        module = importlib.import_module(f"pymemcg.parity.{name}")
        assert inspect.ismodule(module) and getattr(parity, name) is module, name


def test_no_parity_module_shadows_an_importable_one():
    """The workload runs by its path, so its directory (pymemcg/parity) comes
    first on the child's sys.path: a module there named like one the child
    imports (the standard library's) would replace it. Asked of a fresh
    interpreter, whose sys.path is the child's but for that directory."""
    import pkgutil
    names = [m.name for m in pkgutil.iter_modules(parity.__path__)]
    code = ("import importlib.util, json, sys\n"
            "print(json.dumps([n for n in sys.argv[1:] if importlib.util.find_spec(n)]))\n")
    p = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                       cwd="/", timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [], f"pymemcg/parity modules shadow these: {p.stdout}"


def test_workload_is_the_program_the_probe_runs():
    """The workload program is the importable module pymemcg.parity.workload
    (so mypy --strict, pyflakes and coverage see it), it runs as the probe
    runs it with only the standard library imported, and it reports a worker
    that could not join its cgroup without making anything."""
    from pymemcg.parity import probe, workload
    assert os.path.samefile(workload.__file__, probe.WORKLOAD_PROGRAM)
    missing = "/nonexistent/pymemcg-verify-cgroup"
    cfg = {"jobs": [{"name": "lost", "cgroup": missing, "anon": 4096}],
           "cache_dir": "/var/tmp", "timeout": 30}
    p = subprocess.Popen([sys.executable, "-X", "importtime", probe.WORKLOAD_PROGRAM,
                          json.dumps(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        report = json.loads(p.stdout.readline())
    finally:
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert set(report["workers"]) == {"lost"}
    assert report["errors"]["lost"].startswith("error: FileNotFoundError(")
    assert report["errors"]["lost"].endswith("; exited with status 1"), report
    imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines()
                if line.startswith("import time:")}
    assert "json" in imported and not [m for m in imported if m.startswith("pymemcg")]
