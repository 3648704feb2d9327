#!/usr/bin/env python3
"""`pymemcg export` under load: scrapes while idle and slow clients hold
connections, and the exporter's memory.

Part 1: a tree of --cgroups cgroups (default 1,000) made under this
process's memory cgroup, served by `pymemcg export --backend bpf` (with
--tls, over TLS with a throwaway certificate). --clients connections
(default 1,000) are opened and kept open, a quarter of each kind:

- idle: connect, send nothing;
- partial: half a request line (`GET /metr`), then nothing;
- slowloris: a request whose header lines arrive a byte per second;
- slow readers: a whole request, then a 4 KiB receive window never read.

Over TLS, idle and partial clients never handshake (partial sends a
ClientHello's first bytes); the others send over TLS. Whenever the exporter closes one of them, it is
opened again, so the crowd stays at --clients. Meanwhile a scraper, as
Prometheus does (a new connection, `Accept-Encoding: gzip`, the whole body
read and checked to hold every cgroup), scrapes --scrapes times, one every
0.5 s; each scrape's latency (connect to last byte) is reported, and the
exporter's resident memory (VmRSS, and VmHWM: the peak), threads and sockets
are sampled every 0.25 s.

Part 2: the exporter alone serving a tree of --big cgroups (default 10,000):
its memory after scrapes with and without gzip, one at a time and four at
once.

Root, from the checkout after `make develop`; the cgroups made are removed
at the end (also on Ctrl-C or SIGTERM):

    .venv/bin/python bench/exporter_load.py                  # 1,000 clients, 1,000 cgroups
    .venv/bin/python bench/exporter_load.py --tls --big 0
    .venv/bin/python bench/exporter_load.py --json

Every client and scrape goes to 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pymemcg.cgroupfs import own_memory_cgroup  # noqa: E402
from pymemcg_bench.cgroups import BenchCgroups, make_tree  # noqa: E402

MiB = 1 << 20
KINDS = ("idle", "partial", "slowloris", "slow_reader")
#: a ClientHello's first bytes: a handshake record header and the message type
HELLO_START = b"\x16\x03\x01\x02\x00\x01"
TCP_ESTABLISHED = 1     # tcp_info.tcpi_state (include/net/tcp_states.h)


def log(msg: str) -> None:
    print(f"exporter_load: {msg}", file=sys.stderr, flush=True)


# --- the exporter ---

@contextmanager
def exporter(root: str, *extra: str) -> Iterator[Tuple[subprocess.Popen, str]]:
    """`pymemcg export` on a free loopback port: (process, URL); stopped on the way out."""
    proc = subprocess.Popen([sys.executable, "-m", "pymemcg", "export", "--listen",
                             "127.0.0.1:0", "--backend", "bpf", *extra, root],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"(https?://\S+/metrics)", line)
        if not m:
            raise SystemExit(f"the exporter did not start: {line}{proc.stderr.read()}")
        yield proc, m.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def status_of(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM (KiB), threads and open sockets of a process."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "hwm_kib": int(fields["VmHWM"].split()[0]),
            "threads": int(fields["Threads"]), "sockets": sockets}


class Sampler:
    """The exporter's status every 0.25 s, in a thread: the largest of each figure."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: Dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for k, v in status_of(self.pid).items():
                self.peak[k] = max(self.peak.get(k, 0), v)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- the scraper ---

def scrape(url: str, context: Optional[ssl.SSLContext], zipped: bool = True,
           timeout: float = 30) -> Tuple[float, int, bytes]:
    """One scrape on a new connection: (seconds to the last byte, status, body)."""
    import http.client
    u = urllib.parse.urlsplit(url)
    t0 = time.perf_counter()
    if context is not None:
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=context, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path, headers={"Accept-Encoding": "gzip"} if zipped else {})
        resp = conn.getresponse()
        body = resp.read()
        took = time.perf_counter() - t0
        if resp.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return took, resp.status, body
    finally:
        conn.close()


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace: connections dropped
    because a listener's accept queue was full (the client retries its SYN
    after 1 s, which a scrape's latency would show)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split()))["ListenOverflows"])
    return -1


def cgroups_in(body: bytes) -> int:
    m = re.search(rb"^pymemcg_cgroups (\S+)$", body, re.M)
    return int(float(m.group(1))) if m else -1


# --- the crowd ---

class Crowd:
    """`count` clients of the four kinds, kept at that count for as long as it runs."""

    def __init__(self, url: str, count: int, context: Optional[ssl.SSLContext]) -> None:
        u = urllib.parse.urlsplit(url)
        self.addr = (u.hostname, u.port)
        self.tls = context
        self.kinds = [KINDS[i % len(KINDS)] for i in range(count)]
        self.socks: List[Optional[socket.socket]] = [None] * count
        self.sent = [0] * count
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> None:
        kind = self.kinds[i]
        s = socket.socket()
        if kind == "slow_reader":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        try:
            s.connect(self.addr)
            if self.tls is not None:
                if kind == "partial":
                    s.sendall(HELLO_START)
                elif kind in ("slowloris", "slow_reader"):
                    s = self.tls.wrap_socket(s, server_hostname="localhost")
            if kind == "partial" and self.tls is None:
                s.sendall(b"GET /metr")
            elif kind == "slowloris":
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            elif kind == "slow_reader":
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            s.close()
            return
        s.setblocking(False)
        self.socks[i] = s
        self.sent[i] = 0

    def fill(self) -> None:
        for i in range(len(self.socks)):
            if self.socks[i] is None:
                self._open(i)

    @staticmethod
    def _closed(s: socket.socket) -> bool:
        """Whether the exporter closed it: the connection's TCP state is no longer
        ESTABLISHED (it read nothing of what was sent: slow readers read nothing)."""
        try:
            return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED
        except OSError:
            return True

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.5):
            tick += 1
            for i, s in enumerate(self.socks):
                if s is None:
                    continue
                kind = self.kinds[i]
                if kind == "slowloris" and tick % 2 == 0:
                    try:
                        s.send(b"X-Slow: one byte a second\r\n"[self.sent[i] % 26:][:1])
                        self.sent[i] += 1
                    except (BlockingIOError, ssl.SSLWantWriteError):
                        pass
                    except OSError:
                        s.close()
                        self.socks[i] = None
                        continue
                if self._closed(s):
                    s.close()
                    self.socks[i] = None
            missing = [i for i, s in enumerate(self.socks) if s is None]
            self.reopened += len(missing)
            for i in missing:
                if self._stop.is_set():
                    break
                self._open(i)

    def __enter__(self) -> "Crowd":
        self.fill()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            if s is not None:
                s.close()


# --- the parts ---

def tls_files(directory: str) -> Tuple[str, str]:
    """A throwaway certificate and a web-config.yml that asks for TLS."""
    cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    web = os.path.join(directory, "web-config.yml")
    with open(web, "w") as f:
        f.write(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    return cert, web


def under_load(root: str, expected: int, clients: int, scrapes: int, tls: bool,
               extra: List[str]) -> dict:
    tmp = tempfile.mkdtemp(prefix="exporter-load-")
    context = None
    if tls:
        cert, web = tls_files(tmp)
        context = ssl.create_default_context(cafile=cert)
        extra = [*extra, "--web-config", web]
    with exporter(root, *extra) as (proc, url):
        for _ in range(3):
            scrape(url, context)
        alone = [scrape(url, context)[0] for _ in range(scrapes)]
        before = status_of(proc.pid)
        overflows = listen_overflows()
        log(f"{clients} clients connecting")
        t0 = time.monotonic()
        with Crowd(url, clients, context) as crowd, Sampler(proc.pid) as sampler:
            connect_s = time.monotonic() - t0
            time.sleep(2)
            latencies, failures = [], []
            for _ in range(scrapes):
                try:
                    took, status, body = scrape(url, context)
                    if status != 200 or cgroups_in(body) != expected:
                        failures.append(f"status {status}, {cgroups_in(body)} cgroups")
                    latencies.append(took)
                except OSError as e:
                    failures.append(repr(e))
                time.sleep(0.5)
            held = sum(s is not None for s in crowd.socks)
            during = status_of(proc.pid)
            overflows = listen_overflows() - overflows
        after = status_of(proc.pid)
    return {
        "tls": tls, "cgroups": expected, "clients": clients, "clients_connect_s": connect_s,
        "clients_open_at_end": held, "reopened": crowd.reopened,
        "scrape_alone_s": {"median": statistics.median(alone), "max": max(alone)},
        "scrape_under_load_s": {"median": statistics.median(latencies) if latencies else None,
                                "max": max(latencies) if latencies else None,
                                "count": len(latencies)},
        "failures": failures, "listen_overflows": overflows,
        "exporter_before": before, "exporter_during": during, "exporter_peak": sampler.peak,
        "exporter_after": after,
    }


def big_tree(root: str, expected: int, extra: List[str]) -> dict:
    with exporter(root, *extra) as (proc, url):
        out = {"cgroups": expected, "after_start": status_of(proc.pid)}
        for name, zipped in (("plain", False), ("gzip", True)):
            times = []
            for _ in range(5):
                took, status, body = scrape(url, None, zipped)
                assert status == 200 and cgroups_in(body) == expected, (status, cgroups_in(body))
                times.append(took)
                time.sleep(1.1)       # past --min-interval: a new tree read each time
            out[f"{name}_scrape_s"] = statistics.median(times)
            out[f"after_{name}"] = status_of(proc.pid)
            out[f"{name}_bytes"] = len(body) if not zipped else None
        threads = [threading.Thread(target=scrape, args=(url, None, i % 2 == 0))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["after_4_at_once"] = status_of(proc.pid)
    return out


def report(results: dict) -> str:
    lines = []
    for r in results.get("under_load", []):
        lines.append(f"{'TLS' if r['tls'] else 'plain HTTP'}: {r['cgroups']:,} cgroups, "
                     f"{r['clients']:,} clients ({', '.join(KINDS)}; "
                     f"{r['clients_open_at_end']:,} open at the end, {r['reopened']:,} "
                     f"reopened after the exporter closed them)")
        a, u = r["scrape_alone_s"], r["scrape_under_load_s"]
        lines.append(f"  scrape alone: median {a['median'] * 1e3:.0f} ms, max "
                     f"{a['max'] * 1e3:.0f} ms")
        failed = f"{len(r['failures'])} failed" + \
            (": " + "; ".join(r["failures"][:3]) if r["failures"] else "")
        lines.append(f"  scrape under load: median {u['median'] * 1e3:.0f} ms, max "
                     f"{u['max'] * 1e3:.0f} ms ({u['count']} scrapes, {failed}; "
                     f"accept-queue overflows meanwhile: {r['listen_overflows']})")
        b, p = r["exporter_before"], r["exporter_peak"]
        lines.append(f"  exporter RSS: {b['rss_kib'] / 1024:.1f} MiB before, peak "
                     f"{p['rss_kib'] / 1024:.1f} MiB under load (VmHWM "
                     f"{p['hwm_kib'] / 1024:.1f} MiB); threads {b['threads']} -> peak "
                     f"{p['threads']}; sockets peak {p['sockets']:,}")
    big = results.get("big")
    if big:
        lines.append(f"{big['cgroups']:,} cgroups: a scrape is {big['plain_bytes'] / MiB:.1f} MiB "
                     f"of text; median scrape {big['plain_scrape_s'] * 1e3:.0f} ms plain, "
                     f"{big['gzip_scrape_s'] * 1e3:.0f} ms gzip")
        for k in ("after_start", "after_plain", "after_gzip", "after_4_at_once"):
            s = big[k]
            lines.append(f"  {k.replace('_', ' ')}: RSS {s['rss_kib'] / 1024:.1f} MiB, VmHWM "
                         f"{s['hwm_kib'] / 1024:.1f} MiB, threads {s['threads']}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--cgroups", type=int, default=1000)
    p.add_argument("--big", type=int, default=10_000, help="part 2's tree (0: skip it)")
    p.add_argument("--scrapes", type=int, default=40)
    p.add_argument("--tls", action="store_true", help="part 1 over TLS as well")
    p.add_argument("--json", action="store_true")
    p.add_argument("--export-arg", action="append", default=[],
                   help="an extra argument for `pymemcg export` (repeat)")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.clients + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    own = own_memory_cgroup()
    if own is None:
        raise SystemExit("no memory cgroup of this process: run where the memory controller is")
    results: dict = {"under_load": []}
    with BenchCgroups(own) as made:
        top = made.path(f"load{args.cgroups}")
        log(f"making {args.cgroups:,} cgroups under {top}")
        make_tree(top, args.cgroups)
        for tls in ((False, True) if args.tls else (False,)):
            results["under_load"].append(under_load(top, args.cgroups, args.clients,
                                                    args.scrapes, tls, args.export_arg))
        if args.big:
            top = made.path(f"big{args.big}")
            log(f"making {args.big:,} cgroups under {top}")
            make_tree(top, args.big)
            results["big"] = big_tree(top, args.big, args.export_arg)
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
