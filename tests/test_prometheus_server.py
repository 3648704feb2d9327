"""`pymemcg export` as a server: scraped by a real Prometheus, and under
clients that connect and do not go away.

A real Prometheus server (Debian's `prometheus` package) scrapes `pymemcg
export` on loopback, queried through its HTTP API and compared with a
direct read of quiet cgroups (page cache charged by a process that has
exited, a limit: values that hold still). Prometheus runs with a
temporary config and storage directory on free loopback ports and a 1 s
scrape interval. Where it is missing the tests skip, except with
PYMEMCG_REQUIRE_BPF=1 (CI): then they fail, since CI installs it (Makefile
APT_PACKAGES).

Then the server's bounds (pymemcg.http_server): idle, half-sent and
never-handshaking clients closed after the read timeout, slow readers
after the write timeout, a scrape answered while such clients fill the
connection cap, threads and memory that do not grow with clients. The
timeouts are made small through the command's options; what is asserted
is whether a connection is closed, never how fast.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from typing import Callable, List, Optional

import pytest

pytest.importorskip("prometheus_client")

import pymemcg  # noqa: E402

from pymemcg.http_server import (MAX_HELD_BODIES, BoundedHTTPServer, Limits,  # noqa: E402
                                  Response)

from conftest import bpf_required, require_module, sigint_default  # noqa: E402

# the exporter's threads, sockets and memory, as the load benchmark samples them
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
from exporter_load import status_of  # noqa: E402
from test_prometheus import ENV, LIMIT, exporter, quiet, rel, stable_read  # noqa: E402,F401
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


# --- the server's bounds: clients that connect and do not go away ---

#: how long a test waits for the server to close a connection whose timeout
#: is 1 s: generous, so that a loaded machine does not fail the test
PATIENCE = 20.0


def address(url: str) -> tuple:
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port


def closed_by_server(sock: socket.socket, within: float = PATIENCE,
                     trickle: bytes = b"") -> bool:
    """Whether the server closes `sock` within `within` seconds: what it sends
    is read and dropped. With `trickle`, one byte of it is sent every 0.1 s
    meanwhile (a client that is never quite done)."""
    deadline = time.monotonic() + within
    sent = 0
    while time.monotonic() < deadline:
        if trickle:
            try:
                sock.send(trickle[sent % len(trickle):][:1])
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                return True
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            # over TLS the bytes may be no application data (session tickets):
            # then recv waits, briefly
            sock.settimeout(0.1)
            try:
                if not sock.recv(65536):
                    return True
            except socket.timeout:
                pass
            except (ConnectionResetError, ssl.SSLError):
                return True
    return False


def wait_until(condition: Callable[[], bool], within: float = PATIENCE) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def connect(url: str, count: int, first: bytes = b"") -> List[socket.socket]:
    """`count` connections to the exporter, each sending `first` (maybe nothing)."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(address(url), timeout=10)
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def close_all(socks: List[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_idle_and_half_sent_requests_are_closed_after_the_read_timeout(bpf_ok, cgroups):
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "usage",
                  "--read-timeout", "1", cgroups.base) as (proc, url, scrape):
        idle = connect(url, 10)
        partial = connect(url, 1, b"GET /metr")          # a partial request line
        headers = connect(url, 1, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line
        slowloris = connect(url, 1, b"GET /metrics HTTP/1.1\r\n")
        # a client that was answered and keeps its connection without a next request
        kept = http.client.HTTPConnection(*address(url), timeout=10)
        kept.request("GET", "/metrics")
        assert kept.getresponse().read()
        try:
            assert all(closed_by_server(s) for s in idle + partial + headers)
            assert closed_by_server(slowloris[0], trickle=b"X-Slow: header\r\n")
            assert closed_by_server(kept.sock)
            assert "memcg_usage{" in scrape()
        finally:
            close_all(idle + partial + headers + slowloris)
            kept.close()


def test_a_scrape_is_answered_while_idle_clients_fill_the_connection_cap(bpf_ok, cgroups):
    cap = 16
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "usage",
                  "--max-connections", str(cap), cgroups.base) as (proc, url, scrape):
        clients = connect(url, 2 * cap) + connect(url, cap, b"GET /metrics HTTP/1.1\r\n")
        try:
            # each new client took the place of the one waiting longest
            assert wait_until(lambda: closed_by_server(clients[0], within=0.1))
            assert "memcg_usage{" in scrape()
            held = status_of(proc.pid)
            assert held["sockets"] <= cap + 1, held      # the clients and the listener
            assert held["threads"] <= 3, held            # the loop, scrapes, password checks
        finally:
            close_all(clients)


def test_hundreds_of_idle_clients_cost_no_thread_and_little_memory(bpf_ok, cgroups):
    """Not a measurement (bench/exporter_load.py is): bounds with a wide margin."""
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "usage",
                  "--read-timeout", "120", cgroups.base) as (proc, url, scrape):
        scrape()
        before = status_of(proc.pid)
        clients = connect(url, 150) + connect(url, 150, b"GET /metr")
        try:
            assert wait_until(lambda: status_of(proc.pid)["sockets"] >= 301)
            assert "memcg_usage{" in scrape()
            after = status_of(proc.pid)
            assert after["threads"] <= 3, after
            assert after["rss_kib"] - before["rss_kib"] < 16 * 1024, (before, after)
        finally:
            close_all(clients)


def test_tls_clients_that_never_finish_a_handshake_are_closed(bpf_ok, cgroups, tmp_path):
    bcrypt = require_module("bcrypt")
    require_module("yaml")
    from test_web_config import make_cert
    cert, key = make_cert(str(tmp_path))
    web = tmp_path / "web-config.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                   f"basic_auth_users:\n  prometheus: "
                   f"'{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}'\n")
    trusting = ssl.create_default_context(cafile=cert)

    def get(auth: str = "prometheus:pw") -> int:
        conn = http.client.HTTPSConnection(*address(url), context=trusting, timeout=20)
        try:
            conn.request("GET", "/metrics", headers={
                "Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    cap = 8
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "usage",
                  "--web-config", str(web), "--read-timeout", "3",
                  "--max-connections", str(cap), cgroups.base) as (proc, url, _):
        silent = connect(url, 1)
        hello = connect(url, 1, b"\x16\x03\x01\x02\x00\x01")   # a ClientHello's first bytes
        trickling = connect(url, 1)
        # a client whose handshake is done and that sends no request
        done = trusting.wrap_socket(socket.create_connection(address(url), timeout=10),
                                    server_hostname="localhost")
        try:
            assert closed_by_server(silent[0]) and closed_by_server(hello[0])
            assert closed_by_server(trickling[0], trickle=b"\x16\x03\x01\x02\x00\x01\x00")
            assert closed_by_server(done)
            # clients that never handshake fill the cap: a scrape is still answered,
            # its password checked once (bcrypt) and remembered
            crowd = connect(url, 2 * cap)
            try:
                # the first made room for the others
                assert closed_by_server(crowd[0], within=2)
                assert get() == 200 and get() == 200 and get("prometheus:no") == 401
                assert status_of(proc.pid)["threads"] <= 3
            finally:
                close_all(crowd)
        finally:
            close_all(silent + hello + trickling)
            done.close()


def test_export_fails_at_start_on_a_root_that_is_no_cgroup(tmp_path):
    for root in ("/nonexistent", str(tmp_path)):
        r = subprocess.run([sys.executable, "-m", "pymemcg", "export", "--listen",
                            "127.0.0.1:0", root], capture_output=True, text=True, env=ENV,
                           timeout=30)
        snapshot = subprocess.run([sys.executable, "-m", "pymemcg", "snapshot", root],
                                  capture_output=True, text=True, env=ENV, timeout=30)
        assert r.returncode == snapshot.returncode == 2, r.stderr
        assert r.stderr == snapshot.stderr and r.stderr.startswith(f"pymemcg: {root}")


# --- the server alone (pymemcg.http_server), with answers made up for it ---

@contextmanager
def serving(handler, **limits):
    server = BoundedHTTPServer("127.0.0.1", 0, handler, Limits(**limits))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def slow_reader(server) -> socket.socket:
    """A client that asks and does not read (a tiny receive window)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(server.server_address)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def test_slow_readers_are_closed_and_hold_few_bodies():
    big = 16 << 20   # more than the kernel buffers of a connection

    def answer(request) -> Response:
        # a body of its own each time, as a new tree read's text is
        return Response(200, [("Content-Type", "application/octet-stream")], [bytes(big)],
                        held=object())

    with serving(answer, write_timeout=5, read_timeout=30) as server:
        readers = []
        try:
            for i in range(MAX_HELD_BODIES + 1):
                readers.append(slow_reader(server))
                assert wait_until(lambda: server.counts["answered"] == i + 1)
            # one body more than may be held: the reader of the oldest is closed
            assert wait_until(lambda: server.counts["evicted"] == 1)
            assert server.open_connections() == MAX_HELD_BODIES
            # the others once the write timeout has passed
            assert wait_until(lambda: server.open_connections() == 0)
            assert server.counts["timed_out"] == MAX_HELD_BODIES
        finally:
            close_all(readers)


def test_requests_as_clients_send_them():
    calls = []

    def answer(request) -> Response:
        calls.append(threading.current_thread().name)
        return Response(200, [("Content-Type", "text/plain")], [b"hello ", b"world\n"],
                        held=answer)

    with serving(answer) as server:
        conn = http.client.HTTPConnection(*server.server_address, timeout=10)
        for method in ("GET", "HEAD", "GET"):        # one kept-alive connection
            conn.request(method, "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Length") == "12"
            assert resp.read() == (b"hello world\n" if method == "GET" else b"")
        conn.request("POST", "/", body=b"x")
        resp = conn.getresponse()
        assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
        assert resp.will_close      # its body was not read: the connection ends
        resp.read()
        conn.close()

        def raw(data: bytes) -> bytes:
            with socket.create_connection(server.server_address, timeout=10) as s:
                s.sendall(data)
                out = b""
                while True:
                    piece = s.recv(65536)
                    if not piece:
                        return out
                    out += piece

        # pipelined: three answers, in order, the last closing
        got = raw(b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n"
                  b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert got.count(b"HTTP/1.1 200 OK") == 3 and got.count(b"hello world") == 2
        assert raw(b"GET / HTTP/1.0\r\n\r\n").endswith(b"hello world\n")   # 1.0 closes
        assert raw(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(b"PRI * HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505 ")
        assert raw(b"GET / HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n") \
            .startswith(b"HTTP/1.1 431 ")
        assert set(calls) == {"pymemcg-scrape"}


def test_the_connection_cap_fits_the_open_file_limit():
    code = ("import resource, sys\n"
            "from pymemcg.http_server import fit_file_limit\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))\n"
            "print(fit_file_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")

    def run(soft: int, hard: int) -> list:
        r = subprocess.run([sys.executable, "-c", code, str(soft), str(hard)],
                           capture_output=True, text=True, env=ENV, timeout=30)
        assert r.returncode == 0, r.stderr
        return [int(x) for x in r.stdout.split()]

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"this shell's hard RLIMIT_NOFILE is {hard}")
    cap, soft = run(256, 2048)        # the soft limit is raised for the clients
    assert cap == 1000 and 1000 < soft <= 2048
    cap, soft = run(256, 256)         # the hard one cannot be: fewer clients
    assert 0 < cap < 256 - 64 and soft == 256
    r = subprocess.run([sys.executable, "-c", code, "40", "40"], capture_output=True,
                       text=True, env=ENV, timeout=30)
    assert r.returncode == 1 and "BadServerLimit" in r.stderr and "ulimit -n" in r.stderr
