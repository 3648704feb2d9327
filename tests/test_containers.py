"""pymemcg.containers: who a cgroup is, from its path (pure functions, no kernel).

Paths of every form kubelet, the runtimes and systemd write are generated
and must come back as the fields they were made from; names that only look
close must not; and no path makes identify() raise.
"""

from __future__ import annotations

import re
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymemcg.containers import (BESTEFFORT, BURSTABLE, CONTAINERD, CRIO, DOCKER, GUARANTEED,
                                QOS_CLASSES, RUNTIMES, UNKNOWN, CgroupIdentity, identify)
from pymemcg.decode import Selection, Record

HEX = "0123456789abcdef"

container_ids = st.text(HEX, min_size=64, max_size=64)
# an API server's UUID, or a static pod's md5 of its manifest
pod_uids = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: u.hex))
# whatever lies above kubelet's or docker's cgroups (a --cgroup-root, a test's own cgroup)
prefixes = st.lists(st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True), max_size=4)
# the words of a systemd kubelet's --cgroup-root ("/kubelet" -> kubelet.slice/kubelet-kubepods.slice)
root_words = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), max_size=2)
qos_classes = st.sampled_from(QOS_CLASSES)
unit_names = st.from_regex(r"[a-z][a-z0-9_:.]{0,20}(@[a-z0-9]{1,8})?", fullmatch=True)


def join(*parts: str) -> str:
    return "/" + "/".join(parts)


def cgroupfs_pod(prefix: List[str], qos: str, uid: str) -> List[str]:
    """kubelet's cgroupfs driver: kubepods[/qos]/pod<uid>."""
    return [*prefix, "kubepods", *([] if qos == GUARANTEED else [qos]), f"pod{uid}"]


def systemd_slices(words: List[str]) -> List[str]:
    """systemd's ExpandSlice of the slice named by words joined with "-"."""
    return ["-".join(words[:i + 1]) + ".slice" for i in range(len(words))]


def systemd_pod(prefix: List[str], root: List[str], qos: str, uid: str) -> List[str]:
    """kubelet's systemd driver: every component escaped ("-" -> "_"), joined with "-"."""
    words = [*root, "kubepods", *([] if qos == GUARANTEED else [qos]),
             "pod" + uid.replace("-", "_")]
    return [*prefix, *systemd_slices(words)]


# --- every form round-trips ---

@given(prefixes, qos_classes, pod_uids)
def test_cgroupfs_pod(prefix, qos, uid):
    assert identify(join(*cgroupfs_pod(prefix, qos, uid))) == CgroupIdentity(pod_uid=uid, qos=qos)


@given(prefixes, root_words, qos_classes, pod_uids)
def test_systemd_pod_reports_the_uid_with_dashes(prefix, root, qos, uid):
    path = join(*systemd_pod(prefix, root, qos, uid))
    assert identify(path) == CgroupIdentity(pod_uid=uid, qos=qos)


@given(prefixes, root_words, st.sampled_from([BURSTABLE, BESTEFFORT]))
def test_qos_cgroups(prefix, root, qos):
    assert identify(join(*prefix, "kubepods", qos)) == CgroupIdentity(qos=qos)
    slices = systemd_slices([*root, "kubepods", qos])
    assert identify(join(*prefix, *slices)) == CgroupIdentity(qos=qos)


@given(prefixes, root_words)
def test_kubepods_itself_is_no_pod_and_no_qos(prefix, root):
    assert identify(join(*prefix, "kubepods")) == UNKNOWN
    assert identify(join(*prefix, *systemd_slices([*root, "kubepods"]))) == UNKNOWN


# (name of the container's cgroup, runtime, conmon, cAdvisor skips it) for each driver
CGROUPFS_CONTAINERS = [("{id}", None, False), ("crio-{id}", CRIO, False),
                       ("crio-conmon-{id}", CRIO, True)]
SYSTEMD_CONTAINERS = [("cri-containerd-{id}.scope", CONTAINERD, False),
                      ("crio-{id}.scope", CRIO, False), ("docker-{id}.scope", DOCKER, False),
                      ("crio-conmon-{id}.scope", CRIO, True)]


def expected_container(uid, qos, cid, runtime, conmon) -> CgroupIdentity:
    return CgroupIdentity(pod_uid=uid, container_id=None if conmon else cid, qos=qos,
                          runtime=runtime, conmon=conmon)


@given(prefixes, qos_classes, pod_uids, container_ids, st.sampled_from(CGROUPFS_CONTAINERS))
def test_cgroupfs_containers(prefix, qos, uid, cid, form):
    name, runtime, conmon = form
    path = join(*cgroupfs_pod(prefix, qos, uid), name.format(id=cid))
    assert identify(path) == expected_container(uid, qos, cid, runtime, conmon)


@given(prefixes, root_words, qos_classes, pod_uids, container_ids,
       st.sampled_from(SYSTEMD_CONTAINERS))
def test_systemd_containers(prefix, root, qos, uid, cid, form):
    name, runtime, conmon = form
    path = join(*systemd_pod(prefix, root, qos, uid), name.format(id=cid))
    assert identify(path) == expected_container(uid, qos, cid, runtime, conmon)


@given(prefixes, root_words, qos_classes, pod_uids, container_ids)
def test_crio_sandbox_under_systemd_is_what_cadvisor_skips(prefix, root, qos, uid, cid):
    path = join(*systemd_pod(prefix, root, qos, uid), f"crio-{cid}")
    assert identify(path) == CgroupIdentity(pod_uid=uid, qos=qos, runtime=CRIO,
                                            cadvisor_skips=True)


@given(prefixes, container_ids, st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True))
def test_plain_docker(prefix, cid, slice_word):
    docker = CgroupIdentity(container_id=cid, runtime=DOCKER)
    assert identify(join(*prefix, "docker", cid)) == docker
    assert identify(join(*prefix, f"{slice_word}.slice", f"docker-{cid}.scope")) == docker
    assert identify(f"system.slice/docker-{cid}.scope") == docker     # no leading "/"


@given(prefixes, container_ids, st.sampled_from(SYSTEMD_CONTAINERS[:3]))
def test_runtime_scopes_outside_a_pod(prefix, cid, form):
    # e.g. a rootless kubelet without QoS cgroups: user.slice/.../cri-containerd-<id>.scope
    name, runtime, _ = form
    path = join(*prefix, "user.slice", name.format(id=cid))
    assert identify(path) == CgroupIdentity(container_id=cid, runtime=runtime)


@given(prefixes, st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), unit_names,
       st.sampled_from(["service", "scope"]))
def test_systemd_units(prefix, slice_word, unit, kind):
    name = f"{unit}.{kind}"
    assert identify(join(*prefix, f"{slice_word}.slice", name)) == CgroupIdentity(unit=name)


@given(prefixes, st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), unit_names)
def test_mount_units_are_what_cadvisor_skips(prefix, slice_word, unit):
    name = f"{unit}.mount"
    assert identify(join(*prefix, f"{slice_word}.slice", name)) == \
        CgroupIdentity(unit=name, cadvisor_skips=True)
    # cAdvisor skips every name ending in .mount, a unit's or not
    assert identify(join(*prefix, "notaslice", name)) == CgroupIdentity(cadvisor_skips=True)


@pytest.mark.parametrize("path, expected", [
    ("/", UNKNOWN),
    ("", UNKNOWN),
    ("/system.slice/foo.service", CgroupIdentity(unit="foo.service")),
    ("/init.scope", CgroupIdentity(unit="init.scope")),
    ("/user.slice/user-1000.slice/session-3.scope", CgroupIdentity(unit="session-3.scope")),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
     CgroupIdentity(unit="foo.service")),
    ("/system.slice/getty@tty1.service", CgroupIdentity(unit="getty@tty1.service")),
    ("/system.slice/dev-hugepages.mount", CgroupIdentity(unit="dev-hugepages.mount",
                                                         cadvisor_skips=True)),
    ("/system.slice", UNKNOWN),                          # a slice is no service or scope
    ("/system.slice/foo.service/child.service", UNKNOWN),  # a service's child, not a slice's
])
def test_examples(path, expected):
    assert identify(path) == expected


def test_kubelet_examples():
    uid, cid = "0f3e9c1a-1b2c-4d5e-8f90-123456789abc", "ab" * 32
    assert identify(f"/kubepods/burstable/pod{uid}/{cid}") == \
        CgroupIdentity(pod_uid=uid, container_id=cid, qos=BURSTABLE)
    assert identify(f"/kubepods/pod{uid}/{cid}") == \
        CgroupIdentity(pod_uid=uid, container_id=cid, qos=GUARANTEED)
    us = uid.replace("-", "_")
    assert identify(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{us}.slice"
                    f"/cri-containerd-{cid}.scope") == \
        CgroupIdentity(pod_uid=uid, container_id=cid, qos=BESTEFFORT, runtime=CONTAINERD)
    # kind's node: kubelet --cgroup-root=/kubelet, systemd driver, inside a docker container
    node = "d" * 64
    assert identify(f"/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/"
                    f"kubelet-kubepods-pod{us}.slice/crio-{cid}.scope") == \
        CgroupIdentity(pod_uid=uid, container_id=cid, qos=GUARANTEED, runtime=CRIO)
    assert identify(f"/system.slice/docker-{node}.scope") == \
        CgroupIdentity(container_id=node, runtime=DOCKER)


# --- near misses are not recognised ---

def _mutations_of_hex(s: str) -> st.SearchStrategy:
    """s one digit short or long, with an upper-case or a non-hex digit."""
    i = st.integers(0, len(s) - 1)
    return st.one_of(st.just(s[:-1]), st.just(s + "0"),
                     i.map(lambda k: s[:k] + s[k].upper() + s[k + 1:]).filter(lambda t: t != s),
                     i.map(lambda k: s[:k] + "g" + s[k + 1:]))


@st.composite
def bad_uids(draw) -> str:
    """A pod UID (as the API gives it, or a static pod's md5) that kubelet would not write."""
    uuid = draw(st.uuids())
    return draw(st.one_of(
        _mutations_of_hex(str(uuid)), _mutations_of_hex(uuid.hex),
        st.just(uuid.hex[:31]),                            # neither a UUID nor an md5
        st.just(str(uuid)[:8] + str(uuid)[9:]),            # a dash left out
    ))


@given(prefixes, qos_classes, bad_uids(), container_ids)
def test_bad_pod_uids_are_not_pods(prefix, qos, bad, cid):
    for path in (join(*cgroupfs_pod(prefix, qos, bad)),
                 join(*cgroupfs_pod(prefix, qos, bad), cid)):
        assert identify(path) == UNKNOWN, path
    words = ["kubepods", *([] if qos == GUARANTEED else [qos]), "pod" + bad.replace("-", "_")]
    pod = systemd_slices(words)
    assert identify(join(*prefix, *pod)) == UNKNOWN
    got = identify(join(*prefix, *pod, f"cri-containerd-{cid}.scope"))
    assert got.pod_uid is None and got.qos is None      # a container outside any known pod
    assert got.container_id == cid and got.runtime == CONTAINERD


@given(prefixes, root_words, qos_classes, pod_uids, container_ids,
       st.sampled_from(SYSTEMD_CONTAINERS[:3] + CGROUPFS_CONTAINERS[:2]), st.data())
def test_bad_container_ids_are_not_containers(prefix, root, qos, uid, cid, form, data):
    name = form[0]
    bad = data.draw(_mutations_of_hex(cid))
    pod = systemd_pod(prefix, root, qos, uid) if name.endswith(".scope") else \
        cgroupfs_pod(prefix, qos, uid)
    got = identify(join(*pod, name.format(id=bad)))
    # a scope under a slice stays a systemd unit; it is no container and in no pod
    assert got.container_id is None and got.runtime is None and got.pod_uid is None, got
    assert not got.conmon


@pytest.mark.parametrize("path", [
    "/kubepods/guaranteed/pod{uid}",                 # guaranteed pods sit under kubepods itself
    "/kubepods/Burstable/pod{uid}",
    "/kubepods/burstable/burstable/pod{uid}",
    "/kubepods/burstable/pod{us}",                   # systemd's escape, on cgroupfs
    "/kubepods/burstable/{uid}",                     # no "pod"
    "/kubepods/burstable/Pod{uid}",
    "/notkubepods/burstable/pod{uid}",
    "/kubepods-burstable.slice/kubepods-burstable-pod{us}.slice",   # no kubepods.slice above
    "/kubepods.slice/kubepods-burstable-pod{us}.slice",             # no QoS slice between
    "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{us}.slice",
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice",  # dashes kept
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable--pod{us}.slice",
    "/kubepods.slice/kubepods-guaranteed.slice/kubepods-guaranteed-pod{us}.slice",
    "/kubepods/burstable/pod{uid}/{cid}/{cid}",      # below a container: not that container
    "/kubepods/burstable/pod{uid}/crio-{cid}.scope",  # a systemd name under a cgroupfs pod
    "/kubepods/burstable/pod{uid}/docker-{cid}",
    "/kubepods.slice/kubepods-pod{us}.slice/{cid}",  # a cgroupfs name under a systemd pod
    "/kubepods.slice/kubepods-pod{us}.slice/crio-conmon-{cid}",
    "/{cid}",                                         # a bare id outside a pod or docker/
    "/system.slice/{cid}",
    "/docker/docker-{cid}.scope",
    "/system.slice/docker-{cid}.scope.d",
    "/system.slice/cri-containerd-{cid}",
])
def test_near_misses(path):
    uid, cid = "0f3e9c1a-1b2c-4d5e-8f90-123456789abc", "0123456789abcdef" * 4
    got = identify(path.format(uid=uid, us=uid.replace("-", "_"), cid=cid))
    assert got.pod_uid is None and got.container_id is None and got.qos is None, got
    assert got.runtime is None and not got.conmon and not got.cadvisor_skips, got


@pytest.mark.parametrize("name", ["foo.service/", "-foo.service", "foo@.service", "@foo.service",
                                  "foo bar.service", "foo.socket", ".service", "foo.Service",
                                  "x" * 248 + ".service"])
def test_names_systemd_would_refuse_are_no_units(name):
    got = identify("/system.slice/" + name)
    if name.endswith("/"):                           # a trailing "/" is the same cgroup
        assert got == CgroupIdentity(unit=name[:-1])
        return
    if name == "-foo.service":                       # a leading "-" is a valid unit name
        assert got == CgroupIdentity(unit=name)
        return
    assert got == UNKNOWN, name


def test_the_longest_unit_name():
    name = "x" * 247 + ".service"                    # 255 characters: systemd's limit
    assert identify("/system.slice/" + name) == CgroupIdentity(unit=name)


# --- nothing raises, and whatever is reported has the right form ---

UID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{32}")
ID = re.compile(r"[0-9a-f]{64}")

components = st.one_of(
    st.text(max_size=12).filter(lambda s: "/" not in s),
    st.sampled_from(["kubepods", "burstable", "besteffort", "guaranteed", "docker",
                     "kubepods.slice", "kubepods-burstable.slice", "system.slice", ".mount",
                     "foo.service", "x.scope", "pod", "crio-", "cri-containerd-"]),
    st.builds(lambda p, h, s: p + h + s,
              st.sampled_from(["", "pod", "crio-", "crio-conmon-", "docker-", "cri-containerd-",
                               "kubepods-pod", "kubepods-burstable-pod"]),
              st.one_of(container_ids, pod_uids, pod_uids.map(lambda u: u.replace("-", "_"))),
              st.sampled_from(["", ".scope", ".slice", ".mount"])))


def _check_form(got: CgroupIdentity) -> None:
    assert isinstance(got, CgroupIdentity)
    assert got.pod_uid is None or UID.fullmatch(got.pod_uid)
    assert got.container_id is None or ID.fullmatch(got.container_id)
    assert got.qos is None or got.qos in QOS_CLASSES
    assert got.runtime is None or got.runtime in RUNTIMES
    assert got.pod_uid is None or got.qos is not None
    assert got.unit is None or (got.pod_uid is None and got.runtime is None)


@settings(max_examples=500)
@given(st.lists(components, max_size=8), st.booleans())
def test_arbitrary_paths_never_raise(parts, leading):
    path = ("/" if leading else "") + "/".join(parts)
    _check_form(identify(path))


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_never_raises(text):
    _check_form(identify(text))


@pytest.mark.parametrize("value", [None, 0, b"/kubepods", ["kubepods"]])
def test_not_a_path(value):
    assert identify(value) == UNKNOWN


# --- Record.container ---

def _record(path: Optional[str]) -> Record:
    return Record(Selection(["anon"]), (1, 0, 0, 2, 0, 1, 0, 4096), path)


def test_record_container():
    uid, cid = "0f3e9c1a-1b2c-4d5e-8f90-123456789abc", "ab" * 32
    rec = _record(f"/kubepods/besteffort/pod{uid}/{cid}")
    assert rec.container == CgroupIdentity(pod_uid=uid, container_id=cid, qos=BESTEFFORT)
    assert rec.container.pod_uid == uid and rec["anon"] == 4096
    assert _record(None).container == UNKNOWN
    assert _record("/system.slice/foo.service").container.unit == "foo.service"
    with pytest.raises(AttributeError):                # frozen
        rec.container.pod_uid = "x"
