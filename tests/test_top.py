"""`pymemcg top`: rates, sorting and rendering on made-up snapshots, batch
frames from the real kernel, and the full-screen view in a real terminal
(tmux): the header, the keys, q and Ctrl-C exiting 0 with the terminal
restored.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from pymemcg.cgroupfs import memory_mount, own_memory_cgroup
from pymemcg.cli.format import format_rate
from pymemcg.cli.top import TOP_STATS, TopView
from pymemcg.decode import Selection, Snapshot

ENV = {**os.environ, "PYMEMCG_REQUIRE_BPF": "1"}
NAMES = ["usage", "anon", "pgfault", "oom_kill"]


# --- made-up snapshots ---

class FakeReader:
    backend = "bpf"
    cgroup_version = 2

    def __init__(self, snapshots):
        self.snapshots = list(snapshots)

    def read_tree(self, root):
        return self.snapshots.pop(0)


def snap(rows, names=NAMES):
    """rows: (id, path, {stat: value or None})."""
    selection = Selection(names)
    raw, paths = [], []
    for cid, path, values in rows:
        valid = 0
        vals = []
        for i, n in enumerate(names):
            v = values.get(n)
            if v is not None:
                valid |= 1 << i
            vals.append(v or 0)
        level = 0 if path == "/" else path.count("/")
        raw.append((cid, 0, 0, level, 0, valid & (2**64 - 1), valid >> 64, *vals))
        paths.append(path)
    return Snapshot("/sys/fs/cgroup", selection, raw, paths)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def view_of(snapshots, sort="usage", reverse=False):
    clock = Clock()
    view = TopView(FakeReader(snapshots), "/sys/fs/cgroup", NAMES, sort, 1.0, reverse=reverse,
                   clock=clock)
    return view, clock


def by_path(view):
    return {r.path: r.values for r in view.rows}


def test_rates_are_per_second_between_refreshes():
    view, clock = view_of([
        snap([(1, "/", {"usage": 1000, "anon": 10, "pgfault": 100, "oom_kill": 0}),
              (2, "/a", {"usage": 500, "anon": 5, "pgfault": 50, "oom_kill": 3})]),
        snap([(1, "/", {"usage": 1200, "anon": 20, "pgfault": 300, "oom_kill": 0}),
              (2, "/a", {"usage": 400, "anon": 5, "pgfault": 40, "oom_kill": 3}),    # reset
              (3, "/b", {"usage": 7, "anon": None, "pgfault": 9, "oom_kill": 0})]),  # new
    ])
    view.refresh()
    first = by_path(view)
    assert first["/"] == {"usage": 1000, "anon": 10, "pgfault": None, "oom_kill": None}
    clock.t += 2.0
    view.refresh()
    second = by_path(view)
    assert second["/"] == {"usage": 1200, "anon": 20, "pgfault": 100.0, "oom_kill": 0.0}
    assert second["/a"]["pgfault"] is None        # a counter that went down: no rate
    assert second["/a"]["oom_kill"] == 0.0
    assert second["/b"] == {"usage": 7, "anon": None, "pgfault": None, "oom_kill": None}


def test_a_rate_is_keyed_by_cgroup_id_not_path():
    view, clock = view_of([
        snap([(5, "/x", {"usage": 1, "anon": 1, "pgfault": 10, "oom_kill": 0})]),
        snap([(6, "/x", {"usage": 1, "anon": 1, "pgfault": 20, "oom_kill": 0})]),  # recreated
    ])
    view.refresh()
    clock.t += 1
    view.refresh()
    assert by_path(view)["/x"]["pgfault"] is None


def test_sorting():
    rows = [(1, "/", {"usage": None, "anon": 30, "pgfault": 0, "oom_kill": 0}),
            (2, "/a", {"usage": 500, "anon": 10, "pgfault": 0, "oom_kill": 0}),
            (3, "/b", {"usage": 900, "anon": 20, "pgfault": 0, "oom_kill": 0}),
            (4, "/c", {"usage": 500, "anon": 40, "pgfault": 0, "oom_kill": 0})]
    view, clock = view_of([snap(rows)])
    view.refresh()
    # largest first, ties by path, unavailable last
    assert [r.path for r in view.rows] == ["/b", "/a", "/c", "/"]
    view.reverse = True
    view.sort_rows()
    assert [r.path for r in view.rows] == ["/a", "/c", "/b", "/"]   # unavailable still last
    view.reverse = False
    view.cycle_sort(1)
    assert view.sort == "anon"
    assert [r.path for r in view.rows] == ["/c", "/", "/b", "/a"]
    view.cycle_sort(-2)
    assert view.sort == "cgroup"
    assert [r.path for r in view.rows] == ["/", "/a", "/b", "/c"]


def test_sort_by_a_rate():
    view, clock = view_of([
        snap([(1, "/a", {"usage": 1, "anon": 1, "pgfault": 0, "oom_kill": 0}),
              (2, "/b", {"usage": 2, "anon": 1, "pgfault": 0, "oom_kill": 0})]),
        snap([(1, "/a", {"usage": 1, "anon": 1, "pgfault": 50, "oom_kill": 0}),
              (2, "/b", {"usage": 2, "anon": 1, "pgfault": 10, "oom_kill": 0})]),
    ], sort="pgfault")
    view.refresh()
    clock.t += 0.5
    view.refresh()
    assert [(r.path, r.values["pgfault"]) for r in view.rows] == [("/a", 100.0), ("/b", 20.0)]


def test_render():
    view, clock = view_of([snap([
        (1, "/", {"usage": 3 << 30, "anon": 1536, "pgfault": 0, "oom_kill": 0}),
        (2, "/a-very-long-cgroup-name/that/goes/on", {"usage": 1 << 20, "anon": 0,
                                                      "pgfault": 0, "oom_kill": 0})])])
    view.refresh()
    lines = view.render()
    title, help_line, header = (text for text, _ in lines[:3])
    assert title.startswith("pymemcg top - /sys/fs/cgroup - bpf, cgroup v2 - 2 cgroups")
    assert "every 1s" in title
    assert help_line.startswith("sort: usage (descending)") and "q quit" in help_line
    assert re.split(r"\s+", header.strip()) == ["USAGE", "ANON", "PGFAULT/s", "OOM_KILL/s",
                                                "CGROUP"]
    assert [kind for _, kind in lines] == ["title", "help", "header", "row", "row"]
    assert re.split(r"\s{2,}", lines[3][0].strip()) == ["3.0 GiB", "1.5 KiB", "-", "-", "/"]
    # narrow: rows are cut and marked, nothing is longer than the width
    narrow = view.render(width=50, height=4)
    assert all(len(text) <= 50 for text, _ in narrow)
    assert len(narrow) == 4 and narrow[-1][0].startswith("... 2 more cgroups")
    cut = [text for text, kind in view.render(width=60) if kind == "row"]
    path = cut[1].rsplit("  ", 1)[-1]
    assert len(cut[1]) == 60 and ".." in path                # the path loses its middle
    assert path.startswith("/a-") and path.endswith("/goes/on"), path
    # the sorted column is found for highlighting
    x, w = view.sort_span()
    assert header[x:x + w].strip() == "USAGE"


def test_format_rate():
    assert format_rate(None) == "-"
    assert format_rate(0) == "0"
    assert format_rate(0.25) == "0.2" or format_rate(0.25) == "0.3"
    assert format_rate(9.94) == "9.9"
    assert format_rate(812.4) == "812"
    assert format_rate(12345) == "12.3k"
    assert format_rate(4.1e6) == "4.1M"
    assert format_rate(2.5e9) == "2.5G"


def test_unknown_sort_is_a_user_error():
    r = subprocess.run([sys.executable, "-m", "pymemcg", "top", "--batch", "--sort", "nosuch"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("pymemcg: --sort nosuch:") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pymemcg", "top", "--interval", "0"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "positive" in r.stderr and "Traceback" not in r.stderr


# --- the real kernel ---

def own_rel():
    mount = memory_mount()
    rel = "/" + os.path.relpath(own_memory_cgroup(), mount.mountpoint)
    return "/" if rel == "/." else rel


def test_batch_frames(bpf_ok):
    r = subprocess.run([sys.executable, "-m", "pymemcg", "top", "--batch", "-n", "2",
                        "--interval", "0.3", "--backend", "bpf"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    frames = [f for f in r.stdout.split("\n\n") if f.strip()]
    assert len(frames) == 2
    labels = [n.upper() + ("/s" if n in ("pgfault", "pgmajfault", "oom_kill") else "")
              for n in TOP_STATS]
    for i, frame in enumerate(frames):
        lines = frame.splitlines()
        assert lines[0].startswith(f"pymemcg top - {memory_mount().mountpoint} - bpf, cgroup v")
        assert lines[1] == "sort: usage (descending)"
        assert re.split(r"\s+", lines[2].strip()) == labels + ["CGROUP"]
        rows = lines[3:]
        paths = [row.rsplit("  ", 1)[-1] for row in rows]
        assert "/" in paths and own_rel() in paths
        rate_cells = [re.split(r"\s{2,}", row.strip())[TOP_STATS.index("pgfault")] for row in rows]
        if i == 0:
            assert set(rate_cells) == {"-"}       # no rate before a second sample
        else:
            own = rows[paths.index(own_rel())]
            cell = re.split(r"\s{2,}", own.strip())[TOP_STATS.index("pgfault")]
            assert re.fullmatch(r"\d+(\.\d)?[kMG]?", cell), own


# --- a real terminal: tmux ---

@pytest.fixture
def tmux():
    """A private tmux server (its own socket in a temporary directory), killed and
    removed at the end."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    sockdir = tempfile.mkdtemp(prefix="pymemcg-tmux-")
    base = ["tmux", "-S", os.path.join(sockdir, "sock"), "-f", "/dev/null"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
           "TERM": "xterm-256color", "LANG": "C.UTF-8", "PYMEMCG_REQUIRE_BPF": "1",
           "PS1": "$ "}
    subprocess.run(base + ["new-session", "-d", "-s", "t", "-x", "220", "-y", "40", "sh"],
                   check=True, env=env)

    class Term:
        def send(self, *keys):
            subprocess.run(base + ["send-keys", "-t", "t", *keys], check=True)

        def screen(self):
            return subprocess.run(base + ["capture-pane", "-p", "-t", "t"], check=True,
                                  capture_output=True, text=True).stdout

        def wait_for(self, pattern, timeout=30.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = self.screen()
                m = re.search(pattern, text, re.M)
                if m:
                    return m, text
                time.sleep(0.1)
            raise AssertionError(f"{pattern!r} never showed; the screen:\n{self.screen()}")

    try:
        yield Term()
    finally:
        subprocess.run(base + ["kill-server"], capture_output=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def start_top(term, marker):
    # ROOT = this process's cgroup: its row is on the screen whatever else the host runs
    term.send(f"clear; sh -c 'echo PID=$$; exec {sys.executable} -m pymemcg top --backend bpf "
              f"--interval 0.5 {own_memory_cgroup()}'; echo {marker}=$?", "Enter")


def assert_restored(term, pid, marker):
    m, text = term.wait_for(rf"^{marker}=(\d+)")
    assert m.group(1) == "0", text
    assert "pymemcg top -" not in text, "the full-screen view is still shown"
    # the marker is split where it is typed, so that only the output matches
    term.send("stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo | tr '\\n' ' '; "
              "echo '<''STTY>'", "Enter")
    m, text = term.wait_for(r"^(.*)<STTY>\s*$")
    assert m.group(1).split() == ["icanon", "echo"], text
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "top did not exit"


def test_top_in_a_terminal_q(bpf_ok, tmux):
    start_top(tmux, "EXIT_Q")
    pid = int(tmux.wait_for(r"^PID=(\d+)")[0].group(1))
    m, text = tmux.wait_for(r"^pymemcg top - .* - bpf, cgroup v\d - \d+ cgroups - every 0\.5s")
    lines = text.splitlines()
    header = next(line for line in lines if "CGROUP" in line)
    assert re.split(r"\s+", header.strip())[:3] == ["USAGE", "ANON", "FILE"]
    assert "PGFAULT/s" in header
    assert any(line.rstrip().endswith(own_rel()) for line in lines), text
    assert any(line.startswith("sort: usage (descending)") for line in lines), text
    # keys: the next sort column, then reverse
    tmux.send(">")
    tmux.wait_for(r"^sort: anon \(descending\)")
    tmux.send("r")
    tmux.wait_for(r"^sort: anon \(ascending\)")
    tmux.send("q")
    assert_restored(tmux, pid, "EXIT_Q")


def test_top_in_a_terminal_ctrl_c(bpf_ok, tmux):
    start_top(tmux, "EXIT_C")
    pid = int(tmux.wait_for(r"^PID=(\d+)")[0].group(1))
    tmux.wait_for(r"^pymemcg top - ")
    tmux.send("C-c")
    assert_restored(tmux, pid, "EXIT_C")
