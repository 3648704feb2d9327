"""examples/oomd.py, the systemd-oomd-like daemon on pymemcg.

Its decisions on fed numbers (systemd-oomd's rules: duration, reclaim
activity, pgscan rate, swap, omit/avoid, the post-action delay); the files
it reads, parsed; and on a cgroup v2 kernel (the matrix's guests), under real
pressure: it names the cgroup with the highest pgscan rate that is not
omitted, from the files and through pymemcg, and with --act kills it through
cgroup.kill while the others live. On cgroup v1 it refuses.
"""
from __future__ import annotations

import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from pymemcg.cgroupfs import memory_mount
from conftest import MiB

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "oomd.py"


def _load():
    spec = importlib.util.spec_from_file_location("oomd_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


oomd = _load()


def S(path: str, full: int = 0, pgscan: int = 0, current: int = MiB, swap: int = 0):
    return oomd.Sample(path, full, pgscan, current, swap, 0, 0)


class Fed:
    """A source that returns what the test feeds it."""
    name = "fed"

    def __init__(self) -> None:
        self.mon: Dict[str, object] = {}
        self.cands: List[object] = []
        self.file_avg10: Dict[str, int] = {}      # what memory.pressure says, where it differs

    def monitored(self, paths):
        return {p: self.mon[p] for p in paths if p in self.mon}

    def candidates(self, root):
        return [c for c in self.cands if oomd.under(c.path, root)]

    def confirm(self, sample):
        return self.file_avg10.get(sample.path, sample.full_avg10_x100)


def daemon(prefs: Optional[Dict[str, int]] = None, **kw):
    source = Fed()
    d = oomd.Oomd(source, "/nowhere", [oomd.Watch("/w", 1000, 2.0)], ["/w"], **kw)
    d.preference = lambda path, prefix: (prefs or {}).get(path, oomd.NONE)
    return d, source


# --- decisions on fed numbers ---

def test_candidates_are_leaves_and_oom_groups():
    walk = [("/w", False), ("/w/a", False), ("/w/a/x", False), ("/w/g", True),
            ("/w/g/y", False), ("/w/gb", False), ("/w/b", False)]
    assert [walk[i][0] for i in oomd.candidates_of("/w", walk)] == \
        ["/w/a/x", "/w/g", "/w/gb", "/w/b"]
    assert oomd.candidates_of("/w", [("/w", False)]) == [0]
    assert oomd.candidates_of("/", [("/", False), ("/a", True), ("/a/b", False)]) == [1]


def test_pressure_kills_the_highest_pgscan_rate_after_the_duration():
    """avg10 above 10% from t=0, duration 2 s: nothing at 0 and 1; at 2 the
    candidate with the highest pgscan since the previous poll, omit never,
    avoid after every other, a new candidate's whole count as its rate; then
    15 s without a kill while pressure stays."""
    d, src = daemon({"/w/o": oomd.OMIT, "/w/v": oomd.AVOID})
    feeds = [  # (monitored pgscan, {candidate: pgscan})
        (100, {"/w/a": 100, "/w/o": 1000, "/w/v": 50}),
        (200, {"/w/a": 300, "/w/o": 5000, "/w/v": 2000}),
        (300, {"/w/a": 500, "/w/o": 90000, "/w/v": 4000, "/w/new": 150}),
    ]
    for t, (mon, cands) in enumerate(feeds):
        src.mon = {"/w": S("/w", full=2000, pgscan=mon)}
        src.cands = [S(p, pgscan=n) for p, n in cands.items()]
        got = d.poll_pressure(float(t))
        assert got == (None if t < 2 else "/w/a"), t
    assert d.rate(d.cands["/w/a"]) == 200 and d.rate(d.cands["/w/new"]) == 150
    for t in (3.0, 16.9):
        assert d.poll_pressure(t) is None      # the post-action delay
    assert d.poll_pressure(17.0) == "/w/a"


def test_pressure_needs_reclaim_and_a_steady_excess():
    d, src = daemon()
    src.cands = [S("/w/a", pgscan=10)]
    src.mon = {"/w": S("/w", full=2000, pgscan=0)}       # no reclaim ever
    assert [d.poll_pressure(float(t)) for t in range(5)] == [None] * 5
    d, src = daemon()
    src.cands = [S("/w/a", pgscan=10)]
    for t, full in enumerate([2000, 2000, 1000, 2000, 2000, 2000]):   # 10.00% is not above
        src.mon = {"/w": S("/w", full=full, pgscan=5 + t)}
        assert d.poll_pressure(float(t)) == ("/w/a" if t == 5 else None), t
    # reclaim seen last at t=0, and not in the 30 s since
    d, src = daemon()
    src.cands = [S("/w/a", pgscan=10)]
    src.mon = {"/w": S("/w", full=2000, pgscan=7)}
    assert [d.poll_pressure(t) for t in (0.0, 1.0, 2.0)] == [None, None, "/w/a"]
    d.delay_start = None
    assert d.poll_pressure(31.0) is None


def test_pressure_above_the_limit_is_confirmed_by_the_file():
    """A watched cgroup gone idle keeps its last averages in BPF while its
    file decays them: the file's value decides, and it alone."""
    d, src = daemon()
    src.cands = [S("/w/a", pgscan=10)]
    src.file_avg10 = {"/w": 900}                          # the file: below 10%
    for t in range(4):
        src.mon = {"/w": S("/w", full=2000, pgscan=5 + t)}   # BPF: 20%, undecayed
        assert d.poll_pressure(float(t)) is None
    src.file_avg10 = {}
    assert [d.poll_pressure(float(t)) for t in (4, 5, 6)] == [None, None, "/w/a"]


def test_candidates_without_scans_or_memory_are_skipped():
    d, src = daemon()
    src.mon = {"/w": S("/w", full=2000, pgscan=1)}
    src.cands = [S("/w/empty", pgscan=0, current=0)]
    assert [d.poll_pressure(float(t)) for t in range(4)] == [None] * 4


def test_swap_kills_the_largest_swap_user_above_5_percent(tmp_path):
    meminfo = tmp_path / "meminfo"
    d, src = daemon({"/w/z": oomd.OMIT, "/w/v": oomd.AVOID}, meminfo=str(meminfo))
    src.cands = [S("/w/x", swap=40 << 10), S("/w/y", swap=200 << 10),
                 S("/w/z", swap=300 << 10), S("/w/v", swap=500 << 10)]
    for available, swap_free, victim in ((50, 50, "/w/y"), (200, 50, None), (50, 200, None)):
        meminfo.write_text(f"MemTotal: 1000 kB\nMemFree: 1 kB\nMemAvailable: {available} kB\n"
                           f"SwapTotal: 1000 kB\nSwapFree: {swap_free} kB\n")
        assert d.poll_swap(0.0) == victim
    src.cands = [S("/w/x", swap=50 << 10)]     # 5% of swap is not above it
    meminfo.write_text("MemTotal: 1000 kB\nMemAvailable: 1 kB\nSwapTotal: 1000 kB\n"
                       "SwapFree: 1 kB\n")
    assert d.poll_swap(0.0) is None


def test_preference_from_xattrs_and_owners(tmp_path):
    """user.oomd_omit / user.oomd_avoid as systemd reads them (a boolean),
    ignored on a cgroup owned by another user than the monitored one's."""
    for name in ("w", "w/o", "w/v", "w/n", "w/other"):
        (tmp_path / name).mkdir()
    try:
        os.setxattr(tmp_path / "w/o", "user.oomd_omit", b"yes")
    except OSError as e:
        pytest.fail(f"no user xattrs on {tmp_path}'s file system: {e}")
    os.setxattr(tmp_path / "w/v", "user.oomd_avoid", b"1")
    os.setxattr(tmp_path / "w/n", "user.oomd_omit", b"0")
    os.setxattr(tmp_path / "w/other", "user.oomd_omit", b"1")
    os.chown(tmp_path / "w/other", 4321, 4321)
    d = oomd.Oomd(Fed(), str(tmp_path), [], [])
    assert [d.preference(p, "/w") for p in ("/w/o", "/w/v", "/w/n", "/w/other")] == \
        [oomd.OMIT, oomd.AVOID, oomd.NONE, oomd.NONE]


def test_files_are_parsed_as_systemd_reads_them(tmp_path):
    files = {"memory.pressure": "some avg10=9.99 avg60=0.00 avg300=0.00 total=5\n"
                                "full avg10=12.05 avg60=1.00 avg300=0.00 total=3\n",
             "memory.stat": "anon 1\npgscan 777\npgsteal 5\npgscan_kswapd 700\n",
             "memory.current": "4096\n", "memory.swap.current": "8192\n",
             "memory.min": "max\n", "memory.low": "0\n", "memory.oom.group": "0\n"}
    for cg in ("w", "w/a", "w/g", "w/g/x"):
        (tmp_path / cg).mkdir()
        for name, text in files.items():
            (tmp_path / cg / name).write_text(text)
    (tmp_path / "w/g/memory.oom.group").write_text("1\n")
    src = oomd.FileSource(str(tmp_path))
    s = src.sample("/w/a")
    assert (s.full_avg10_x100, s.pgscan, s.current, s.swap, s.memory_min, s.memory_low,
            s.oom_group) == (1205, 777, 4096, 8192, oomd.pymemcg.MAX, 0, False)
    assert sorted(c.path for c in src.candidates("/w")) == ["/w/a", "/w/g"]


# --- the real kernel ---

def test_refuses_cgroup_v1(cgroup_version):
    if cgroup_version != 1:
        pytest.skip("cgroup v2: the daemon runs here (test_acts_under_real_pressure)")
    p = subprocess.run([sys.executable, str(EXAMPLE), "--pressure", "/x"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "cgroup v2 only" in p.stderr and "cgroup v1" in p.stderr, p


# each thrasher reads a file of its own, bigger than its memory.high, over and
# over: page cache reclaimed and refaulted (pgscan, and memory stalls), no
# swap; with a pause after each MiB it scans less
THRASH = """
import os, sys, time
size, pause = {size}, {pause}
name = "/var/tmp/pymemcg-oomd-%d" % os.getpid()
fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o600)
os.unlink(name)
for _ in range(size >> 20):
    os.write(fd, b"x" * (1 << 20))
os.fsync(fd)
print("ready", flush=True)
while True:
    for off in range(0, size, 1 << 20):
        os.pread(fd, 1 << 20, off)
        time.sleep(pause)
"""
IDLE = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"


def pgscan(cg: str) -> int:
    with open(os.path.join(cg, "memory.stat")) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("pgscan "))


class Daemon:
    """examples/oomd.py as a user runs it; its log lines through a queue."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(EXAMPLE), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout],
                         daemon=True).start()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, f"the daemon ended: {self.seen}"
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in {timeout:.0f} s: {self.seen}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            assert self.proc.wait(timeout=30) == 0, self.seen
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def test_acts_under_real_pressure(bpf_ok, cgroups, cgroup_version):
    """A cgroup whose children thrash their page cache under memory.high:
    full pressure; the daemon (limit 2%, 1 s) names the child with the
    highest pgscan rate that is not omitted, reading the files (dry run), and
    kills it through pymemcg's numbers with --act; the others live. The
    omitted child thrashes without pause, the other with pauses, so that the
    omitted one scans faster: without its mark it would be the victim."""
    if cgroup_version != 2:
        pytest.skip("cgroup v2 only (test_refuses_cgroup_v1 is v1's)")
    mount = memory_mount().mountpoint.rstrip("/")
    w = cgroups.make("w")
    procs = {}
    for name, high, script in (("a", 8, THRASH.format(size=24 * MiB, pause=0.1)),
                               ("o", 16, THRASH.format(size=48 * MiB, pause=0)),
                               ("b", None, IDLE)):
        cg = cgroups.make(f"w/{name}")
        if high:
            with open(os.path.join(cg, "memory.high"), "w") as f:
                f.write(str(high * MiB))
        procs[name] = cgroups.spawn(cg, script)
    os.setxattr(os.path.join(w, "o"), "user.oomd_omit", b"1")
    rel = w[len(mount):]
    before = {n: pgscan(os.path.join(w, n)) for n in "ao"}
    t0 = time.monotonic()
    dry = Daemon("--pressure", f"{rel}:2:1", "--files")
    try:
        line = dry.wait_for("would kill", 240)
    finally:
        dry.stop()
    rates = {n: (pgscan(os.path.join(w, n)) - before[n]) / (time.monotonic() - t0) for n in "ao"}
    assert f"would kill {rel}/a " in line, dry.seen
    # the omitted one scanned more: it would have been the victim without its mark
    assert rates["o"] > rates["a"], rates
    assert all(p.poll() is None for p in procs.values())
    act = Daemon("--pressure", f"{rel}:2:1", "--act")
    try:
        line = act.wait_for("killed", 240)
    finally:
        act.stop()
    assert f"killed {rel}/a " in line, act.seen
    assert procs["a"].wait(timeout=30) == -signal.SIGKILL
    assert procs["o"].poll() is None and procs["b"].poll() is None
