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
import time

import pytest

import pymemcg
from pymemcg.numa import lookup
from pymemcg import catalog
from pymemcg.cgroupfs import memory_mount, own_memory_cgroup
from pymemcg.cli.format import human_bytes
from pymemcg.cli.snapshot import SNAPSHOT_STATS

from conftest import links_of, sigint_default

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
        if not path:
            continue  # removed before its name was read: no path to check
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
        # null: a cgroup made or removed during the walk (by anything else on the host)
        # whose name the walk could not learn
        assert c["path"] is None or \
            c["level"] == (0 if c["path"] == "/" else c["path"].count("/")), c
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
        assert unit == lookup(name).unit     # NUMA ones: in the file's unit
        assert available in ("yes", "no")


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout == f"pymemcg {pymemcg.__version__}\n"


# --- one version ---

def test_one_version_string():
    from pymemcg import _version
    assert pymemcg.__version__ == _version.__version__
    r = run_cli("--version")
    assert r.stdout == f"pymemcg {_version.__version__}\n"
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "version" not in project["project"], "the version is written in pyproject.toml"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == \
        {"attr": "pymemcg._version.__version__"}


def test_console_script_agrees_with_python_m():
    import shutil
    script = shutil.which("pymemcg")
    if script is None:
        pytest.skip("the pymemcg console script is not on PATH (pip install -e .)")
    for args in (["--version"], ["stats", "--format", "json"]):
        a = subprocess.run([script, *args], capture_output=True, text=True, env=ENV, timeout=60)
        b = run_cli(*args)
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout)


def test_argument_errors_are_clean():
    for args in (["snapshot", "--bogus"], [], ["nosuchcommand"], ["watch", "--count", "0"],
                 ["watch", "--interval", "-1"], ["top", "--interval", "nan"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert "usage: pymemcg" in r.stderr, r.stderr


# --- watch ---

WATCH_KEYS = ["seq", "time", "id", "parent_id", "path", "level", "stats"]


def test_watch_json_lines_per_cgroup(bpf_ok, mount, own_rel):
    r = run_cli("watch", "--count", "2", "--interval", "0.3", "--stats", "anon,pgfault,usage",
                "--backend", "bpf")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert all(list(obj) == WATCH_KEYS for obj in lines)
    seqs = [obj["seq"] for obj in lines]
    assert seqs == sorted(seqs) and set(seqs) == {0, 1}
    times = {obj["seq"]: obj["time"] for obj in lines}
    assert all(obj["time"] == times[obj["seq"]] for obj in lines)  # one time per snapshot
    assert 0.2 <= times[1] - times[0] <= 2.0
    for seq in (0, 1):
        snap = [obj for obj in lines if obj["seq"] == seq]
        assert snap[0]["path"] == "/" and snap[0]["level"] == 0
        own = [obj for obj in snap if obj["path"] == own_rel]
        assert len(own) == 1
        assert list(own[0]["stats"]) == ["anon", "pgfault", "usage"]
        assert_values(own_rel, own[0]["stats"])
    check_ids(mount, [(o["path"], o["id"]) for o in lines if o["seq"] == 1], {"/", own_rel})


def test_watch_json_lines_per_snapshot_of_a_subtree(bpf_ok, mount, own_rel):
    r = run_cli("watch", abs_path(mount, own_rel), "--count", "2", "--interval", "0.1",
                "--per", "snapshot", "--stats", "file,pgmajfault", "--backend", "bpf")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [obj["seq"] for obj in lines] == [0, 1]
    for obj in lines:
        assert list(obj) == ["seq", "time", "backend", "root", "local", "cgroups"]
        assert obj["backend"] == "bpf" and obj["root"] == abs_path(mount, own_rel)
        first = obj["cgroups"][0]
        assert first["path"] == own_rel
        assert first["id"] == os.stat(abs_path(mount, own_rel)).st_ino
        assert_values(own_rel, first["stats"])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_watch_stops_cleanly(bpf_ok, sig):
    import signal
    proc = subprocess.Popen([sys.executable, "-m", "pymemcg", "watch", "--interval", "0.2",
                             "--stats", "anon", "--backend", "bpf"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=sigint_default)
    try:
        json.loads(proc.stdout.readline())
        assert links_of(proc.pid), "watch reads through a link of its own"
    finally:
        proc.send_signal(getattr(signal, sig))
        # the rest through the same buffered reader: readline() may have
        # buffered more than its line, which communicate() (reading the
        # fd itself) would skip, starting mid-line
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout=30)
    assert proc.returncode == 0, err
    assert err == ""
    for line in out.splitlines():  # whole lines only
        json.loads(line)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_watch_stopped_while_its_reader_lags_writes_whole_lines(bpf_ok, cgroups, sig):
    """A stop signal that lands while watch waits on a full pipe (a consumer
    that reads slowly) ends the command once the snapshot it was writing is
    written, never inside a line."""
    import signal
    root = cgroups.make("lag")
    for i in range(800):  # one snapshot is more than a pipe holds
        cgroups.make(f"lag/c{i}")
    proc = subprocess.Popen([sys.executable, "-m", "pymemcg", "watch", "--interval", "0.05",
                             "--stats", "anon", "--backend", "bpf", root],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                            preexec_fn=sigint_default)
    try:
        first = os.read(proc.stdout.fileno(), 100)   # it runs; now leave the pipe full
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until it waits in a write
            with open(f"/proc/{proc.pid}/wchan") as f:
                if "pipe" in f.read():
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == b""
    lines = (first + out).decode().splitlines()
    assert len(lines) > 800   # the first snapshot whole
    for line in lines:  # whole lines only
        json.loads(line)


def test_watch_into_a_closed_pipe_is_quiet(bpf_ok):
    proc = subprocess.Popen([sys.executable, "-m", "pymemcg", "watch", "--interval", "0.05",
                             "--stats", "anon", "--backend", "bpf"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 0
    assert err == ""


def test_watch_nonexistent_root_is_a_user_error():
    r = run_cli("watch", "/nonexistent", "--count", "1")
    assert r.returncode == 2
    assert r.stderr.startswith("pymemcg: /nonexistent") and "Traceback" not in r.stderr
    assert r.stdout == ""


# --- doctor ---

def kallsyms_has(name: str) -> bool:
    with open("/proc/kallsyms") as f:
        return any(line.split()[2] == name for line in f if len(line.split()) >= 3)


def test_doctor_json_tells_what_this_host_has(bpf_ok, mount):
    from pymemcg import slots
    from pymemcg.kernel_probe import kernel_facts
    r = run_cli("doctor", "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["backend"] == "bpf" and data["backend_errors"] == {}
    assert data["kernel"] == os.uname().release and data["version"] == pymemcg.__version__
    assert data["cgroup_version"] == mount.version
    checks = {c["name"]: c for c in data["checks"]}
    assert list(checks) == ["kernel", "btf", "memcg kfuncs", "item tables", "privileges",
                            "seccomp", "lockdown", "kallsyms", "bpffs", "cgroup", "bpf backend",
                            "text backend", "stats"]
    for name in ("kernel", "btf", "privileges", "seccomp", "kallsyms", "bpffs", "cgroup",
                 "bpf backend", "text backend"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["cgroup"]["data"]["own"] == own_memory_cgroup()
    have = [k for k in slots.MEMCG_KFUNCS if k in kernel_facts().kfuncs]
    assert checks["memcg kfuncs"]["data"]["present"] == have
    assert checks["memcg kfuncs"]["status"] == ("ok" if len(have) == len(slots.MEMCG_KFUNCS)
                                                else "info" if not have else "warn")
    found = checks["item tables"]["data"]["kallsyms"]
    assert found == [n for n in ("memcg_node_stat_items", "memcg_stat_items",
                                 "memcg_vm_event_stat") if kallsyms_has(n)]
    assert checks["cgroup"]["data"]["version"] == mount.version
    assert checks["privileges"]["data"]["euid"] == os.geteuid()
    infos = pymemcg.stats()
    st = checks["stats"]["data"]
    assert len(st["bpf"]) + len(st["text"]) + len(st["unavailable"]) == len(infos)
    assert set(st["unavailable"]) == {s.name for s in infos if not s.available}


def test_doctor_text(bpf_ok):
    r = run_cli("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\x1b[" not in r.stdout  # not a terminal: no colour
    lines = r.stdout.splitlines()
    assert lines[0] == f"pymemcg {pymemcg.__version__} doctor: Linux {os.uname().release}, " \
                       f"cgroup v{memory_mount().version}"
    for name in ("kernel", "btf", "memcg kfuncs", "item tables", "privileges", "seccomp",
                 "lockdown", "kallsyms", "bpffs", "cgroup", "bpf backend", "text backend",
                 "stats"):
        assert any(re.match(rf"  (ok|info|warn|fail)\s+{name}  ", line) for line in lines), name
    assert lines[-1].startswith("verdict: the BPF backend works here")


def doctor_with(prefix, preexec_fn=None) -> subprocess.CompletedProcess:
    """`pymemcg doctor` (text) under `prefix` (setpriv, unshare, ...), BPF not required."""
    return subprocess.run([*prefix, sys.executable, "-m", "pymemcg", "doctor"],
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn,
                          env={k: v for k, v in os.environ.items() if k != "PYMEMCG_REQUIRE_BPF"})


def setpriv_keeping(*caps: str) -> list:
    import shutil
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop capabilities")
    keep = ",".join(["-all"] + [f"+{c}" for c in caps])
    return ["setpriv", "--bounding-set", keep, "--inh-caps", "-all"]


def test_doctor_without_privileges_names_the_remedy(bpf_ok):
    r = doctor_with(setpriv_keeping())
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"^  fail  privileges\s+euid 0, capabilities: none", out, re.M), out
    # the capability the unit and the DaemonSet grant, not one that fails here
    assert "-> give the process CAP_SYS_ADMIN (systemd: AmbientCapabilities=CAP_SYS_ADMIN" in out
    assert "AmbientCapabilities=CAP_BPF" not in out
    assert re.search(r"^  fail  bpf backend ", out, re.M)
    assert re.search(r"^  ok    text backend ", out, re.M)
    assert out.splitlines()[-1].startswith("verdict: BPF does not work here")


def test_doctor_with_cap_bpf_and_cap_perfmon_asks_for_cap_sys_admin(bpf_ok):
    """CAP_BPF + CAP_PERFMON is what BPF usually takes; libbpf's BTF walk here
    needs CAP_SYS_ADMIN, and doctor must not call the pair enough."""
    r = doctor_with(setpriv_keeping("bpf", "perfmon"))
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"^  fail  privileges\s+euid 0, capabilities: CAP_BPF, CAP_PERFMON", out,
                     re.M), out
    assert "CAP_BPF and CAP_PERFMON are not enough" in out
    assert re.search(r"^  ok    seccomp\s+no seccomp filter", out, re.M), out
    assert re.search(r"^  fail  bpf backend .*BTF", out, re.M), out


# a classic-BPF seccomp program: bpf(2) fails EPERM, everything else is allowed
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7fff0000, 0x00050000
AUDIT_ARCH = {"x86_64": 0xc000003e, "aarch64": 0xc00000b7}


def refuse_bpf_by_seccomp() -> None:
    """In the child before exec: a seccomp filter that refuses bpf(2) with
    EPERM, as container runtimes' default profiles do without CAP_SYS_ADMIN."""
    import ctypes
    import errno as errnos
    import platform
    from pymemcg.cli.doctor import BPF_SYSCALL
    machine = platform.machine()

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
    ld, jeq, ret = 0x20, 0x15, 0x06          # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET
    insns = [Insn(ld, 0, 0, 4), Insn(jeq, 1, 0, AUDIT_ARCH[machine]),   # seccomp_data.arch
             Insn(ret, 0, 0, SECCOMP_RET_ALLOW),
             Insn(ld, 0, 0, 0), Insn(jeq, 0, 1, BPF_SYSCALL[machine]),   # seccomp_data.nr
             Insn(ret, 0, 0, SECCOMP_RET_ERRNO | errnos.EPERM),
             Insn(ret, 0, 0, SECCOMP_RET_ALLOW)]
    array = (Insn * len(insns))(*insns)
    prog = Prog(len(insns), array)
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def test_doctor_blames_a_seccomp_filter_that_refuses_bpf(bpf_ok):
    """Root with every capability, under a filter refusing bpf(2): the cause is
    the filter, not capabilities, and the remedy says so."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    r = doctor_with([], preexec_fn=refuse_bpf_by_seccomp)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"^  ok    privileges ", out, re.M), out
    assert re.search(r"^  fail  seccomp\s+seccomp filter \(1 filters\) refuses bpf\(2\) "
                     r"\(EPERM\)", out, re.M), out
    assert "allow bpf(2) only to a container holding CAP_SYS_ADMIN" in out
    assert "add bpf to SystemCallFilter=" in out
    assert out.splitlines()[-1].startswith("verdict: BPF does not work here")


def test_bpf_works_with_an_unreadable_kallsyms(bpf_ok, tmp_path):
    """/proc/kallsyms out of reach, as systemd's ProtectKernelTunables=yes
    leaves it (an inaccessible device node mounted over it, in a mount
    namespace of the test's own): no program needs it (the kernel's item
    lists are looked up by name in the kernel), so doctor says so and the
    BPF backend works."""
    import shutil
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    node = tmp_path / "inaccessible"
    os.mknod(node, 0o000 | 0o020000, os.makedev(0, 0))     # a character device 0:0
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f'mount --bind "{node}" /proc/kallsyms && exec "$0" -m pymemcg doctor',
                        sys.executable], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "PYMEMCG_REQUIRE_BPF"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"^  info  kallsyms\s+/proc/kallsyms cannot be read .*pymemcg does not "
                     r"need it", out, re.M), out
    assert re.search(r"^  ok    bpf backend ", out, re.M), out
    assert re.search(r"^  ok    privileges ", out, re.M) and re.search(r"^  ok    seccomp ", out, re.M)


@pytest.mark.parametrize("text, status", [("[none] integrity confidentiality", "ok"),
                                          ("none [integrity] confidentiality", "ok"),
                                          ("none integrity [confidentiality]", "fail")])
def test_doctor_reads_the_kernels_lockdown(tmp_path, monkeypatch, text, status):
    from pymemcg.cli import doctor
    path = tmp_path / "lockdown"
    path.write_text(text + "\n")
    monkeypatch.setattr(doctor, "LOCKDOWN", str(path))
    check = doctor._check_lockdown()
    assert check.status == status and check.data["mode"] == text.split("[")[1].split("]")[0]
    if status == "fail":
        assert "bpf_probe_read_kernel" in check.detail and "lockdown=integrity" in check.remedy
    monkeypatch.setattr(doctor, "LOCKDOWN", str(tmp_path / "absent"))
    assert doctor._check_lockdown().status == "info"


def test_doctor_in_a_cgroup_namespace_of_its_own_finds_its_cgroup(bpf_ok, cgroups):
    """In a cgroup namespace rooted at its own cgroup, /proc/self/cgroup says
    "/" and the host's hierarchy, mounted before, shows "/../..": the cgroup
    is found by the process's id, never taken to be the hierarchy's root."""
    import shutil
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    where = cgroups.make("ns/inner")
    code = ("import json; from pymemcg.cgroupfs import locate_own_memory_cgroup as l, memory_mount;"
            "print(json.dumps([l(), memory_mount().root]))")

    def enter():
        with open(os.path.join(where, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    r = subprocess.run(["unshare", "--cgroup", sys.executable, "-c", code], preexec_fn=enter,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (own, how), root = json.loads(r.stdout)
    depth = os.path.relpath(where, memory_mount().mountpoint).count("/") + 1
    assert root == "/" + "/".join([".."] * depth), root
    assert own == where and how.startswith("found by this process's id"), (own, how)
    r = doctor_with(["unshare", "--cgroup"], preexec_fn=enter)
    assert re.search(rf"^  ok    cgroup\s+v\d, memory controller at \S+; this process is in "
                     rf"{re.escape(where)} \(found by", r.stdout, re.M), r.stdout


# --- colour ---

def run_in_pty(args, env_extra=None) -> str:
    """Run the CLI with stdout on a pseudo-terminal; what it wrote there."""
    import pty
    master, slave = pty.openpty()
    env = {**ENV, "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, "-m", "pymemcg", *args], stdout=slave,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) in (0, 1), proc.stderr.read()
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal(bpf_ok):
    assert "\x1b[" not in run_cli("snapshot").stdout
    assert "\x1b[1m" in run_cli("snapshot", "--color", "always").stdout
    assert "\x1b[1m" in run_cli("--color", "always", "snapshot").stdout
    on_tty = run_in_pty(["snapshot"])
    assert "\x1b[1m" in on_tty
    assert "\x1b[" not in run_in_pty(["snapshot"], {"NO_COLOR": "1"})
    assert "\x1b[" not in run_in_pty(["snapshot", "--color", "never"])
    assert "\x1b[32;1m" in run_in_pty(["doctor"])  # ok in green


def test_flush_flag(bpf_ok, mount):
    """--flush where the kernel has a flush kfunc reads through BPF; elsewhere
    --backend bpf fails naming the cause, and auto falls back to text."""
    from pymemcg import slots
    from pymemcg.kernel_probe import kernel_facts
    has_flush = slots.kfunc_family(kernel_facts()) != slots.KFUNCS_NONE
    strict = run_cli("snapshot", "--flush", "--backend", "bpf", "--stats", "anon")
    if has_flush:
        assert strict.returncode == 0 and strict.stdout.startswith("backend bpf"), strict
        return
    assert strict.returncode != 0 and "flush kfunc" in strict.stderr, strict
    env = {k: v for k, v in ENV.items() if k != "PYMEMCG_REQUIRE_BPF"}
    auto = subprocess.run([sys.executable, "-m", "pymemcg", "snapshot", "--flush", "--stats",
                           "anon"], capture_output=True, text=True, env=env, timeout=120)
    assert auto.returncode == 0, auto
    assert "flush kfunc" in auto.stderr and auto.stdout.startswith("backend text")


def test_stats_lists_the_limits_and_counts(mount):
    """`pymemcg stats` names each limit, protection, count and pressure value
    with its unit and how this host serves it (or why not), in JSON and in
    the table."""
    r = run_cli("stats", "--format", "json")
    assert r.returncode == 0, r.stderr
    by_name = {s["name"]: s for s in json.loads(r.stdout)}
    pressure = [(catalog.pressure_name(line, field),
                 "microseconds" if field == "total" else "percent_x100")
                for line in catalog.PRESSURE_LINES
                for field in ("total",) + catalog.PRESSURE_WINDOWS]
    signals = [("memory_min", "bytes"), ("memory_low", "bytes"), ("memory_high", "bytes"),
               ("limit", "bytes"), ("swap_limit", "bytes"), ("memsw_limit", "bytes"),
               ("swap_high", "bytes"), ("zswap_max", "bytes"), ("soft_limit", "bytes"),
               ("oom_group", "number"), ("sock_throttled", "count"),
               ("nr_descendants", "number"), ("nr_dying_descendants", "number"),
               ("zswap_current", "bytes")] + pressure
    assert len(pressure) == 8
    r = run_cli("stats")
    assert r.returncode == 0, r.stderr
    table = {line.split()[0]: line.split(None, 4) for line in r.stdout.splitlines()[1:]}
    for name, unit in signals:
        s = by_name[name]
        assert s["unit"] == unit, name
        assert s["via"], name   # the slot, the file, or why neither
        assert s["available"] == bool(s["backend"]), name
        assert table[name][:4] == [name, unit, "yes" if s["available"] else "no",
                                   s["backend"] or "-"], name
        assert table[name][4] == s["via"], name
    if mount.version == 1:
        # v1 has no memory.pressure: each pressure value says so
        for name, _ in pressure:
            assert not by_name[name]["available"], name
            assert "cgroup v1 has no memory.pressure" in by_name[name]["via"], name


def test_snapshot_writes_a_limit_not_set_as_max(bpf_ok, mount, cgroups):
    child = cgroups.make("clim")
    fname = "memory.limit_in_bytes" if mount.version == 1 else "memory.max"
    with open(os.path.join(child, fname), "w") as f:
        f.write(str(64 << 20))
    for fmt in ("json", "table", "csv"):
        r = run_cli("snapshot", cgroups.base, "--format", fmt, "--stats", "limit,nr_descendants")
        assert r.returncode == 0, r.stderr
        if fmt == "table":
            assert " max " in r.stdout + " " and "64.0 MiB" in r.stdout
            continue
        if fmt == "csv":
            rows = [line.split(",") for line in r.stdout.splitlines()]
            assert rows[1][-2:] == ["max", "1"] and rows[2][-2] == str(64 << 20)
            continue
        rows = json.loads(r.stdout)["cgroups"]
        assert rows[0]["stats"] == {"limit": "max", "nr_descendants": 1}
        assert rows[1]["stats"]["limit"] == 64 << 20
