"""A real Prometheus server (Debian's `prometheus` package) scraping
`pymemcg export` on loopback, queried through its HTTP API and compared
with a direct read of quiet cgroups (page cache charged by a process that
has exited, a limit: values that hold still).

Prometheus runs with a temporary config and storage directory on free
loopback ports and a 1 s scrape interval. Where it is missing the tests
skip, except with PYMEMCG_REQUIRE_BPF=1 (CI): then they fail, since CI
installs it (Makefile APT_PACKAGES).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from typing import Optional

import pytest

pytest.importorskip("prometheus_client")

import pymemcg  # noqa: E402

from conftest import bpf_required, require_module, sigint_default  # noqa: E402
from test_prometheus import LIMIT, exporter, quiet, rel, stable_read  # noqa: E402,F401
from test_names import odd_names  # noqa: E402,F401 - a fixture

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    if not os.access(PROMETHEUS, os.X_OK):
        message = ("Debian's prometheus server is not installed: `apt-get install prometheus` "
                   "(make deps installs it)")
        if bpf_required():
            pytest.fail(message)
        pytest.skip(message)
    return PROMETHEUS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prometheus_server(binary: str, tmp_path, target: str, scrape_extra: str = ""):
    """A Prometheus scraping `target` (host:port) every second: its API base URL."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: pymemcg\n"
        f"    static_configs:\n      - targets: ['{target}']\n" + scrape_extra)
    storage = tmp_path / "data"
    for attempt in range(5):   # the free port may be taken between probe and bind
        port = free_port()
        log = open(tmp_path / "prometheus.log", "w+")
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={storage}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=sigint_default)
        api = f"http://127.0.0.1:{port}"
        try:
            if _ready(proc, api):
                break
        except BaseException:
            _stop(proc)
            raise
        _stop(proc)
        log.seek(0)
        text = log.read()
        log.close()
        if "address already in use" not in text:
            raise AssertionError(f"prometheus did not start:\n{text}")
    else:
        raise AssertionError("prometheus found no free port in 5 tries")
    try:
        yield api
    finally:
        _stop(proc)
        log.close()


def _ready(proc: subprocess.Popen, api: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{api}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("prometheus was not ready within 60 s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(api: str, promql: str) -> list:
    """The result vector of an instant query: [(labels, value)]."""
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return [(res["metric"], float(res["value"][1])) for res in body["data"]["result"]]


def wait_for(api: str, promql: str, want: Optional[float] = None, timeout: float = 60) -> list:
    """Query until the result is non-empty (and, given `want`, every value equals it)."""
    deadline = time.monotonic() + timeout
    result: list = []
    while time.monotonic() < deadline:
        result = query(api, promql)
        if result and (want is None or all(v == want for _, v in result)):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{promql}: {result} (wanted {want})")


def test_prometheus_scrapes_what_a_direct_read_says(bpf_ok, quiet, prometheus_binary, tmp_path):
    parent, child = quiet
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "usage,limit,file",
                  parent) as (_, url, _scrape):
        target = urllib.parse.urlsplit(url).netloc
        with prometheus_server(prometheus_binary, tmp_path, target) as api:
            up = wait_for(api, 'up{job="pymemcg"}', 1.0)
            assert up[0][0]["instance"] == target
            cid = rel(child)
            # limits hold still: exactly what the kernel says
            wait_for(api, f'container_spec_memory_limit_bytes{{id="{cid}"}}', float(LIMIT))
            wait_for(api, f'memcg_limit{{cgroup="{cid}"}}', float(LIMIT))
            # the quiet child's page cache and usage: a direct read, once both settle
            with pymemcg.Reader(stats=["usage", "file"], backend="bpf") as reader:
                for attempt in range(30):
                    values = stable_read(reader, child)
                    got = {
                        "file": query(api, f'container_memory_cache{{id="{cid}"}}'),
                        "usage": query(api, f'memcg_usage{{cgroup="{cid}"}}'),
                    }
                    if all(r and r[0][1] == float(values[k]) for k, r in got.items()):
                        break
                    time.sleep(1)
                else:
                    raise AssertionError(f"prometheus {got} != direct read {values}")
            assert values["file"] > 0
            # every cgroup of the subtree, and the counters are counters to PromQL
            ids = {m["id"] for m, _ in query(api, "container_memory_usage_bytes")}
            assert ids == {rel(parent), cid}
            rate = query(api, f'rate(container_memory_failures_total{{id="{cid}"}}[10s])')
            assert all(v >= 0 for _, v in rate)


def test_prometheus_scrapes_over_tls_with_basic_auth(bpf_ok, quiet, prometheus_binary,
                                                     tmp_path):
    """web-config.yml as Prometheus itself configures the scrape of an
    exporter behind TLS and basic auth."""
    bcrypt = require_module("bcrypt")
    require_module("yaml")
    from test_web_config import make_cert
    parent, child = quiet
    cert, key = make_cert(str(tmp_path))
    password = "s3cret-for-the-scrape"
    web = tmp_path / "web-config.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                   f"basic_auth_users:\n  prometheus: "
                   f"'{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}'\n")
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "limit",
                  "--web-config", str(web), parent) as (_, url, _scrape):
        assert url.startswith("https://")
        target = urllib.parse.urlsplit(url).netloc
        scrape = (f"    scheme: https\n    tls_config:\n      ca_file: {cert}\n"
                  f"    basic_auth:\n      username: prometheus\n      password: {password}\n")
        with prometheus_server(prometheus_binary, tmp_path, target, scrape) as api:
            wait_for(api, 'up{job="pymemcg"}', 1.0)
            wait_for(api, f'memcg_limit{{cgroup="{rel(child)}"}}', float(LIMIT))
        # the wrong password: Prometheus sees the target down (401)
        bad = tmp_path / "bad"
        bad.mkdir()
        with prometheus_server(prometheus_binary, bad, target,
                               scrape.replace(password, "wrong")) as api:
            wait_for(api, 'up{job="pymemcg"}', 0.0)
            assert not query(api, "memcg_limit")


def test_prometheus_reads_every_cgroup_name(bpf_ok, cgroups, odd_names, prometheus_binary,
                                            tmp_path):
    """Names that are not UTF-8, with quotes, backslashes, control characters,
    and pairs a naive escaping would merge: one series each, whose label
    reads back to the name (pymemcg.names)."""
    from pymemcg.names import escape, unescape
    made, parent = odd_names
    want = {os.fsencode(rel(p)) for p in [cgroups.base, parent, *made.values()]}
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "anon",
                  cgroups.base) as (_, url, _scrape):
        target = urllib.parse.urlsplit(url).netloc
        with prometheus_server(prometheus_binary, tmp_path, target) as api:
            wait_for(api, 'up{job="pymemcg"}', 1.0)
            base = rel(cgroups.base)
            for attempt in range(60):
                series = query(api, f'memcg_anon{{cgroup=~"{base}(/.*)?"}}')
                ids = query(api, f'container_memory_rss{{id=~"{base}(/.*)?"}}')
                if len(series) >= len(want) and len(ids) >= len(want):
                    break
                time.sleep(0.5)
            for result, label in ((series, "cgroup"), (ids, "id")):
                values = [m[label] for m, _ in result]
                assert len(values) == len(set(values)) == len(want), values
                assert {unescape(v) for v in values} == want
            # an exact match on a label with a quote, a backslash, "%" escapes
            for name in (b'q"uote', b"back\\slash", b"bad\xffname", b"a%FF", b"a\\xff"):
                text = escape(rel(made[name]))
                got = query(api, f"memcg_anon{{cgroup={json.dumps(text)}}}")
                assert [m["cgroup"] for m, _ in got] == [text], name
