"""Who a cgroup is, from its path: Kubernetes pod and container, runtime, systemd unit.

    identify("/kubepods/burstable/pod0f3e9c1a-1b2c-4d5e-8f90-123456789abc/<64 hex>")
    -> CgroupIdentity(pod_uid="0f3e9c1a-1b2c-4d5e-8f90-123456789abc",
                      container_id="<64 hex>", qos="burstable", runtime=None, unit=None)

Pure functions of the path (relative to the hierarchy root, as Record.path
gives it); nothing is read from the host, no runtime is asked. A name is
recognised only in the exact form the program that makes it writes; one that
merely looks close (a short id, a uid of the wrong shape, a QoS class
kubelet does not make) is not, and then its fields are None. The forms, and
where they come from:

kubelet (pkg/kubelet/cm): pods live under the node-allocatable cgroup
"kubepods" (node_container_manager_linux.go), burstable and best-effort pods
under a QoS cgroup "burstable" / "besteffort", guaranteed pods directly under
kubepods (qos_container_manager_linux.go); a pod's cgroup is "pod" + its UID
(GetPodCgroupNameSuffix). The cgroupfs driver uses those names as they are:

    kubepods/burstable/pod<uid>        kubepods/pod<uid>      (guaranteed)

The systemd driver turns the name list into nested slices, each named by the
list so far joined with "-", after replacing "-" with "_" in every component
(CgroupName.ToSystemd, escapeSystemdCgroupName; systemd's ExpandSlice); kubelet
forbids "_" in components, so the mapping reverses and the UID is reported
with its dashes:

    kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice
    kubepods.slice/kubepods-pod<uid_>.slice                      (guaranteed)

A kubelet --cgroup-root adds components in front: any path prefix for
cgroupfs ("/x/kubepods/..."), and for systemd a prefix of every slice name,
checked against the full expansion ("x.slice/x-kubepods.slice/
x-kubepods-burstable.slice/...").

A pod UID is what the API server gives (a UUID from k8s.io/apimachinery's
uuid.NewUUID: 8-4-4-4-12 lowercase hex) or, for a static pod read from a
file or URL, kubelet's md5 of the manifest in lowercase hex, 32 digits
(pkg/kubelet/config/common.go applyDefaults; the mirror pod in the API has
another UID, the manifest hash is its kubernetes.io/config.hash annotation).
A static pod whose manifest sets its own uid of another form is not
recognised.

Containers inside a pod are named by the runtime (cAdvisor reads them with
the regexp ([a-z0-9]{64}) in its container/{docker,containerd,crio} handlers,
lib/container/ in newer trees; the ids are
64 lowercase hex digits from each runtime's id generator, and a match here is
anchored at both ends):

    cgroupfs driver  <id>                     containerd (CRI's getCgroupsPath
                                              joins parent and id) or docker: the
                                              runtime is not known, so None
                     crio-<id>                CRI-O (cgmgr containerCgroupPath)
                     crio-conmon-<id>         CRI-O's conmon for that container
    systemd driver   cri-containerd-<id>.scope   containerd ("slice:cri-containerd:id";
                                              runc names the scope prefix-id.scope)
                     crio-<id>.scope          CRI-O
                     crio-conmon-<id>.scope   CRI-O's conmon (MoveConmonToCgroup)
                     docker-<id>.scope        docker (cri-dockerd)
                     crio-<id>  (no .scope)   CRI-O's pod sandbox cgroup
                                              (CreateSandboxCgroup)

The systemd forms are recognised under any slice (e.g. a rootless kubelet's
user.slice/.../cri-containerd-<id>.scope), with the pod filled in when that
slice is a pod's. Plain docker: "docker/<id>" (cgroupfs driver, parent
"docker") and "<slice>/docker-<id>.scope" (systemd driver, system.slice by
default).

A systemd unit: a ".service", ".scope" or ".mount" whose parent is a slice
(or the root, "-.slice": "/init.scope"), when no container runtime claimed the
name; the name must be one systemd accepts (src/basic/unit-name.c: letters,
digits, ":-_.\\", one "@" before an instance, at most 255 characters).

What cAdvisor does not export (cadvisor_skips): every cgroup whose name ends
in ".mount" (its systemd factory handles and ignores them,
lib/container/systemd/factory.go) and CRI-O's sandbox cgroup under the systemd
driver ("crio-<id>" without ".scope": its CRI-O factory ignores those,
lib/container/crio/factory.go). A conmon cgroup is not skipped by cAdvisor: its
CRI-O factory declines it and the raw factory exports it under its path
with no container labels; `conmon` marks it so that a caller can tell.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

GUARANTEED, BURSTABLE, BESTEFFORT = "guaranteed", "burstable", "besteffort"
QOS_CLASSES: Tuple[str, ...] = (GUARANTEED, BURSTABLE, BESTEFFORT)
CONTAINERD, CRIO, DOCKER = "containerd", "crio", "docker"
RUNTIMES: Tuple[str, ...] = (CONTAINERD, CRIO, DOCKER)

#: kubelet's node-allocatable cgroup and the QoS cgroups under it
KUBEPODS = "kubepods"
_QOS_CGROUPS = (BURSTABLE, BESTEFFORT)

_HEX = "[0-9a-f]"
_ID = f"{_HEX}{{64}}"
# a UUID with "-" (cgroupfs) or "_" (systemd: every "-" escaped), or a static pod's md5
_UID_CGROUPFS = re.compile(f"{_HEX}{{8}}(?:-{_HEX}{{4}}){{3}}-{_HEX}{{12}}|{_HEX}{{32}}")
_UID_SYSTEMD = re.compile(f"{_HEX}{{8}}(?:_{_HEX}{{4}}){{3}}_{_HEX}{{12}}|{_HEX}{{32}}")

# (name, runtime, is CRI-O's conmon): a scope runc's systemd driver made for a runtime
_SCOPES = [(re.compile(f"cri-containerd-({_ID})\\.scope"), CONTAINERD, False),
           (re.compile(f"crio-conmon-({_ID})\\.scope"), CRIO, True),
           (re.compile(f"crio-({_ID})\\.scope"), CRIO, False),
           (re.compile(f"docker-({_ID})\\.scope"), DOCKER, False)]
_CRIO_CGROUPFS = re.compile(f"crio-({_ID})")
_CRIO_CONMON_CGROUPFS = re.compile(f"crio-conmon-({_ID})")
_BARE_ID = re.compile(_ID)

_UNIT_CHARS = r"[A-Za-z0-9:_.\\-]"
_UNIT = re.compile(f"{_UNIT_CHARS}+(?:@{_UNIT_CHARS}+)?\\.(?:service|scope|mount)")
_UNIT_NAME_MAX = 255


@dataclass(frozen=True)
class CgroupIdentity:
    """Who a cgroup is; None where its path does not say.

    pod_uid: the Kubernetes pod's UID, with dashes, for the pod's cgroup and
    the cgroups of its containers. container_id: the 64-hex id the runtime
    gave the container. qos: "guaranteed", "burstable" or "besteffort" (also
    for kubelet's QoS cgroups themselves). runtime: "containerd", "crio" or
    "docker", where the name says which. unit: the systemd unit (a service,
    scope or mount) for a cgroup no runtime claimed. conmon: CRI-O's conmon
    cgroup (no container_id: it is not the container). cadvisor_skips:
    cAdvisor exports nothing for this cgroup.
    """

    pod_uid: Optional[str] = None
    container_id: Optional[str] = None
    qos: Optional[str] = None
    runtime: Optional[str] = None
    unit: Optional[str] = None
    conmon: bool = False
    cadvisor_skips: bool = False


UNKNOWN = CgroupIdentity()


def identify(path: Optional[str]) -> CgroupIdentity:
    """The identity of the cgroup at `path` (relative to the hierarchy root,
    "/kubepods/..." or "kubepods/..."); UNKNOWN for None or a path that names
    nothing recognised. Never raises for a str."""
    if not isinstance(path, str):
        return UNKNOWN
    return _identify(path)


#: (pod uid or None for a QoS cgroup, qos, kubelet's driver: "cgroupfs" | "systemd")
_Pod = Tuple[Optional[str], str, str]


@functools.lru_cache(maxsize=1 << 16)
def _identify(path: str) -> CgroupIdentity:
    # cached: an exporter asks again for the same paths on every scrape
    parts = [p for p in path.split("/") if p]
    if not parts:
        return UNKNOWN
    name, up = parts[-1], parts[:-1]
    pod = _pod(parts)
    if pod is not None:                          # a pod's own cgroup, or a QoS cgroup
        return CgroupIdentity(pod_uid=pod[0], qos=pod[1])
    outer = _pod(up)
    uid, qos, driver = outer if outer is not None and outer[0] is not None else (None, None, None)
    parent_slice = bool(up) and up[-1].endswith(".slice")
    # systemd's names: under a slice, or at the root (systemd's "-.slice")
    systemd_named = parent_slice or not up

    if systemd_named:                            # runc's systemd driver: <prefix>-<id>.scope
        for pattern, runtime, conmon in _SCOPES:
            m = pattern.fullmatch(name)
            if m:
                return CgroupIdentity(pod_uid=uid, container_id=None if conmon else m.group(1),
                                      qos=qos, runtime=runtime, conmon=conmon)
    m = _CRIO_CGROUPFS.fullmatch(name)
    if m and parent_slice:
        # CRI-O's sandbox cgroup, made through cgroupfs under the systemd pod slice
        return CgroupIdentity(pod_uid=uid, qos=qos, runtime=CRIO, cadvisor_skips=True)
    if m:
        return CgroupIdentity(pod_uid=uid, container_id=m.group(1), qos=qos, runtime=CRIO)
    if not parent_slice and _CRIO_CONMON_CGROUPFS.fullmatch(name):
        return CgroupIdentity(pod_uid=uid, qos=qos, runtime=CRIO, conmon=True)
    if _BARE_ID.fullmatch(name):
        if driver == "cgroupfs":                 # containerd's or docker's: both use the bare id
            return CgroupIdentity(pod_uid=uid, container_id=name, qos=qos)
        if up[-1:] == ["docker"]:
            return CgroupIdentity(container_id=name, runtime=DOCKER)

    skips = name.endswith(".mount")              # cAdvisor: strings.HasSuffix(name, ".mount")
    unit = name if systemd_named and len(name) <= _UNIT_NAME_MAX and _UNIT.fullmatch(name) \
        else None
    if unit is None and not skips:
        return UNKNOWN
    return CgroupIdentity(unit=unit, cadvisor_skips=skips)


def _pod(parts: List[str]) -> Optional[_Pod]:
    """parts[-1] as a pod's cgroup or a QoS cgroup, else None."""
    if not parts:
        return None
    return _pod_cgroupfs(parts) or _pod_systemd(parts)


def _pod_cgroupfs(parts: List[str]) -> Optional[_Pod]:
    name, up = parts[-1], parts[:-1]
    if name in _QOS_CGROUPS and up[-1:] == [KUBEPODS]:
        return None, name, "cgroupfs"
    if not name.startswith("pod") or not _UID_CGROUPFS.fullmatch(name, 3):
        return None
    if up[-1:] == [KUBEPODS]:
        return name[3:], GUARANTEED, "cgroupfs"
    if len(up) >= 2 and up[-1] in _QOS_CGROUPS and up[-2] == KUBEPODS:
        return name[3:], up[-1], "cgroupfs"
    return None


def _pod_systemd(parts: List[str]) -> Optional[_Pod]:
    # systemd's ExpandSlice: "a-b-c.slice" lives at a.slice/a-b.slice/a-b-c.slice,
    # so the last slice's name gives the whole chain: check it, then read it
    name = parts[-1]
    if not name.endswith(".slice"):
        return None
    words = name[:-len(".slice")].split("-")
    if "" in words or len(parts) < len(words) or \
            parts[-len(words):] != ["-".join(words[:i + 1]) + ".slice" for i in range(len(words))]:
        return None
    if KUBEPODS not in words:
        return None
    rest = words[len(words) - words[::-1].index(KUBEPODS):]
    if len(rest) == 1 and rest[0] in _QOS_CGROUPS:
        return None, rest[0], "systemd"
    if len(rest) == 1:
        qos, pod = GUARANTEED, rest[0]
    elif len(rest) == 2 and rest[0] in _QOS_CGROUPS:
        qos, pod = rest
    else:
        return None
    if not pod.startswith("pod") or not _UID_SYSTEMD.fullmatch(pod, 3):
        return None
    return pod[3:].replace("_", "-"), qos, "systemd"
