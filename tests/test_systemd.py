"""The systemd unit (packaging/systemd/pymemcg-export.service), checked
without systemd as PID 1 (tests/test_systemd_boot.py starts it under a real
systemd):

- `systemd-analyze verify` accepts it;
- its capability set is enough and no smaller one is: `pymemcg export`
  runs through BPF as an unprivileged user holding exactly the unit's
  capabilities (setpriv: bounding, inheritable and ambient sets, no new
  privileges), under the kernel's own W^X lock (prctl PR_SET_MDWE, what
  MemoryDenyWriteExecute asks for), and fails with CAP_BPF + CAP_PERFMON;
- every system call and socket family the exporter uses, traced with
  strace through start, scrapes and stop, is inside the unit's
  SystemCallFilter and RestrictAddressFamilies.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from typing import Dict, List, Set

import pytest

pytest.importorskip("prometheus_client")

from conftest import bpf_required  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT = os.path.join(HERE, "..", "packaging", "systemd", "pymemcg-export.service")
ENV = {**os.environ, "PYMEMCG_REQUIRE_BPF": "1"}
NOBODY = 65534


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        message = f"{name} is not installed (make deps installs it)"
        if bpf_required():
            pytest.fail(message)
        pytest.skip(message)
    return path


def directives(path: str = UNIT) -> Dict[str, List[str]]:
    """The unit's Key=value lines, every assignment of each key."""
    out: Dict[str, List[str]] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")) and "=" in line:
                key, _, value = line.partition("=")
                out.setdefault(key, []).append(value)
    return out


def pymemcg_script() -> str:
    script = shutil.which("pymemcg") or os.path.join(os.path.dirname(sys.executable), "pymemcg")
    assert os.access(script, os.X_OK), "the pymemcg console script is not installed"
    return script


def unit_with_exec(tmp_path, exec_start: str) -> str:
    """The shipped unit with ExecStart pointing at this checkout's script."""
    text = open(UNIT).read()
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={exec_start}", text, flags=re.M)
    path = tmp_path / "pymemcg-export.service"
    path.write_text(text)
    return str(path)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = tool("systemd-analyze")
    unit = unit_with_exec(tmp_path, pymemcg_script())
    out = subprocess.run([analyze, "verify", unit], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0 and "pymemcg-export" not in out.stdout + out.stderr, out
    # and it is a check that can fail: a bad value is reported
    bad = tmp_path / "bad"
    bad.mkdir()
    broken = open(unit).read().replace("ProtectSystem=strict", "ProtectSystem=bogus")
    (bad / "pymemcg-export.service").write_text(broken)
    out = subprocess.run([analyze, "verify", str(bad / "pymemcg-export.service")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "Failed to parse" in out.stderr and "bogus" in out.stderr, out


def test_the_unit_runs_as_its_own_user_with_one_capability():
    d = directives()
    assert d["DynamicUser"] == ["yes"] and d["NoNewPrivileges"] == ["yes"]
    assert d["AmbientCapabilities"] == d["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]
    assert d["ExecStart"][0].endswith("--listen 127.0.0.1:9756 --backend bpf")
    # no silent fallback to memory.stat text, and no restart loop when BPF is refused
    assert d["RestartPreventExitStatus"] == ["2"]


# --- the capabilities, W^X, system calls: the exporter itself ---

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def memory_deny_write_execute() -> None:
    """In the child before exec: the kernel refuses writable+executable memory
    from now on (inherited across exec), as MemoryDenyWriteExecute does."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def caps_arg(caps: List[str]) -> str:
    """setpriv's form of a capability list: -all,+sys_admin,..."""
    return ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in caps])


def as_unit_user(caps: List[str]) -> List[str]:
    """setpriv: an unprivileged user holding exactly `caps`, no new privileges."""
    c = caps_arg(caps)
    return [tool("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--no-new-privs", f"--inh-caps={c}", f"--ambient-caps={c}", f"--bounding-set={c}"]


def exporter_pid(proc: subprocess.Popen) -> int:
    """The exporter's pid: `proc` itself, or its one child when a tracer or
    setpriv runs it (setpriv execs, so it is the exporter)."""
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        children = f.read().split()
    return int(children[0]) if children else proc.pid


def run_exporter(prefix: List[str], root: str, scrapes: int = 2) -> tuple:
    """Start `pymemcg export` under `prefix`, scrape it, stop it with SIGTERM:
    (exit code, stderr, last scrape body or None)."""
    proc = subprocess.Popen(prefix + [sys.executable, "-m", "pymemcg", "export", "--listen",
                                      "127.0.0.1:0", "--backend", "bpf", "--stats",
                                      "usage,pgfault", root],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=memory_deny_write_execute)
    body = None
    try:
        line = proc.stderr.readline()
        m = re.search(r"(https?://\S+/metrics)", line)
        if m:
            for _ in range(scrapes):
                with urllib.request.urlopen(m.group(1), timeout=20) as r:
                    body = r.read().decode()
            os.kill(exporter_pid(proc), signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    except BaseException:
        # a tracer killed alone would leave the exporter running: the exporter first
        if proc.poll() is None:
            try:
                os.kill(exporter_pid(proc), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        proc.kill()
        proc.wait()
        raise
    return proc.returncode, line + err, body


def test_the_units_capabilities_are_enough_and_nothing_less_is(bpf_ok, cgroups):
    caps = directives()["AmbientCapabilities"][0].split()
    rc, err, body = run_exporter(as_unit_user(caps), cgroups.base)
    assert rc == 0 and body is not None, err
    assert 'backend="bpf"' in body, body
    assert re.search(r"^pymemcg_scrape_error 0(\.0)?$", body, re.M), body
    assert "memcg_usage{" in body
    # CAP_BPF + CAP_PERFMON is what loading BPF usually takes; here it is not enough
    rc, err, body = run_exporter(as_unit_user(["CAP_BPF", "CAP_PERFMON"]), cgroups.base)
    assert rc == 2 and body is None and "BTF" in err, err
    rc, err, body = run_exporter(as_unit_user([]), cgroups.base)
    assert rc == 2 and body is None and "root" in err, err


def allowed_syscalls(filters: List[str]) -> Set[str]:
    """The system calls a SystemCallFilter allow-list names, groups expanded."""
    analyze = tool("systemd-analyze")
    out: Set[str] = set()
    todo = [name for value in filters for name in value.split()]
    seen: Set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if not name.startswith("@"):
            out.add(name)
            continue
        listing = subprocess.run([analyze, "syscall-filter", name], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
        for line in listing.splitlines()[1:]:
            line = line.strip()
            if line and not line.startswith("#"):
                todo.append(line)
    return out


def test_system_calls_and_socket_families_are_what_the_unit_allows(bpf_ok, cgroups, tmp_path):
    d = directives()
    strace = tool("strace")
    trace = tmp_path / "trace"
    rc, err, body = run_exporter([strace, "-f", "-qq", "-o", str(trace)], cgroups.base, 3)
    assert rc == 0 and body and 'backend="bpf"' in body, err
    text = trace.read_text()
    used = set(re.findall(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)\(", text, flags=re.M))
    assert {"bpf", "socket", "accept4"} <= used, sorted(used)    # the trace saw the real work
    not_allowed = used - allowed_syscalls(d["SystemCallFilter"])
    assert not not_allowed, f"system calls outside SystemCallFilter: {sorted(not_allowed)}"
    families = set(re.findall(r"socket\((AF_[A-Z0-9]+)", text))
    assert families and families <= set(d["RestrictAddressFamilies"][0].split()), families
