"""The exporter's container image (packaging/container/build-image: a
Debian root and the release wheel, no image registry) run under podman with
exactly the settings of the DaemonSet for this host's cgroup version
(packaging/kubernetes/), its memory limit included, in the host's cgroup
namespace and in one of its own:

- it serves through BPF, scraped from the host, with the host's cgroup
  paths as ids and the values the kernel's own files give;
- its peak memory (the verifier's kernel memory is charged to it while the
  programs load) stays under the manifest's limit with a margin;
- nothing inside can write the host's cgroup tree;
- `pymemcg doctor` inside says the right thing: the cgroup it is in (or
  that it cannot tell), and what refuses BPF when SYS_ADMIN is missing.

The Debian root, its imported image and the dependencies' wheels are cached
under PYMEMCG_CI_CACHE (default /var/cache/pymemcg-ci), keyed on their
inputs, and so is the wheel (build/container/, keyed on the sources it is
built from). PYMEMCG_WHEEL names a wheel to use instead. podman runs with
runc, explicit ulimits and storage of its own under that cache (see
podman_env). Needs root; where podman, runc or mmdebstrap is missing the
tests skip, or fail under PYMEMCG_REQUIRE_BPF=1 (CI installs them).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from pymemcg.cgroupfs import memory_mount  # noqa: E402

from scratch_cgroups import ScratchCgroup  # noqa: E402
from test_kubernetes import container  # noqa: E402
from test_kubernetes import load as load_manifest  # noqa: E402
from test_prometheus import LIMIT, quiet, rel  # noqa: E402,F401
from test_systemd import tool  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
CACHE = os.environ.get("PYMEMCG_CI_CACHE", "/var/cache/pymemcg-ci")
BUILD_IMAGE = os.path.join(CHECKOUT, "packaging", "container", "build-image")
#: the margin the manifest's memory limit must keep over the measured peak
MEMORY_MARGIN = 1.25
#: the sources a wheel is built from: a new digest, a new wheel
WHEEL_INPUTS = ("pymemcg", "csrc", "bpf_src", "setup.py", "pyproject.toml", "Makefile",
                "packaging/wheels.mk", "MANIFEST.in")


# --- podman, the wheel, the image ---

@pytest.fixture(scope="session")
def podman_env() -> Dict[str, str]:
    """podman's environment: runc (crun 1.8 refuses a hybrid cgroup host),
    ulimits given outright (without CAP_SYS_RESOURCE, as in some CI sandboxes,
    raising the defaults fails), the cgroupfs manager (no systemd as PID 1),
    and storage of its own under the cache."""
    tool("podman"), tool("runc"), tool("mmdebstrap")
    conf_dir = os.path.join(CACHE, "podman")
    os.makedirs(conf_dir, exist_ok=True)
    containers_conf = os.path.join(conf_dir, "containers.conf")
    storage_conf = os.path.join(conf_dir, "storage.conf")
    with open(containers_conf, "w") as f:
        f.write('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n')
    with open(storage_conf, "w") as f:
        f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{conf_dir}/storage"\n'
                f'runroot = "/run/pymemcg-ci/podman"\n')
    return {**os.environ, "CONTAINERS_CONF": containers_conf,
            "CONTAINERS_STORAGE_CONF": storage_conf, "PYMEMCG_CI_CACHE": CACHE}


def podman(env: Dict[str, str], *args: str, check: bool = True, timeout: float = 120,
           ) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
    return out


def sources_digest() -> str:
    h = hashlib.sha256()
    for top in WHEEL_INPUTS:
        path = os.path.join(CHECKOUT, top)
        files = [path] if os.path.isfile(path) else sorted(
            p for p in glob.glob(os.path.join(path, "**", "*"), recursive=True)
            if os.path.isfile(p) and "__pycache__" not in p and not p.endswith(".so"))
        for p in files:
            h.update(os.path.relpath(p, CHECKOUT).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def wheel() -> str:
    """The release wheel of this host's architecture (make wheel), built once
    per state of its sources, or PYMEMCG_WHEEL."""
    if os.environ.get("PYMEMCG_WHEEL"):
        return os.environ["PYMEMCG_WHEEL"]
    dist = os.path.join(CHECKOUT, "build", "container", f"wheel-{sources_digest()}")
    found = glob.glob(os.path.join(dist, "pymemcg-*.whl"))
    if not found:
        out = subprocess.run(["make", "-s", "-C", CHECKOUT, "wheel", f"DIST={dist}"],
                             capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, f"make wheel failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
        found = glob.glob(os.path.join(dist, "pymemcg-*.whl"))
        for old in glob.glob(os.path.join(CHECKOUT, "build", "container", "wheel-*")):
            if old != dist:
                subprocess.run(["rm", "-rf", "--", old], check=True)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="session")
def image(podman_env, wheel) -> str:
    """The image build-image makes of the wheel: its tag."""
    out = subprocess.run([BUILD_IMAGE, wheel], env=podman_env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, f"build-image failed:\n{out.stderr[-4000:]}"
    return out.stdout.strip().splitlines()[-1]


# --- the DaemonSet as podman options ---

def quantity(text: str) -> int:
    """A Kubernetes memory quantity in bytes (Ki/Mi/Gi or a plain number)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(text))
    assert m, f"memory quantity {text!r} is not one this test reads"
    return int(m.group(1)) << {None: 0, "Ki": 10, "Mi": 20, "Gi": 30}[m.group(2)]


def podman_options(manifest: dict) -> List[str]:
    """podman run options for the DaemonSet's one container, setting by setting.
    A setting it does not know fails the test: nothing is left out silently."""
    spec = manifest["spec"]["template"]["spec"]
    c = container(manifest)
    known_spec = {"containers", "volumes", "hostNetwork", "hostPID", "hostIPC"}
    assert set(spec) <= known_spec, set(spec) - known_spec
    assert not spec.get("hostPID") and not spec.get("hostIPC") and not spec.get("hostNetwork")
    known = {"name", "image", "args", "ports", "securityContext", "volumeMounts", "resources",
             "readinessProbe"}
    assert set(c) <= known, set(c) - known
    # podman adds tmpfs mounts to a read-only container that Kubernetes does not
    opts = ["--read-only-tmpfs=false", "--pull=never"]
    sc = dict(c["securityContext"])
    if sc.pop("privileged", False):
        opts.append("--privileged")
    if sc.pop("allowPrivilegeEscalation", True) is False:
        opts += ["--security-opt", "no-new-privileges"]
    if sc.pop("readOnlyRootFilesystem", False):
        opts.append("--read-only")
    if "runAsUser" in sc:
        opts += ["--user", str(sc.pop("runAsUser"))]
    caps = sc.pop("capabilities", {})
    for cap in caps.get("drop", []):
        opts += ["--cap-drop", cap]
    for cap in caps.get("add", []):
        opts += ["--cap-add", cap]
    seccomp = sc.pop("seccompProfile", {"type": "RuntimeDefault"})
    assert seccomp["type"] in ("RuntimeDefault", "Unconfined"), seccomp
    if seccomp["type"] == "Unconfined":
        opts += ["--security-opt", "seccomp=unconfined"]
    assert not sc, f"securityContext settings this test cannot give podman: {sc}"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        unknown = set(mount) - {"name", "mountPath", "readOnly"}
        # podman 4.3 has no recursive read-only bind: a manifest that relies on
        # recursiveReadOnly cannot be run as it is here
        assert not unknown, f"volumeMount settings this test cannot give podman: {unknown}"
        host = volumes[mount["name"]]["hostPath"]["path"]
        opts += ["-v", f"{host}:{mount['mountPath']}:{'ro' if mount.get('readOnly') else 'rw'}"]
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        # the memory+swap limit too: a limit that swap could stretch proves nothing
        opts += ["--memory", str(quantity(limits["memory"])),
                 "--memory-swap", str(quantity(limits["memory"]))]
    return opts


class Running:
    def __init__(self, env: Dict[str, str], name: str, url: str, cgroup: str) -> None:
        self.env, self.name, self.url = env, name, url
        #: the container's memory cgroup on the host
        self.cgroup = cgroup

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=20) as r:
            return r.read().decode()

    def logs(self) -> str:
        out = podman(self.env, "logs", self.name, check=False)
        return out.stdout + out.stderr

    def exec_python(self, code: str) -> str:
        out = podman(self.env, "exec", self.name, "/opt/pymemcg/bin/python", "-c", code)
        return out.stdout


def container_cgroup(env: Dict[str, str], name: str, scratch: ScratchCgroup) -> str:
    cid = podman(env, "inspect", "--format", "{{.Id}}", name).stdout.strip()
    mount = memory_mount()
    found = glob.glob(os.path.join(scratch.path(mount.mountpoint), f"*{cid}*"))
    assert len(found) == 1, (cid, os.listdir(scratch.path(mount.mountpoint)))
    return found[0]


@contextmanager
def daemonset_container(env: Dict[str, str], manifest: dict, cgroupns: str, tag: str,
                        args: Optional[List[str]] = None) -> Iterator[Running]:
    """The DaemonSet's container started by podman (detached, its port
    published on loopback), in a scratch cgroup; removed on the way out."""
    c = container(manifest)
    assert c["image"] == tag, f"the manifest runs {c['image']}, the build made {tag}"
    port = c["ports"][0]["containerPort"]
    scratch = ScratchCgroup("podman")
    name = f"pymemcg-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        podman(env, "run", "--detach", "--name", name, "--cgroupns", cgroupns,
               "--cgroup-parent", scratch.relpath, "--publish", f"127.0.0.1::{port}",
               *podman_options(manifest), tag, *(c["args"] if args is None else args))
        host_port = podman(env, "port", name, f"{port}/tcp").stdout.strip().rsplit(":", 1)[1]
        yield Running(env, name, f"http://127.0.0.1:{host_port}/metrics",
                      container_cgroup(env, name, scratch))
    finally:
        podman(env, "rm", "--force", "--time", "5", name, check=False)
        scratch.remove()


def wait_serving(running: Running, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return running.scrape()
        except OSError as e:
            state = podman(running.env, "inspect", "--format", "{{.State.Status}} "
                           "{{.State.ExitCode}} oom={{.State.OOMKilled}}", running.name).stdout
            if not state.startswith("running") or time.monotonic() > deadline:
                raise AssertionError(f"the container does not serve ({e}): {state}\n"
                                     f"{running.logs()}") from None
            time.sleep(0.5)


def samples(text: str) -> Dict[tuple, float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(text: str, name: str, **labels: str) -> Optional[float]:
    want = set(labels.items())
    got = [v for (n, ls), v in samples(text).items() if n == name and want <= ls]
    assert len(got) <= 1, (name, labels, got)
    return got[0] if got else None


def kernel_files(path: str) -> Dict[str, int]:
    """What the kernel's own files say of a v1 cgroup (hierarchical, as served)."""
    def read(name: str) -> str:
        with open(os.path.join(path, name)) as f:
            return f.read()
    stat = dict(line.split() for line in read("memory.stat").splitlines())
    return {"usage": int(read("memory.usage_in_bytes")),
            "limit": int(read("memory.limit_in_bytes")),
            "file": int(stat["total_cache"])}


@pytest.fixture(scope="module")
def manifest(cgroup_version) -> dict:
    return load_manifest(cgroup_version)


@pytest.fixture(autouse=True)
def _v1_only(cgroup_version):
    # the podman tests read the kernel's v1 files; the v2 layout is checked
    # for its schema only (tests/test_kubernetes.py): this host is cgroup v1
    if cgroup_version != 1:
        pytest.skip("the container tests compare with cgroup v1 files")


# --- the tests ---

@pytest.mark.parametrize("cgroupns", ["host", "private"])
def test_the_daemonset_serves_the_hosts_tree_through_bpf(bpf_ok, podman_env, image, manifest,
                                                         quiet, cgroupns):
    parent, child = quiet
    limit = quantity(container(manifest)["resources"]["limits"]["memory"])
    with daemonset_container(podman_env, manifest, cgroupns, image) as running:
        body = wait_serving(running)
        assert value(body, "pymemcg_info", backend="bpf") == 1.0, body[:2000]
        assert value(body, "pymemcg_scrape_error") == 0.0
        cid = rel(child)
        # ids are the host's paths; the quiet child's values are the kernel's own
        for attempt in range(30):
            direct = kernel_files(child)
            body = running.scrape()
            served = {"usage": value(body, "memcg_usage", cgroup=cid),
                      "limit": value(body, "memcg_limit", cgroup=cid),
                      "file": value(body, "container_memory_cache", id=cid)}
            if served == {k: float(v) for k, v in direct.items()}:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"served {served} != the kernel's files {direct}")
        assert direct["limit"] == LIMIT and direct["file"] > 0
        assert value(body, "container_memory_usage_bytes", id=rel(parent)) is not None
        # the verifier's memory is charged here while the programs load
        with open(os.path.join(running.cgroup, "memory.max_usage_in_bytes")) as f:
            peak = int(f.read())
        with open(os.path.join(running.cgroup, "memory.kmem.max_usage_in_bytes")) as f:
            kernel_peak = int(f.read())
        with open(os.path.join(running.cgroup, "memory.failcnt")) as f:
            failcnt = int(f.read())
        with open(os.path.join(running.cgroup, "memory.limit_in_bytes")) as f:
            assert int(f.read()) == limit
        print(f"cgroupns {cgroupns}: peak {peak / 2**20:.1f} MiB (kernel memory "
              f"{kernel_peak / 2**20:.1f} MiB) of the manifest's {limit / 2**20:.0f} MiB limit, "
              f"now {kernel_files(running.cgroup)['usage'] / 2**20:.1f} MiB, "
              f"limit reached {failcnt} times")
        assert peak * MEMORY_MARGIN <= limit, (
            f"peak {peak} bytes: the manifest's limit {limit} leaves less than "
            f"{MEMORY_MARGIN}x; raise it (and say so in docs/kubernetes.md)")


WRITE_HOST_TREE = """
import errno, json, os, sys
child = sys.argv[1]
out = {}
for what, act in (("write", lambda: open(os.path.join(child, "memory.soft_limit_in_bytes"), "w").write("4096")),
                  ("mkdir", lambda: os.mkdir(os.path.join(child, "from-inside")))):
    try:
        act()
        out[what] = "succeeded"
    except OSError as e:
        out[what] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


@pytest.mark.parametrize("cgroupns", ["host", "private"])
def test_nothing_inside_can_write_the_hosts_cgroup_tree(bpf_ok, podman_env, image, manifest,
                                                        cgroups, cgroupns):
    child = cgroups.make("target")
    with open(os.path.join(child, "memory.soft_limit_in_bytes")) as f:
        before = f.read()
    inside = os.path.join(memory_mount().mountpoint, rel(child).lstrip("/"))
    with daemonset_container(podman_env, manifest, cgroupns, image) as running:
        wait_serving(running)
        result = json.loads(running.exec_python(WRITE_HOST_TREE.replace("sys.argv[1]",
                                                                         repr(inside))))
    assert result == {"write": "EROFS", "mkdir": "EROFS"}, result
    with open(os.path.join(child, "memory.soft_limit_in_bytes")) as f:
        assert f.read() == before
    assert not os.path.exists(os.path.join(child, "from-inside"))


def doctor_in(env: Dict[str, str], manifest: dict, cgroupns: str, tag: str) -> tuple:
    """`pymemcg doctor --format json` in the DaemonSet's container:
    (exit status, report, the container's memory cgroup on the host)."""
    with daemonset_container(env, manifest, cgroupns, tag,
                             args=["doctor", "--format", "json"]) as running:
        status = podman(env, "wait", running.name, timeout=180).stdout.strip()
        report = podman(env, "logs", running.name).stdout
        return int(status), json.loads(report), running.cgroup


def check(report: dict, name: str) -> dict:
    (c,) = [c for c in report["checks"] if c["name"] == name]
    return c


@pytest.mark.parametrize("cgroupns", ["host", "private"])
def test_doctor_in_the_daemonset_names_its_own_cgroup(bpf_ok, podman_env, image, manifest,
                                                      cgroupns):
    status, report, cgroup = doctor_in(podman_env, manifest, cgroupns, image)
    assert status == 0 and report["backend"] == "bpf", report
    cg = check(report, "cgroup")
    # the container sees the host's hierarchy where the host does: the same path
    assert cg["data"]["own"] == cgroup, cg
    if cgroupns == "private":
        assert cg["data"]["mount_root"].startswith("/.."), cg
        assert "found by this process's id" in cg["detail"], cg
    for name in ("privileges", "seccomp", "kallsyms"):
        assert check(report, name)["status"] == "ok", check(report, name)


def test_doctor_without_sys_admin_names_seccomp_and_the_capability(bpf_ok, podman_env, image,
                                                                    manifest):
    """CAP_BPF + CAP_PERFMON instead of SYS_ADMIN: the runtime's default
    seccomp profile refuses bpf(2) (it allows it with CAP_SYS_ADMIN only),
    and libbpf would need CAP_SYS_ADMIN besides. The remedy says both."""
    altered = json.loads(json.dumps(manifest))
    container(altered)["securityContext"]["capabilities"]["add"] = ["BPF", "PERFMON"]
    status, report, _ = doctor_in(podman_env, altered, "private", image)
    assert status == 1 and report["backend"] == "text", report
    seccomp, privileges = check(report, "seccomp"), check(report, "privileges")
    assert seccomp["status"] == "fail" and seccomp["data"]["bpf_call"] == "EPERM", seccomp
    assert "seccomp" in seccomp["detail"] and "SYS_ADMIN" in seccomp["remedy"], seccomp
    assert privileges["status"] == "fail" and "CAP_SYS_ADMIN" in privileges["remedy"], privileges
    assert "AmbientCapabilities=CAP_BPF" not in json.dumps(report), report
