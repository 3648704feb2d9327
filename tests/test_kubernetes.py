"""The DaemonSets (packaging/kubernetes/): valid objects of every Kubernetes
release they claim, checked against that release's API schemas (the
kubernetes-validate package, strict: an unknown or misplaced field fails),
and the two layouts alike but for the cgroup volume. What they do when run
is tests/test_container.py's part."""

from __future__ import annotations

import copy
import os

import kubernetes_validate  # a test dependency (pyproject.toml)
import pytest
import yaml

import pymemcg

HERE = os.path.dirname(os.path.abspath(__file__))
KUBE = os.path.join(HERE, "..", "packaging", "kubernetes")
#: cgroup version -> the DaemonSet for nodes of that version
MANIFESTS = {2: os.path.join(KUBE, "daemonset.yaml"),
             1: os.path.join(KUBE, "daemonset-cgroup-v1.yaml")}
#: the releases the manifests claim (their headers and docs/kubernetes.md)
VERSIONS = [f"1.{minor}.0" for minor in range(25, 38)]
#: where each layout mounts the node's memory hierarchy
CGROUP_PATH = {2: "/sys/fs/cgroup", 1: "/sys/fs/cgroup/memory"}


def load(version: int) -> dict:
    with open(MANIFESTS[version]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    assert len(docs) == 1, f"{MANIFESTS[version]}: one object expected, {len(docs)} found"
    return docs[0]


def container(manifest: dict) -> dict:
    (c,) = manifest["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("cgroup_version", sorted(MANIFESTS))
@pytest.mark.parametrize("k8s", VERSIONS)
def test_the_daemonset_is_valid_in_each_release_it_claims(cgroup_version, k8s):
    manifest = load(cgroup_version)
    assert kubernetes_validate.validate(manifest, k8s, strict=True) == k8s.rsplit(".", 1)[0]


def test_the_schema_check_can_fail():
    """A field the API does not have, and a field of a later release
    (recursiveReadOnly came in 1.30), are refused."""
    bad = load(2)
    container(bad)["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
    newer = load(2)
    container(newer)["volumeMounts"][0]["recursiveReadOnly"] = "Enabled"
    kubernetes_validate.validate(newer, "1.33.0", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(newer, "1.29.0", strict=True)


def test_the_layouts_differ_in_the_cgroup_volume_only():
    v1, v2 = load(1), load(2)
    for manifest, version in ((v1, 1), (v2, 2)):
        spec = manifest["spec"]["template"]["spec"]
        (mount,) = container(manifest)["volumeMounts"]
        (volume,) = spec["volumes"]
        assert mount == {"name": volume["name"], "mountPath": CGROUP_PATH[version],
                         "readOnly": True}
        assert volume["hostPath"] == {"path": CGROUP_PATH[version], "type": "Directory"}
    rest = []
    for manifest in (v1, v2):
        m = copy.deepcopy(manifest)
        del container(m)["volumeMounts"], m["spec"]["template"]["spec"]["volumes"]
        rest.append(m)
    assert rest[0] == rest[1]


@pytest.mark.parametrize("cgroup_version", sorted(MANIFESTS))
def test_the_daemonset_runs_this_version_and_refuses_text(cgroup_version):
    c = container(load(cgroup_version))
    assert c["image"].rsplit(":", 1)[1] == pymemcg.__version__
    # the exporter's own parser accepts the arguments, and they leave no fallback
    from pymemcg.cli import build_parser
    args = build_parser().parse_args(c["args"])
    assert args.func.__name__ == "cmd_export" and args.backend == "bpf"
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "/sys" not in [v["hostPath"]["path"]
                          for v in load(cgroup_version)["spec"]["template"]["spec"]["volumes"]]
