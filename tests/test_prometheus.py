"""The Prometheus collector and `pymemcg export`, on real cgroups.

The values are checked against a direct Reader.read of the same cgroup: a
quiet child cgroup made under this process's memory cgroup, with a limit
and page cache charged to it by a process that has exited, so nothing
changes while the test compares.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from typing import Optional

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import pymemcg  # noqa: E402
from pymemcg import catalog  # noqa: E402
from pymemcg.cgroupfs import memory_mount  # noqa: E402
from pymemcg.cadvisor import UNLIMITED_ABOVE, cadvisor_metrics  # noqa: E402
from pymemcg.exposition import raw_family, raw_metric_name, raw_metric_values  # noqa: E402
from pymemcg.prometheus import ListenError, MemcgCollector, parse_listen  # noqa: E402
from pymemcg.names import escape  # noqa: E402

from conftest import links_of, sigint_default  # noqa: E402

MiB = 1 << 20
LIMIT = 48 * MiB
CACHE = 6 * MiB
ENV = {**os.environ, "PYMEMCG_REQUIRE_BPF": "1"}

# a process that charges page cache to its cgroup, then exits
CHARGE_CACHE = """
import os, sys
path = {path!r}
with open(path, "wb") as f:
    f.write(b"z" * {size})
    f.flush()
    os.fsync(f.fileno())
with open(path, "rb") as f:
    f.read()
print("ready", flush=True)
sys.stdin.read()
"""


def rel(path: str) -> str:
    r = "/" + os.path.relpath(path, memory_mount().mountpoint)
    return "/" if r == "/." else r


def set_limit(path: str, version: int, value: int) -> None:
    name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    with open(os.path.join(path, name), "w") as f:
        f.write(str(value))


def charge_cache(cgroups, cgroup: str, cache_file: str) -> None:
    """Page cache charged to `cgroup` by a process that has exited, once BPF sees it."""
    proc = cgroups.spawn(cgroup, CHARGE_CACHE.format(path=cache_file, size=CACHE))
    proc.stdin.close()
    proc.wait()
    # BPF reads rstat totals: wait for the kernel to flush the charge (reading
    # memory.stat flushes when many updates are pending; a worker does every 2 s)
    deadline = time.monotonic() + 30
    with pymemcg.Reader(stats=["file"], backend="bpf") as reader:
        while True:
            with open(os.path.join(cgroup, "memory.stat")) as f:
                text = f.read()
            seen = reader.read(cgroup)["file"]
            if seen >= CACHE // 2:
                break
            assert time.monotonic() < deadline, (
                f"the page cache never showed in {cgroup}: BPF file={seen}, charging process "
                f"exited {proc.returncode}, memory.stat:\n{text}")
            time.sleep(0.2)


@pytest.fixture
def quiet(cgroups, cgroup_version):
    """(parent, child): a limited child holding page cache, nothing running in either."""
    child = cgroups.make("quiet")
    set_limit(child, cgroup_version, LIMIT)
    cache_file = f"/var/tmp/pymemcg-test-prom-{os.getpid()}"
    try:
        charge_cache(cgroups, child, cache_file)
        yield cgroups.base, child
    finally:
        if os.path.exists(cache_file):
            os.unlink(cache_file)


def stable_read(reader: pymemcg.Reader, path: str, timeout: float = 15.0) -> dict:
    """Values once two reads 0.3 s apart agree (BPF reads rstat totals, which the
    kernel flushes every ~2 s: the exit of the charging process settles)."""
    deadline = time.monotonic() + timeout
    last = reader.read(path).as_dict()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = reader.read(path).as_dict()
        if now == last:
            return now
        last = now
    raise AssertionError(f"{path} never settled: {last}")


def samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} and the family types."""
    out, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"{key} twice"
            out[key] = s.value
    return out, types


def families(text: str) -> dict:
    """{family name: (type, help, sorted samples)}: all a parser reads."""
    return {fam.name: (fam.type, fam.documentation,
                       sorted((s.name, sorted(s.labels.items()), s.value) for s in fam.samples))
            for fam in text_string_to_metric_families(text)}


def scrape_both(collector: MemcgCollector) -> tuple:
    """samples() of one scrape through prometheus_client (a registry and
    generate_latest), after checking that the text writer's exposition of
    the same snapshot reads the same to the parser: every family, its type,
    help and samples."""
    assert collector.min_interval >= 10, "both must see one snapshot"
    registry = CollectorRegistry()
    registry.register(collector)
    walks = collector.walks
    client = generate_latest(registry).decode()
    writer = collector.exposition().decode()
    assert collector.walks <= walks + 1
    assert families(writer) == families(client)
    return samples(client)


def expected(values: dict, version: int) -> dict:
    """What the exporter must show for a cgroup, computed from a direct read."""
    exp = {
        "container_memory_usage_bytes": values["usage"],
        "container_memory_max_usage_bytes": values["peak"],
        "container_memory_working_set_bytes": max(values["usage"] - values["inactive_file"], 0),
        "container_memory_rss": values["anon"],
        "container_memory_cache": values["file"],
        "container_memory_mapped_file": values["file_mapped"],
        "container_memory_total_active_file_bytes": values["active_file"],
        "container_memory_total_inactive_file_bytes": values["inactive_file"],
        "container_oom_events_total": values["oom_kill"],
        "container_spec_memory_limit_bytes":
            0 if values["limit"] > UNLIMITED_ABOVE else values["limit"],
        "container_memory_swap": values["swap" if version == 1 else "swap_usage"],
    }
    if version == 1:
        exp["container_memory_failcnt"] = values["failcnt"]
        exp["container_memory_kernel_usage"] = values["kernel"]
    return exp


def check_cgroup(got: dict, path: str, values: dict, version: int, selected,
                 identity: Optional[dict] = None) -> None:
    """Every sample of `path`; identity: its pod_uid/container_id/qos/unit labels."""
    ident = frozenset((identity or {}).items())
    for name, value in expected(values, version).items():
        key = (name, frozenset({("id", path)}) | ident)
        assert got.get(key) == float(value), (key, value)
    # v1: cAdvisor's fault counts are the cgroup's own, which a hierarchical
    # read does not have (tests/test_cadvisor.py checks them on the kernel's files)
    for ftype in ("pgfault", "pgmajfault") if version == 2 else ():
        for scope in ("container", "hierarchy"):
            key = ("container_memory_failures_total",
                   frozenset({("id", path), ("failure_type", ftype), ("scope", scope)}) | ident)
            assert got.get(key) == float(values[ftype]), key
    for stat in selected:
        counter = catalog.STATS[stat].unit == catalog.COUNT
        key = (f"memcg_{stat}" + ("_total" if counter else ""),
               frozenset({("cgroup", path)}) | ident)
        assert got.get(key) == float(values[stat]), (key, values[stat])


SELECTED = ["usage", "limit", "anon", "file", "shmem", "inactive_file", "pgfault", "oom_kill"]


def scrape_until_equal(scrape, reader, paths, version, selected, tries: int = 4,
                       identity: Optional[dict] = None):
    """Compare a scrape with direct reads; retry while the host's rstat flush
    lands between the two. identity: {path: its identity labels}."""
    for attempt in range(tries):
        values = {p: stable_read(reader, p) for p in paths}
        got, types = samples(scrape())
        try:
            for p in paths:
                check_cgroup(got, rel(p), values[p], version, selected,
                             (identity or {}).get(p))
            return got, types, values
        except AssertionError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5)


# --- the collector ---

def test_collector_matches_a_direct_read(bpf_ok, quiet, cgroup_version):
    parent, child = quiet
    with MemcgCollector(parent, SELECTED, backend="bpf", min_interval=0) as collector, \
            pymemcg.Reader(stats=collector.stats_needed, backend="bpf") as reader:
        registry = CollectorRegistry()
        registry.register(collector)
        got, types, values = scrape_until_equal(
            lambda: generate_latest(registry).decode(), reader, [parent, child], cgroup_version,
            SELECTED)
        # the text writer says the same, from its own read
        scrape_until_equal(lambda: collector.exposition().decode(), reader, [parent, child],
                           cgroup_version, SELECTED)
        assert collector.reader.backend == "bpf"
    v = values[child]
    # the comparison means something: a limit, page cache, a working set below usage
    assert v["limit"] == LIMIT
    assert v["file"] >= CACHE // 2, v
    assert got[("container_spec_memory_limit_bytes", frozenset({("id", rel(child))}))] == LIMIT
    assert got[("memcg_limit", frozenset({("cgroup", rel(child))}))] == LIMIT
    assert 0 <= got[("container_memory_working_set_bytes", frozenset({("id", rel(child))}))] \
        < v["usage"]
    # exactly these cgroups: the parent and the child, no other
    ids = {dict(labels)["id"] for (name, labels) in got if name == "container_memory_rss"}
    assert ids == {rel(parent), rel(child)}
    # types: cAdvisor's gauges and counters; raw sizes gauges, raw counts counters
    assert types["container_memory_usage_bytes"] == "gauge"
    assert types["container_memory_failures"] == "counter"  # the parser drops _total
    assert types["container_oom_events"] == "counter"
    assert types["memcg_anon"] == "gauge" and types["memcg_pgfault"] == "counter"
    if cgroup_version == 1:
        # a counter in cAdvisor, untyped here so that the sample keeps cAdvisor's exact name
        assert types["container_memory_failcnt"] == "unknown"
        assert ("container_memory_failcnt", frozenset({("id", rel(child))})) in got
    info = [labels for (name, labels) in got if name == "pymemcg_info"]
    assert len(info) == 1 and dict(info[0])["backend"] == "bpf"
    assert dict(info[0])["version"] == pymemcg.__version__


def test_a_scrape_is_one_snapshot(bpf_ok, quiet):
    parent, _ = quiet
    with MemcgCollector(parent, ["anon", "pgfault"], backend="bpf", min_interval=0) as collector:
        calls = []
        real = collector.reader.read_tree
        collector.reader.read_tree = lambda root: calls.append(root) or real(root)
        registry = CollectorRegistry(auto_describe=True)
        registry.register(collector)
        assert calls == [], "registering must not read"
        generate_latest(registry)
        assert calls == [parent]
        generate_latest(registry)
        assert calls == [parent, parent]
        assert collector.scrapes == 2


def test_unavailable_values_are_left_out(bpf_ok, cgroup_version):
    if cgroup_version != 1:
        pytest.skip("the v1 root's usage is the case of an unavailable value")
    root = memory_mount().mountpoint
    with MemcgCollector(root, ["usage", "anon"], backend="bpf", min_interval=60) as collector:
        got, _ = scrape_both(collector)
    # the root's families, whatever other labels the host's tree adds (a
    # kubepods cgroup anywhere gives every series the pod labels too)
    root = {name for name, labels in got if dict(labels).get("id") == "/"}
    raw = {name for name, labels in got if dict(labels).get("cgroup") == "/"}
    assert "container_memory_usage_bytes" not in root
    assert "container_memory_working_set_bytes" not in root
    assert "memcg_usage" not in raw
    assert "container_memory_rss" in root          # anon is there
    assert "memcg_anon" in raw


def test_local_values_have_no_cadvisor_names(bpf_ok, quiet):
    parent, _ = quiet
    with MemcgCollector(parent, ["anon"], local=True, backend="bpf",
                        min_interval=60) as collector:
        got, types = scrape_both(collector)
    assert not [n for n in types if n.startswith("container_")]
    assert ("memcg_anon", frozenset({("cgroup", rel(parent))})) in got


def test_a_reader_passed_in_is_used_and_not_closed(bpf_ok, quiet, cgroup_version):
    parent, _ = quiet
    names = ["anon"] + [s for m in cadvisor_metrics(cgroup_version) for s in m.needs]
    names = list(dict.fromkeys(names))
    with pymemcg.Reader(stats=names, backend="bpf") as reader:
        collector = MemcgCollector(parent, ["anon"], reader=reader)
        registry = CollectorRegistry()
        registry.register(collector)
        generate_latest(registry)
        collector.close()
        reader.read(parent)  # still open
        with pytest.raises(pymemcg.UnknownStat, match="stats="):
            MemcgCollector(parent, ["anon", "shmem"], reader=reader)


def test_parse_listen():
    assert parse_listen("127.0.0.1:9756") == ("127.0.0.1", 9756)
    assert parse_listen(":9756") == ("", 9756)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:80") == ("localhost", 80)
    for bad in ("9756", "127.0.0.1", "host:port", "host:70000", ""):
        with pytest.raises(ListenError):
            parse_listen(bad)


# --- pymemcg export ---

def start_exporter(*args: str) -> tuple:
    proc = subprocess.Popen([sys.executable, "-m", "pymemcg", "export", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=sigint_default)
    line = proc.stderr.readline()
    m = re.search(r"(https?://\S+/metrics)", line)
    if not m:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"exporter did not start: {line}{err}")
    return proc, m.group(1)


@contextmanager
def exporter(*args: str, stop: int = signal.SIGTERM):
    """A running `pymemcg export ARGS`: (process, url, scrape()); stopped with
    `stop` on the way out, which it must survive cleanly (exit 0, no traceback)."""
    proc, url = start_exporter(*args)

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return resp.read().decode()

    try:
        yield proc, url, scrape
    finally:
        proc.send_signal(stop)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def stats_for(version: int) -> list:
    """SELECTED and every stat the cAdvisor metrics need, for a Reader to compare with."""
    return list(dict.fromkeys(SELECTED + [s for m in cadvisor_metrics(version) for s in m.needs]))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_export_serves_what_a_direct_read_says(bpf_ok, quiet, cgroup_version, stop):
    parent, child = quiet
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", ",".join(SELECTED),
                  "--min-interval", "0", parent, stop=stop) as (proc, url, scrape):
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/metrics")
        with pymemcg.Reader(stats=stats_for(cgroup_version), backend="bpf") as reader:
            got, _, values = scrape_until_equal(scrape, reader, [parent, child], cgroup_version,
                                                SELECTED)
        assert values[child]["limit"] == LIMIT
        assert got[("container_spec_memory_limit_bytes",
                    frozenset({("id", rel(child))}))] == LIMIT
        assert links_of(proc.pid), "a running exporter holds its links as fds"


# --- who a cgroup is: labels from kubelet-like, runtime-like and systemd-like names ---

def identity(pod_uid: str = "", container_id: str = "", qos: str = "", unit: str = "") -> dict:
    """The identity labels of one cgroup in a scrape that has all four."""
    return {"pod_uid": pod_uid, "container_id": container_id, "qos": qos, "unit": unit}


@pytest.fixture
def kubelet_tree(cgroups):
    """Cgroups under this process's own, named as kubelet (both drivers), the
    runtimes and systemd name theirs: ({what: path}, {path: identity labels}).
    The two containers hold page cache charged by a process that has exited."""
    uid, suid = str(uuid.uuid4()), str(uuid.uuid4())
    cid, scid, conmon = (uuid.uuid4().hex + uuid.uuid4().hex for _ in range(3))
    spod = f"kubepods-besteffort-pod{suid.replace('-', '_')}.slice"
    made = {
        "kubepods": (cgroups.make("kubepods"), identity()),
        "qos": (cgroups.make("kubepods/burstable"), identity(qos="burstable")),
        "pod": (cgroups.make(f"kubepods/burstable/pod{uid}"),
                identity(pod_uid=uid, qos="burstable")),
        "container": (cgroups.make(f"kubepods/burstable/pod{uid}/{cid}"),
                      identity(pod_uid=uid, container_id=cid, qos="burstable")),
        # CRI-O's conmon: no container labels (cAdvisor's raw handler exports it)
        "conmon": (cgroups.make(f"kubepods/burstable/pod{uid}/crio-conmon-{conmon}"),
                   identity(pod_uid=uid, qos="burstable")),
        "slice": (cgroups.make("kubepods.slice"), identity()),
        "systemd_qos": (cgroups.make("kubepods.slice/kubepods-besteffort.slice"),
                        identity(qos="besteffort")),
        "systemd_pod": (cgroups.make(f"kubepods.slice/kubepods-besteffort.slice/{spod}"),
                        identity(pod_uid=suid, qos="besteffort")),
        "systemd_container": (
            cgroups.make(f"kubepods.slice/kubepods-besteffort.slice/{spod}/"
                         f"cri-containerd-{scid}.scope"),
            identity(pod_uid=suid, container_id=scid, qos="besteffort")),
        "test_slice": (cgroups.make("test.slice"), identity()),
        "service": (cgroups.make("test.slice/foo.service"), identity(unit="foo.service")),
        "mount": (cgroups.make("test.slice/dev-foo.mount"), identity(unit="dev-foo.mount")),
    }
    files = [f"/var/tmp/pymemcg-test-prom-{os.getpid()}-{i}" for i in range(2)]
    try:
        for what, cache_file in zip(("container", "systemd_container"), files):
            charge_cache(cgroups, made[what][0], cache_file)
        yield {what: path for what, (path, _) in made.items()}, \
            {cgroups.base: identity(), **{path: labels for path, labels in made.values()}}
    finally:
        for f in files:
            if os.path.exists(f):
                os.unlink(f)


def test_export_labels_pods_containers_and_units(bpf_ok, cgroups, kubelet_tree, cgroup_version):
    paths, labels = kubelet_tree
    compared = [cgroups.base] + [paths[w] for w in ("pod", "container", "conmon", "systemd_pod",
                                                     "systemd_container", "service")]
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", ",".join(SELECTED),
                  "--min-interval", "0", cgroups.base) as (_, _, scrape):
        with pymemcg.Reader(stats=stats_for(cgroup_version), backend="bpf") as reader:
            got, _, values = scrape_until_equal(scrape, reader, compared, cgroup_version,
                                                SELECTED, identity=labels)
    # the values mean something: the containers hold the page cache charged to them
    for what in ("container", "systemd_container"):
        assert values[paths[what]]["file"] >= CACHE // 2, values[paths[what]]
        assert got[("container_memory_cache", frozenset({("id", rel(paths[what])),
                                                          *labels[paths[what]].items()}))] \
            == values[paths[what]]["file"]
    # every cgroup with its labels, once; the .mount unit nowhere among cAdvisor's names
    cadvisor = {(dict(k)["id"], k) for name, k in got if name == "container_memory_rss"}
    want = {p: l for p, l in labels.items() if p != paths["mount"]}
    assert {i for i, _ in cadvisor} == {rel(p) for p in want}
    for path, expect in want.items():
        assert frozenset({("id", rel(path)), *expect.items()}) in {k for _, k in cadvisor}, path
    # memcg_* cover every cgroup read, the .mount unit too, with the same labels
    mount = frozenset({("cgroup", rel(paths["mount"])), *labels[paths["mount"]].items()})
    assert ("memcg_anon", mount) in got
    assert not [k for name, k in got if name.startswith("container_")
                and dict(k).get("id") == rel(paths["mount"])]


def test_identity_labels_are_those_some_cgroup_has(bpf_ok, kubelet_tree):
    # as cAdvisor: a label is in the scrape when one of its cgroups has it
    paths, _ = kubelet_tree
    with MemcgCollector(paths["test_slice"], ["anon"], backend="bpf",
                        min_interval=60) as collector:
        got, _ = scrape_both(collector)
    rss = {dict(k)["id"]: dict(k) for name, k in got if name == "container_memory_rss"}
    assert rss == {rel(paths["test_slice"]): {"id": rel(paths["test_slice"]), "unit": ""},
                   rel(paths["service"]): {"id": rel(paths["service"]), "unit": "foo.service"}}
    anon = {dict(k)["cgroup"]: dict(k).get("unit") for name, k in got if name == "memcg_anon"}
    assert anon == {rel(paths["test_slice"]): "", rel(paths["service"]): "foo.service",
                    rel(paths["mount"]): "dev-foo.mount"}
    with MemcgCollector(paths["kubepods"], ["anon"], backend="bpf",
                        min_interval=60) as collector:
        got, _ = scrape_both(collector)
    names = {frozenset(dict(k)) for name, k in got if name == "container_memory_rss"}
    assert names == {frozenset({"id", "pod_uid", "container_id", "qos"})}   # no unit here


def test_export_without_prometheus_client_is_a_clean_error():
    code = ("import sys\n"
            "sys.modules['prometheus_client'] = None\n"
            "sys.modules['prometheus_client.core'] = None\n"
            "from pymemcg.cli import main\n"
            "sys.exit(main(['export', '--listen', '127.0.0.1:0']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pymemcg: prometheus_client is not installed")
    assert "pymemcg[prometheus]" in lines[0]


def test_export_bad_listen_is_a_clean_error():
    r = subprocess.run([sys.executable, "-m", "pymemcg", "export", "--listen", "nonsense"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("pymemcg: --listen 'nonsense'") and "Traceback" not in r.stderr


def test_export_port_in_use_is_a_clean_error(bpf_ok):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "pymemcg", "export", "--backend", "bpf",
                            "--listen", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"pymemcg: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in r.stderr


def test_a_failed_scrape_is_reported_not_raised(bpf_ok, cgroups, caplog):
    gone = cgroups.make("gone")
    with MemcgCollector(gone, ["anon"], backend="bpf", min_interval=60) as collector:
        got, _ = scrape_both(collector)
        assert got[("pymemcg_scrape_error", frozenset())] == 0
        assert ("memcg_anon", frozenset({("cgroup", rel(gone))})) in got
        os.rmdir(gone)
        collector.shared.min_interval = 0
        collector.exposition()  # the read that fails; the next scrape shares it
        collector.shared.min_interval = 60
        got, _ = scrape_both(collector)
        assert got[("pymemcg_scrape_error", frozenset())] == 1
        assert not [name for name, _ in got if name.startswith(("memcg_", "container_"))]
        assert "no such cgroup" in collector.last_error
        assert any("scrape of" in r.getMessage() for r in caplog.records)


# --- the text writer and shared snapshots ---

# cgroupfs refuses a newline in a name (EINVAL); the writer escapes one all the same
ODD_NAMES = ['with "quotes"', "back\\slash", "tab\tand space", "ünicode", "{braces}=,"]


def test_writer_reads_as_the_client_on_odd_names(bpf_ok, cgroups, kubelet_tree):
    # every family, type, help text and sample of prometheus_client's exposition,
    # identity labels and label escaping included
    paths, _ = kubelet_tree
    odd = [cgroups.make(f"odd/{name}") for name in ODD_NAMES]
    with MemcgCollector(cgroups.base, backend="bpf", min_interval=60) as collector:
        got, _ = scrape_both(collector)
    ids = {dict(k)["cgroup"] for name, k in got if name == "memcg_anon"}
    assert {escape(rel(p)) for p in odd} <= ids     # the tab as %09 (pymemcg.names)
    assert {rel(p) for p in paths.values()} <= ids
    assert rel(paths["container"]) in {dict(k)["id"] for name, k in got
                                        if name == "container_memory_cache"}


def test_scrapes_within_the_interval_share_one_walk(bpf_ok, quiet):
    import threading
    parent, _ = quiet
    with MemcgCollector(parent, ["anon", "pgfault"], backend="bpf",
                        min_interval=30) as collector:
        calls = []
        real = collector.reader.read_tree
        collector.reader.read_tree = lambda root: calls.append(root) or real(root)
        registry = CollectorRegistry()
        registry.register(collector)
        barrier = threading.Barrier(8)
        bodies = []

        def scrape(i: int) -> None:
            barrier.wait()
            bodies.append(collector.exposition() if i % 2 else generate_latest(registry))

        threads = [threading.Thread(target=scrape, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(bodies) == 8
        assert calls == [parent] and collector.walks == 1 and collector.scrapes == 8
        assert len({b for b in bodies}) == 2   # the writer's bytes and the client's
        # past the interval, the next scrape walks again
        collector.shared.min_interval = 0.2
        time.sleep(0.3)
        collector.exposition()
        assert calls == [parent, parent] and collector.walks == 2


def test_export_scrapes_share_one_walk(bpf_ok, quiet):
    import gzip
    import threading
    parent, _ = quiet
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "anon",
                  "--min-interval", "30", parent) as (_, url, scrape):
        texts = []

        def get(zipped: bool) -> None:
            req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if zipped
                                         else {})
            with urllib.request.urlopen(req, timeout=20) as resp:
                body = resp.read()
                if zipped:
                    assert resp.headers["Content-Encoding"] == "gzip"
                    body = gzip.decompress(body)
                texts.append(body.decode())

        threads = [threading.Thread(target=get, args=(i % 2 == 0,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        texts.append(scrape())
    # one snapshot: the same duration sample (a float to the nanosecond) everywhere
    assert len(texts) == 7 and len(set(texts)) == 1
    got, _ = samples(texts[0])
    assert ("memcg_anon", frozenset({("cgroup", rel(parent))})) in got


def test_export_bad_min_interval_is_a_clean_error():
    r = subprocess.run([sys.executable, "-m", "pymemcg", "export", "--min-interval", "-1"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2
    assert "--min-interval" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(pymemcg.Error, match="min_interval"):
        MemcgCollector(min_interval=-1)


BAD_INTERVALS = [-1, float("nan"), float("inf"), "1", None]


@pytest.mark.parametrize("value", BAD_INTERVALS)
def test_every_interval_check_raises_bad_interval(value):
    # the collector and the snapshot it shares check alike, before any BPF loads
    from pymemcg.exposition import SharedSnapshot
    for make in (lambda: MemcgCollector(min_interval=value),
                 lambda: SharedSnapshot(lambda root: None, "/", value)):
        with pytest.raises(pymemcg.BadInterval, match="seconds >= 0") as e:
            make()
        assert isinstance(e.value, ValueError)  # what callers caught before


def test_label_values_and_help_round_trip_through_the_parser():
    from pymemcg.exposition import header, label_pairs
    odd = 'a"b\\c\nd\\n'
    text = header("x", "gauge", "help\\with\nnewline") + \
        f'x{{{label_pairs(["l", "m"], [odd, ""])}}} 1\n'
    fam, = text_string_to_metric_families(text)
    assert fam.documentation == "help\\with\nnewline"
    assert fam.samples[0].labels == {"l": odd, "m": ""}


def test_limits_and_counts_families(bpf_ok, quiet, cgroup_version):
    """The limits and protections are gauges in bytes, a limit not set +Inf
    (pymemcg.MAX) in both the client's and the writer's text; cgroup.stat's
    counts and memory.oom.group gauges, not counters."""
    parent, child = quiet
    selected = ["limit", "nr_descendants"] + \
        (["soft_limit"] if cgroup_version == 1 else ["memory_high", "oom_group"])
    with MemcgCollector(parent, selected, backend="bpf", min_interval=60) as collector:
        got, types = scrape_both(collector)
    assert got[("memcg_limit", frozenset({("cgroup", rel(child))}))] == LIMIT
    assert got[("memcg_limit", frozenset({("cgroup", rel(parent))}))] == float("inf")
    assert "+Inf" in collector.exposition().decode()
    assert got[("memcg_nr_descendants", frozenset({("cgroup", rel(parent))}))] == 1
    for name in selected:
        assert types[f"memcg_{name}"] == "gauge", name
    if cgroup_version == 2:
        assert got[("memcg_memory_high", frozenset({("cgroup", rel(child))}))] == float("inf")
        assert got[("memcg_oom_group", frozenset({("cgroup", rel(child))}))] == 0
    else:
        assert got[("memcg_soft_limit", frozenset({("cgroup", rel(child))}))] == float("inf")


def test_raw_names_follow_the_naming_conventions(bpf_ok, quiet):
    """Every stat's family as Prometheus' naming conventions have it, the
    same in the client's and the writer's text: a counter's samples carry one
    `_total`, last, and no family name another; no name keeps a stat's unit
    that is not a base unit (pressure: seconds and 0-1 ratios, not _us or
    _x100)."""
    parent, _ = quiet
    stats = list(catalog.STATS)
    with MemcgCollector(parent, stats, backend="bpf", cadvisor=False,
                        min_interval=60) as collector:
        scrape_both(collector)
        text = collector.exposition().decode()
    types = dict(re.findall(r"^# TYPE (memcg_\S+) (\S+)$", text, re.M))
    assert len(types) == len(stats)
    for name, mtype in types.items():
        assert name.count("_total") == (1 if mtype == "counter" else 0), name
        assert mtype != "counter" or name.endswith("_total"), name
        assert not name.endswith(("_us", "_x100")), name
    for line in ("some", "full"):
        assert types[f"memcg_pressure_{line}_seconds_total"] == "counter"
        for window in ("avg10", "avg60", "avg300"):
            assert types[f"memcg_pressure_{line}_{window}_ratio"] == "gauge"
    assert types["memcg_pgfault_total"] == "counter" and types["memcg_anon"] == "gauge"


def test_pressure_values_in_base_units():
    """Pressure's stats are exported divided into seconds (as cAdvisor's
    container_pressure_memory_*: float us / 1e6) and 0-1 ratios (hundredths
    of a percent / 1e4); every other stat as read."""
    assert raw_metric_values("pressure_some_total_us", [1234567, None, 0]) == [1.234567, None, 0.0]
    assert raw_metric_values("pressure_full_avg10_x100", [523, 10000, 1]) == [0.0523, 1.0, 0.0001]
    assert raw_metric_values("anon", [4096, None]) == [4096, None]
    assert raw_metric_name("pressure_full_total_us") == "memcg_pressure_full_seconds"
    assert raw_metric_name("pressure_some_avg300_x100") == "memcg_pressure_some_avg300_ratio"
    assert raw_metric_name("pgfault") == "memcg_pgfault"
    kind, help_text = raw_family("pressure_some_total_us", False)
    assert kind == "counter" and "in seconds" in help_text and "in microseconds" in help_text
