"""The systemd unit (packaging/systemd/pymemcg-export.service) started by a
real systemd as PID 1: systemd-nspawn boots a Debian root (tools/debian-root:
systemd, dbus, python3; cached outside the checkout, keyed on its inputs)
with the release wheel in a venv bound in read-only, and a probe service
inside reports what the running exporter is:

- the shipped unit serves through BPF (pymemcg_info backend="bpf");
- its hardening, read from /proc/<MainPID> of the running service: a user
  that is not root, exactly CAP_SYS_ADMIN (effective, permitted, ambient,
  bounding), NoNewPrivs, a seccomp filter, a read-only root and
  /proc/sys, /proc/kcore out of reach;
- the same unit with ProtectKernelTunables=yes (which hides /proc/kallsyms
  from libbpf) refuses to start: exit status 2 with the cause in its
  journal, not restarted, and nothing served.

nspawn runs from a scratch cgroup of its own (systemd, unified and memory
hierarchies), with its own network namespace (the exporters listen on the
container's loopback) and bpf(2) added to its system-call filter. Needs
root; where systemd-nspawn or mmdebstrap is missing the tests skip, or fail
under PYMEMCG_REQUIRE_BPF=1 (CI installs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from typing import Iterator

import pytest

pytest.importorskip("prometheus_client")

from pymemcg.cgroupfs import cgroup_mounts  # noqa: E402

from scratch_cgroups import ScratchCgroup  # noqa: E402
from test_container import wheel  # noqa: E402,F401
from test_systemd import UNIT, tool  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
CACHE = os.environ.get("PYMEMCG_CI_CACHE", "/var/cache/pymemcg-ci")
ROOT_PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3"]
#: inside the container
SHARE = "/srv/pymemcg-test"
CAP_SYS_ADMIN = 21

PROBE = r'''
import json, os, subprocess, time, urllib.request
out = {}
def show(unit):
    text = subprocess.run(["systemctl", "show", unit, "-p", "MainPID,ActiveState,SubState,"
                           "Result,ExecMainStatus,NRestarts"], capture_output=True,
                          text=True).stdout
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
def status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
deadline = time.monotonic() + 90
body = None
while time.monotonic() < deadline:
    state = show("pymemcg-export.service")
    try:
        with urllib.request.urlopen("http://127.0.0.1:9756/metrics", timeout=10) as r:
            body = r.read().decode()
        break
    except OSError as e:
        out["last_error"] = str(e)
        time.sleep(0.5)
out["metrics"] = body
out["service"] = show("pymemcg-export.service")
pid = out["service"]["MainPID"]
if pid != "0":
    out["status"] = status(pid)
    with open(f"/proc/{pid}/mountinfo") as f:
        out["mountinfo"] = f.read()
# the unit under ProtectKernelTunables=yes: wait until it gave up
while time.monotonic() < deadline:
    tunables = show("pymemcg-export-tunables.service")
    if tunables["ActiveState"] in ("failed", "inactive") and tunables["Result"] != "success" \
            or tunables["ActiveState"] == "active":
        break
    time.sleep(0.5)
out["tunables"] = show("pymemcg-export-tunables.service")
try:
    with urllib.request.urlopen("http://127.0.0.1:9757/metrics", timeout=5) as r:
        out["tunables_metrics"] = r.read().decode()
except OSError as e:
    out["tunables_metrics"] = None
for unit in ("pymemcg-export", "pymemcg-export-tunables"):
    out[unit + " journal"] = subprocess.run(
        ["journalctl", "--no-pager", "-o", "cat", "-u", unit + ".service"],
        capture_output=True, text=True).stdout[-6000:]
with open("/srv/pymemcg-test/result.json", "w") as f:
    json.dump(out, f)
'''

PROBE_UNIT = f"""[Unit]
Description=pymemcg test probe
After=pymemcg-export.service pymemcg-export-tunables.service
Wants=pymemcg-export.service pymemcg-export-tunables.service

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 {SHARE}/probe.py
ExecStopPost=/usr/bin/systemctl poweroff --no-block
"""


def debian_root() -> str:
    """The cached root, unpacked once beside its tarball; booted read-only
    with a tmpfs over it (--volatile=overlay), so it stays as built."""
    tool("mmdebstrap")
    out = subprocess.run([os.path.join(CHECKOUT, "tools", "debian-root"), "nspawn",
                          *ROOT_PACKAGES], capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PYMEMCG_CI_CACHE": CACHE})
    assert out.returncode == 0, f"tools/debian-root failed:\n{out.stderr[-3000:]}"
    tarball = out.stdout.strip()
    root = tarball[:-len(".tar")] + ".d"
    if not os.path.exists(os.path.join(root, ".unpacked")):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        subprocess.run(["tar", "-xpf", tarball, "-C", root], check=True, timeout=300)
        open(os.path.join(root, ".unpacked"), "w").close()
        # an older root's unpacked copy
        for other in os.listdir(os.path.dirname(root)):
            path = os.path.join(os.path.dirname(root), other)
            if other.startswith("nspawn-") and other.endswith(".d") and path != root:
                shutil.rmtree(path)
    return root


def venv_with(wheel: str, where: str) -> str:
    """A venv of Debian's python3 (the root's is the same release) with the
    wheel and its pinned dependencies, at a path the container binds as is."""
    deps = subprocess.run([os.path.join(CHECKOUT, "packaging", "container",
                                        "dependency-wheels")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable,
                               "PYMEMCG_CI_CACHE": CACHE})
    assert deps.returncode == 0, deps.stderr
    deps_dir = deps.stdout.strip()
    venv = os.path.join(where, "venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True, timeout=300)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--no-index",
                    "--disable-pip-version-check", "--find-links", deps_dir,
                    "--require-hashes", "-r", os.path.join(deps_dir, "requirements.txt")],
                   check=True, timeout=300)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--no-index",
                    "--disable-pip-version-check", "--no-deps", wheel], check=True, timeout=300)
    return venv


def units(venv: str, share: str) -> list:
    """(host file, path in the container): the shipped unit with ExecStart
    pointing at the venv, the same under ProtectKernelTunables=yes on port
    9757, and the probe."""
    text = open(UNIT).read()
    shipped = re.sub(r"^(#?ExecStart=)/usr/local/bin/pymemcg", rf"\g<1>{venv}/bin/pymemcg",
                     text, flags=re.M)
    assert shipped.count(f"{venv}/bin/pymemcg") >= 1
    tunables = shipped.replace("ProtectKernelTunables=no", "ProtectKernelTunables=yes") \
        .replace("127.0.0.1:9756", "127.0.0.1:9757")
    assert "ProtectKernelTunables=yes" in tunables
    out = []
    for name, body in (("pymemcg-export.service", shipped),
                       ("pymemcg-export-tunables.service", tunables),
                       ("pymemcg-probe.service", PROBE_UNIT)):
        path = os.path.join(share, name)
        with open(path, "w") as f:
            f.write(body)
        out.append((path, f"/etc/systemd/system/{name}"))
    with open(os.path.join(share, "probe.py"), "w") as f:
        f.write(PROBE)
    return out


@pytest.fixture(scope="module")
def booted(bpf_ok, wheel, tmp_path_factory) -> Iterator[dict]:
    """Boot the root once; the probe's report."""
    nspawn = tool("systemd-nspawn")
    root = debian_root()
    share = str(tmp_path_factory.mktemp("nspawn"))
    # the venv is bound in at its own path (its scripts name it), which must
    # not be under /tmp: the unit's PrivateTmp hides that
    work = os.path.join(CACHE, "run", f"nspawn-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(work)
    try:
        yield boot(nspawn, root, share, venv_with(wheel, work))
    finally:
        shutil.rmtree(work)


def boot(nspawn: str, root: str, share: str, venv: str) -> dict:
    binds = [f"--bind-ro={host}:{inside}" for host, inside in units(venv, share)]
    hierarchies = [m.mountpoint for m in cgroup_mounts()
                   if m.version == 2 or "memory" in m.options or "name=systemd" in m.options]
    scratch = ScratchCgroup("nspawn")
    log = open(os.path.join(share, "console.log"), "w+")
    cmd = [nspawn, "--quiet", "--boot", f"--directory={root}", "--volatile=overlay",
           "--private-network", "--register=no", "--keep-unit", "--system-call-filter=bpf",
           f"--bind-ro={venv}", f"--bind={share}:{SHARE}", *binds,
           "--", "systemd.wants=pymemcg-probe.service", "systemd.show_status=no"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: scratch.enter(hierarchies))
    try:
        proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        proc.terminate()        # nspawn shuts the container down on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        scratch.remove()
    log.seek(0)
    console = log.read()
    result = os.path.join(share, "result.json")
    assert os.path.exists(result), f"the probe reported nothing; console:\n{console[-4000:]}"
    with open(result) as f:
        report = json.load(f)
    report["console"] = console
    return report


def test_the_unit_serves_through_bpf_under_systemd(booted):
    service, body = booted["service"], booted["metrics"]
    assert service["ActiveState"] == "active" and service["SubState"] == "running", \
        (service, booted["pymemcg-export journal"])
    assert body is not None, booted
    assert re.search(r'^pymemcg_info\{[^}]*backend="bpf"', body, re.M), body[:2000]
    assert re.search(r"^pymemcg_scrape_error 0(\.0)?$", body, re.M)
    assert "memcg_usage{" in body


def caps(status: dict, field: str) -> int:
    return int(status[field], 16)


def test_the_running_service_is_hardened_as_the_unit_says(booted):
    status = booted["status"]
    uids = [int(u) for u in status["Uid"].split()]
    assert all(u != 0 for u in uids), status["Uid"]                    # DynamicUser
    for field in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
        assert caps(status, field) == 1 << CAP_SYS_ADMIN, (field, status[field])
    assert caps(status, "CapInh") in (0, 1 << CAP_SYS_ADMIN), status["CapInh"]
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2" and int(status["Seccomp_filters"]) >= 1, status
    mounts = {}
    for line in booted["mountinfo"].splitlines():
        fields = line.split(" - ")[0].split()
        mounts[fields[4]] = fields[5].split(",")
    for path in ("/", "/proc/sys", "/sys", "/sys/fs/cgroup"):
        assert "ro" in mounts.get(path, []), (path, mounts.get(path))
    # InaccessiblePaths: an inaccessible node is mounted over it (where the
    # kernel has one: CONFIG_PROC_KCORE)
    if os.path.exists("/proc/kcore"):
        assert "/proc/kcore" in mounts, sorted(mounts)


def test_without_kallsyms_the_unit_serves_through_bpf(booted):
    """ProtectKernelTunables=yes hides /proc/kallsyms, which no program of
    pymemcg's needs (the kernel's item lists are looked up by name in the
    kernel): the exporter serves through BPF all the same."""
    t, body = booted["tunables"], booted["tunables_metrics"]
    assert t["ActiveState"] == "active", (t, booted["pymemcg-export-tunables journal"])
    assert body is not None, booted
    assert re.search(r'^pymemcg_info\{[^}]*backend="bpf"', body, re.M), body[:2000]
