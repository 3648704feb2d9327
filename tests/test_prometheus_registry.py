"""A daemon's own prometheus_client registry served through pymemcg.prometheus's
drop-ins (generate_latest, make_wsgi_app, make_asgi_app, start_http_server,
write_to_textfile): its MemcgCollector written by pymemcg, its other metrics
by prometheus_client, one exposition that prometheus_client's parsers read
as they read prometheus_client's own, family for family.

Real kernel, real cgroups, real HTTP; each registry holds a counter, a
histogram, a custom collector and target_info beside the MemcgCollector.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
import urllib.request
from typing import Any, Dict, List, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, Counter, Histogram  # noqa: E402
from prometheus_client import exposition as client  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.openmetrics import exposition as client_openmetrics  # noqa: E402
from prometheus_client.openmetrics.parser import \
    text_string_to_metric_families as parse_openmetrics  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pymemcg import prometheus as drop_in  # noqa: E402
from pymemcg.cgroupfs import memory_mount  # noqa: E402
from pymemcg.prometheus import MemcgCollector  # noqa: E402

from conftest import CgroupFactory  # noqa: E402
from test_prometheus_server import (prometheus_binary, prometheus_server, query,  # noqa: E402,F401
                                    wait_for)

#: what real scrapers send: Prometheus 2.x and 3.x (OpenMetrics first), a
#: plain client, text 1.0.0 with each escaping
ACCEPTS = [
    None,
    "*/*",
    "text/plain; version=0.0.4",
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
    "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "application/openmetrics-text",
    "application/openmetrics-text; version=0.0.1",
    "text/plain; version=1.0.0; escaping=values",
    "text/plain; version=1.0.0; escaping=dots",
    "text/plain; version=1.0.0; escaping=bogus",
    "text/plain; version=1.0.0; escaping=values; escaping=dots",
    "application/openmetrics-text; version=2.0.0; version=1.0.0",
]


class Custom:
    """A collector of the daemon's own."""

    def collect(self):
        g = GaugeMetricFamily("daemon_queue_depth", 'items "queued"\nnow', labels=["queue"])
        g.add_metric(["in"], 3)
        g.add_metric(["out"], 0.5)
        yield g


@pytest.fixture(scope="module")
def tree(bpf_ok):
    """A small tree under this process's cgroup, made once for the module."""
    cgroups = CgroupFactory()
    try:
        for rel in ("a", "a/b", 'odd "name"\\', "c"):
            cgroups.make(rel)
        yield cgroups.base
    finally:
        cgroups.cleanup()


@pytest.fixture(scope="module")
def registry(tree):
    """A daemon's registry: metrics of its own around a MemcgCollector of
    the tree (one snapshot for the whole module: min_interval 1 h)."""
    reg = CollectorRegistry(target_info={"service": "daemon"})
    requests = Counter("daemon_requests", "requests served", ["path"], registry=reg)
    requests.labels("/x").inc(3)
    latency = Histogram("daemon_latency_seconds", "latency", registry=reg)
    latency.observe(0.2)
    collector = MemcgCollector(tree, min_interval=3600)
    reg.register(collector)
    reg.register(Custom())
    collector.take()          # the snapshot both sides use
    try:
        yield reg
    finally:
        collector.close()


def families(text: str, openmetrics: bool = False) -> Dict[str, Tuple[Any, ...]]:
    """name -> (type, help, unit, sorted samples) as prometheus_client's parser reads it."""
    parse = parse_openmetrics if openmetrics else text_string_to_metric_families
    out = {}
    for f in parse(text):
        assert f.name not in out, f"family {f.name} twice"
        out[f.name] = (f.type, f.documentation, f.unit,
                       sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
    return out


def assert_one_header_each(text: str) -> None:
    for kind in ("# HELP ", "# TYPE "):
        names = [line.split()[2] for line in text.splitlines() if line.startswith(kind)]
        assert len(names) == len(set(names)), f"{kind}repeated"


def client_answer(reg, accept: Optional[str]) -> Tuple[str, bytes]:
    """(Content-Type, body) prometheus_client itself would answer."""
    encoder, content_type = client.choose_encoder(accept)
    return content_type, encoder(reg)


def test_generate_latest_equals_the_clients(registry):
    ours = drop_in.generate_latest(registry).decode()
    theirs = client.generate_latest(registry).decode()
    assert "memcg_anon{" in ours and "daemon_requests_total{" in ours
    assert_one_header_each(ours)
    assert families(ours) == families(theirs)
    # the family order is the registry's
    order = [line.split()[2] for line in ours.splitlines() if line.startswith("# TYPE ")]
    assert order == [line.split()[2] for line in theirs.splitlines()
                     if line.startswith("# TYPE ")]


@pytest.mark.parametrize("accept", ACCEPTS)
def test_every_negotiated_format_equals_the_clients(registry, accept):
    fmt, escaping, version, content_type = drop_in.choose_format(accept)
    their_type, theirs = client_answer(registry, accept)
    assert content_type == their_type
    ours = b"".join(drop_in.exposition_chunks(registry, fmt, escaping, version)).decode()
    openmetrics = fmt == drop_in.OPENMETRICS
    if openmetrics:
        assert ours.endswith("\n# EOF\n") and ours.count("# EOF") == 1
    if escaping == "dots":
        # "dots" rewrites every name (each "_" doubled), so that prometheus_client's
        # parser reads its own text as other families: pymemcg hands the
        # MemcgCollector to prometheus_client then, and the text is the same
        assert ours == theirs.decode()
        return
    assert_one_header_each(ours)
    assert families(ours, openmetrics) == families(theirs.decode(), openmetrics)


def test_start_http_server_serves_the_registry_over_http(registry):
    server, thread = drop_in.start_http_server(0, "127.0.0.1", registry)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        for accept, gzipped in [(None, False), (ACCEPTS[3], True), ("*/*", True)]:
            headers = {"Accept-Encoding": "gzip"} if gzipped else {}
            if accept:
                headers["Accept"] = accept
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=30) as r:
                body, got = r.read(), r.headers
            assert (got.get("Content-Encoding") == "gzip") == gzipped
            if gzipped:
                body = gzip.decompress(body)
            their_type, theirs = client_answer(registry, accept)
            assert got["Content-Type"] == their_type
            openmetrics = their_type.startswith("application/openmetrics-text")
            assert families(body.decode(), openmetrics) == families(theirs.decode(), openmetrics)
        with urllib.request.urlopen(url + "?name[]=daemon_requests_total&name[]=memcg_anon",
                                    timeout=30) as r:
            restricted = families(r.read().decode())
        assert set(restricted) == {"daemon_requests", "memcg_anon"}
        assert restricted == families(client.generate_latest(
            registry.restricted_registry(["daemon_requests_total", "memcg_anon"])).decode())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert not thread.is_alive()


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_make_wsgi_app_in_a_wsgi_server(registry):
    httpd = make_server("127.0.0.1", 0, drop_in.make_wsgi_app(registry), handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
        with urllib.request.urlopen(urllib.request.Request(
                url, headers={"Accept-Encoding": "gzip"}), timeout=30) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["Content-Type"] == client.CONTENT_TYPE_PLAIN_0_0_4
            body = gzip.decompress(r.read()).decode()
        assert families(body) == families(client.generate_latest(registry).decode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"),
                                   timeout=30)
        assert e.value.code == 405
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_make_asgi_app_answers_as_the_clients(registry):
    app = drop_in.make_asgi_app(registry)
    accept = ACCEPTS[3]
    scope = {"type": "http", "query_string": b"",
             "headers": [(b"accept", accept.encode()), (b"accept-encoding", b"gzip")]}
    sent: List[Dict[str, Any]] = []

    async def receive() -> Dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Dict[str, Any]) -> None:
        sent.append(message)
    asyncio.run(app(scope, receive, send))
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 200 and headers[b"content-encoding"] == b"gzip"
    their_type, theirs = client_answer(registry, accept)
    assert headers[b"content-type"].decode() == their_type
    assert families(gzip.decompress(body["body"]).decode(), True) == \
        families(theirs.decode(), True)


def test_write_to_textfile(registry, tmp_path):
    path = str(tmp_path / "daemon.prom")
    drop_in.write_to_textfile(path, registry)
    with open(path) as f:
        ours = families(f.read())
    assert ours == families(client.generate_latest(registry, "allow-utf-8").decode())
    assert os.listdir(tmp_path) == ["daemon.prom"]


def test_a_bare_collector_is_a_registry_too(tree):
    with MemcgCollector(tree, min_interval=3600) as collector:
        ours = drop_in.generate_latest(collector).decode()   # type: ignore[arg-type]
        assert families(ours) == families(client.generate_latest(collector).decode())


def test_a_real_prometheus_scrapes_the_daemons_registry(registry, tree, prometheus_binary,
                                                        tmp_path, monkeypatch):
    """Prometheus (which asks for OpenMetrics first) stores the daemon's own
    metrics and the collector's, from pymemcg.prometheus.start_http_server."""
    chosen = []
    choose = drop_in.choose_format
    monkeypatch.setattr(drop_in, "choose_format",
                        lambda accept: chosen.append(choose(accept)[0]) or choose(accept))
    server, thread = drop_in.start_http_server(0, "127.0.0.1", registry)
    try:
        target = f"127.0.0.1:{server.server_address[1]}"
        with prometheus_server(prometheus_binary, tmp_path, target) as api:
            wait_for(api, 'up{job="pymemcg"}', 1.0)
            wait_for(api, 'daemon_requests_total{path="/x"}', 3.0)
            wait_for(api, "daemon_latency_seconds_count", 1.0)
            wait_for(api, 'daemon_queue_depth{queue="out"}', 0.5)
            ids = {m["cgroup"] for m, _ in query(api, "memcg_usage")}
            base = "/" + os.path.relpath(tree, memory_mount().mountpoint)
            assert ids == {base, *(f"{base}/{r}" for r in ("a", "a/b", 'odd "name"\\', "c"))}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert chosen and set(chosen) == {drop_in.OPENMETRICS}
