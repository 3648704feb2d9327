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
from pymemcg import Reader
from pymemcg.cli.top import TOP_EXTRAS, TOP_STATS, TopView, served, top_columns
from pymemcg.decode import MAX, RAW_MAX, Selection, Snapshot

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


def view_of(snapshots, sort="usage", reverse=False, names=NAMES):
    clock = Clock()
    view = TopView(FakeReader(snapshots), "/sys/fs/cgroup", names, sort, 1.0, reverse=reverse,
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


PSI_NAMES = ["usage", "pressure_some_total_us", "pressure_full_total_us",
             "pressure_some_avg10_x100", "limit"]


def test_pressure_is_the_share_of_time_stalled_between_refreshes():
    """Pressure totals (microseconds) become the percent of the interval spent
    stalled, from their difference between refreshes; averages are shown as
    the kernel's percent; a limit not set is "max"."""
    names = PSI_NAMES
    view, clock = view_of([
        snap([(1, "/", {"usage": 10, "pressure_some_total_us": 1_000_000,
                        "pressure_full_total_us": 400_000, "pressure_some_avg10_x100": 523,
                        "limit": RAW_MAX}),
              (2, "/a", {"usage": 5, "pressure_some_total_us": 7, "pressure_full_total_us": 7,
                         "pressure_some_avg10_x100": 0, "limit": 64 << 20}),
              (3, "/b", {"usage": 1, "limit": 1 << 30})], names),    # no pressure: unavailable
        snap([(1, "/", {"usage": 10, "pressure_some_total_us": 1_500_000,
                        "pressure_full_total_us": 450_000, "pressure_some_avg10_x100": 1250,
                        "limit": RAW_MAX}),
              (2, "/a", {"usage": 5, "pressure_some_total_us": 7, "pressure_full_total_us": 7,
                         "pressure_some_avg10_x100": 0, "limit": 64 << 20}),
              (3, "/b", {"usage": 1, "limit": 1 << 30})], names),
    ], sort="pressure_some_total_us", names=names)
    view.refresh()
    assert by_path(view)["/"]["pressure_some_total_us"] is None   # no interval yet
    clock.t += 2.0
    view.refresh()
    rows = by_path(view)
    # 500,000 us stalled in 2 s: 25 %; 50,000 us: 2.5 %
    assert rows["/"]["pressure_some_total_us"] == pytest.approx(25.0)
    assert rows["/"]["pressure_full_total_us"] == pytest.approx(2.5)
    assert rows["/a"]["pressure_some_total_us"] == 0.0
    assert rows["/b"]["pressure_some_total_us"] is None
    assert rows["/"]["limit"] is MAX
    assert [r.path for r in view.rows] == ["/", "/a", "/b"]       # unavailable last
    lines = view.render()
    assert re.split(r"\s+", lines[2][0].strip()) == ["USAGE", "PSI_SOME%", "PSI_FULL%",
                                                      "PRESSURE_SOME_AVG10_X100", "LIMIT",
                                                      "CGROUP"]
    cells = {row.rsplit("  ", 1)[-1]: re.split(r"\s{2,}", row.strip())[:-1]
             for row, kind in lines if kind == "row"}
    assert cells["/"] == ["10 B", "25.0", "2.5", "12.5", "max"]
    assert cells["/a"] == ["5 B", "0", "0", "0", "64.0 MiB"]
    assert cells["/b"] == ["1 B", "-", "-", "-", "1.0 GiB"]
    # sorted by the limit: no limit (max) is the largest
    view.sort = "limit"
    view.sort_rows()
    assert [r.path for r in view.rows] == ["/", "/b", "/a"]


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
    labels += [{"pressure_some_total_us": "PSI_SOME%", "memory_min": "MIN", "memory_low": "LOW",
                "memory_high": "HIGH", "soft_limit": "SOFT_LIMIT", "limit": "LIMIT"}[n]
               for n in extras_served()]
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


@pytest.fixture
def mount():
    return memory_mount()


def extras_served():
    with Reader(list(TOP_STATS + TOP_EXTRAS), backend="bpf", for_trees=True) as reader:
        return [n for n in TOP_EXTRAS if served(reader.sources[n])]


def test_top_columns_follow_what_the_host_serves(bpf_ok, mount):
    """Without --stats, top shows pressure and each protection or limit where
    this host serves it, and nothing this host cannot serve."""
    with Reader(list(TOP_STATS + TOP_EXTRAS), backend="bpf", for_trees=True) as reader:
        sources = reader.sources
        columns = top_columns(sources)
    assert columns[:len(TOP_STATS)] == list(TOP_STATS)
    for name in TOP_EXTRAS:
        assert (name in columns) == (not sources[name].startswith("unavailable:")), \
            (name, sources[name])
    if mount.version == 1:
        # v1: the soft limit and the limit; no v2 protection, no pressure
        assert columns[len(TOP_STATS):] == ["soft_limit", "limit"]
    else:
        assert {"memory_min", "memory_low", "memory_high", "limit"} <= set(columns)
        assert "soft_limit" not in columns
        psi = open("/proc/pressure/memory").read() if os.path.exists("/proc/pressure/memory") \
            else ""
        assert ("pressure_some_total_us" in columns) == bool(psi), sources


def test_batch_shows_a_limit_and_max(bpf_ok, mount, cgroups):
    """A cgroup's limit in its row, "max" where none is set."""
    child = cgroups.make("toplim")
    fname = "memory.limit_in_bytes" if mount.version == 1 else "memory.max"
    with open(os.path.join(child, fname), "w") as f:
        f.write(str(64 << 20))
    r = subprocess.run([sys.executable, "-m", "pymemcg", "top", "--batch", "-n", "1",
                        "--backend", "bpf", "--sort", "cgroup", cgroups.base],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = re.split(r"\s+", lines[2].strip())
    assert "LIMIT" in header and ("PSI_SOME%" in header) == (mount.version == 2 and
                                                            "pressure_some_total_us"
                                                            in extras_served())
    at = header.index("LIMIT")
    rows = {row.rsplit("  ", 1)[-1]: re.split(r"\s{2,}", row.strip()) for row in lines[3:]
            if row.strip()}
    rel = lambda p: "/" + os.path.relpath(p, mount.mountpoint)  # noqa: E731
    assert rows[rel(child)][at] == "64.0 MiB", r.stdout
    assert rows[rel(cgroups.base)][at] == "max", r.stdout   # the test's base sets no limit


def psi_total(cgroup):
    """memory.pressure's some total=, microseconds."""
    with open(os.path.join(cgroup, "memory.pressure")) as f:
        some = f.readline().split()
    return int(dict(kv.split("=") for kv in some[1:])["total"])


def test_pressure_column_shows_a_stall(bpf_ok, mount, cgroups):
    """A cgroup throttled above memory.high stalls; top's PSI_SOME% for it is
    the kernel's stall time over the interval: above 0, bracketed by
    memory.pressure read before and after each refresh."""
    if mount.version != 2 or not os.path.exists(os.path.join(cgroups.base, "memory.pressure")):
        pytest.skip("memory pressure is accounted per cgroup on cgroup v2 with PSI only "
                    "(test_pressure_is_the_share_of_time_stalled_between_refreshes covers "
                    "the computation here)")
    child = cgroups.make("stall")
    names = ["usage", "pressure_some_total_us"]
    clock = Clock()
    with Reader(names, backend="bpf", for_trees=True) as reader:
        view = TopView(reader, child, names, "usage", 1.0, clock=clock)
        # a read of memory.pressure folds the per-CPU stall times in, so a BPF
        # read right after it is at least what it printed
        before = psi_total(child)
        view.refresh()
        settled = psi_total(child)
        # anon memory over memory.high with no swap to reclaim it to: the
        # kernel reclaims and throttles the allocator, a memory stall
        proc = cgroups.spawn(child, """
            print("ready", flush=True)
            input()
            chunks = [bytearray(1 << 20) for _ in range(4)]
            print("done", flush=True)
            input()
        """)
        # a little over what it holds: a short stall, not a long thrash
        with open(os.path.join(child, "memory.current")) as f:
            high = int(f.read()) + (1 << 20)
        with open(os.path.join(child, "memory.high"), "w") as f:
            f.write(str(high))
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        clock.t += 2.0
        between = psi_total(child)
        view.refresh()
        after = psi_total(child)
    [row] = view.rows
    assert between > settled, "the workload did not stall: no pressure to show"
    # percent of the 2 s interval: 10,000 us stalled per second is 1 %
    assert (between - settled) / 2 / 1e4 <= row.values["pressure_some_total_us"] \
        <= (after - before) / 2 / 1e4, (before, settled, between, after, row.values)


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
        dir = sockdir

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
    """Start top in the terminal and return its pid. The pid goes to a file: a line on
    the screen is hidden as soon as top switches to its full-screen view."""
    pidfile = os.path.join(term.dir, f"{marker}.pid")
    # ROOT = this process's cgroup: its row is on the screen whatever else the host runs
    term.send(f"clear; sh -c 'echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; "
              f"exec {sys.executable} -m pymemcg top --backend bpf "
              f"--interval 0.5 {own_memory_cgroup()}'; echo {marker}=$?", "Enter")
    deadline = time.monotonic() + 30
    while not os.path.exists(pidfile):
        assert time.monotonic() < deadline, f"top's shell never started; the screen:\n{term.screen()}"
        time.sleep(0.05)
    with open(pidfile) as f:
        return int(f.read())


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
    pid = start_top(tmux, "EXIT_Q")
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
    pid = start_top(tmux, "EXIT_C")
    tmux.wait_for(r"^pymemcg top - ")
    tmux.send("C-c")
    assert_restored(tmux, pid, "EXIT_C")
