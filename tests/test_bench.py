"""Short runs of both benchmarks: `pymemcg bench` (the installed package
alone, on cgroups as they are) and the full one (`make bench`: C and Python,
trees made for it). Each runs end to end and its methods return the same
values; timings are not checked: a benchmark is not a timed test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pymemcg
from pymemcg.cgroupfs import own_memory_cgroup
from pymemcg.cli.bench import STATS

# the full benchmark is not part of the package: it lives in the checkout
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(CHECKOUT, "bench"))

from pymemcg_bench import Settings  # noqa: E402
from pymemcg_bench import c_side, exporter, measure, oomd, report, rotation, signals  # noqa: E402
from pymemcg_bench import cgroups as made_cgroups  # noqa: E402

ENV = {**os.environ, "PYMEMCG_REQUIRE_BPF": "1"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pymemcg", *args], capture_output=True,
                          text=True, env=ENV, timeout=120)


def test_user_bench_compares_reader_with_memory_stat(bpf_ok, cgroups):
    """Both comparisons ran, every method in each of the rounds asked, and each
    ratio divides the memory.stat figure by pymemcg's of the same run."""
    root = cgroups.make("user-bench")
    for i in range(3):
        cgroups.make(f"user-bench/c{i}")
    r = run_cli("bench", root, "--seconds", "0.05", "--rounds", "2", "--backend", "bpf",
                "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["backend"], doc["root"], doc["rounds"], doc["stats"]) == \
        ("bpf", root, 2, list(STATS))
    assert doc["version"] == pymemcg.__version__ and doc["read_method"]
    assert (doc["read"]["cgroups"], doc["read_tree"]["cgroups"]) == (1, 4)
    for part in ("read", "read_tree"):
        p = doc[part]
        for method in ("pymemcg", "memory.stat"):
            assert p[method]["calls"] >= 2 and p[method]["per_call"] > 0, (part, p)
        assert p["speedup"] == pytest.approx(p["memory.stat"]["per_call"] /
                                             p["pymemcg"]["per_call"])


def test_user_bench_table(bpf_ok, cgroups):
    root = cgroups.make("user-bench-table")
    r = run_cli("bench", root, "--seconds", "0.02", "--rounds", "1", "--stats", "anon,usage")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"pymemcg {pymemcg.__version__} bench: Linux ")
    assert ", 2 stats, 1 rounds" in lines[0]
    assert f"one cgroup: {root}" in lines and f"tree of 1 cgroups: {root}" in lines
    assert any(line.startswith("  -> Reader.read ") and "x faster" in line for line in lines)
    assert any(line.startswith("  -> Reader.read_tree ") for line in lines)
    assert "\x1b[" not in r.stdout


def test_user_bench_of_a_missing_cgroup_is_a_user_error():
    r = run_cli("bench", "/nonexistent", "--seconds", "0.01")
    assert r.returncode == 2 and r.stderr.startswith("pymemcg: ") and "Traceback" not in r.stderr


def test_runtime_never_imports_benchmark_or_cli_code(bpf_ok):
    """Reader, its backends and the exporters work without the command line
    and without benchmark code: nothing they import reaches either."""
    code = ("import sys, pymemcg, pymemcg.pins, pymemcg.prometheus, pymemcg.parity\n"
            "from pymemcg.cgroupfs import own_memory_cgroup\n"
            "with pymemcg.Reader(stats=['usage', 'anon']) as r:\n"
            "    r.read(own_memory_cgroup()); r.read_tree(own_memory_cgroup())\n"
            "print(sorted(m for m in sys.modules if m.startswith(('pymemcg.cli', "
            "'pymemcg.bench', 'pymemcg_bench'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_bench_smoke_run(bpf_ok, cgroups, tmp_path):
    binary, why = c_side.build_c()
    assert binary is not None, why
    cbench = c_side.CBench(binary)
    leaf = cgroups.make("bench-leaf")
    with made_cgroups.BenchCgroups(cgroups.base) as made, \
            pymemcg.Reader(stats=STATS, backend="bpf") as reader:
        single = measure.measure_single([("leaf", leaf)], reader, cbench, 400, 2)
        (r,) = single
        # every method ran, C and Python; the C loader read the same cgroup
        # with the same valid stats as Reader.read (measure_single checks)
        assert set(r.py) == {"bpf", "pread", "pread+parse"}
        assert {"stat-seek", "stat-pread", "bpf"} <= set(r.c)
        one_call = reader.read_method.startswith("BPF_PROG_RUN")
        if one_call:
            # the C side measures Reader.read's path too, and the run that hashes
            assert {"bpf-fetch", "bpf-fetch-hash"} <= set(r.c)
        assert all(c.count == 400 for c in list(r.py.values()) + list(r.c.values()))
        # both methods, same numbers, on an idle tree (the tree part does it too)
        trees = [measure.measure_tree(n, made, reader, cbench, 40, 1) for n in (1, 25)]
        assert [t.size for t in trees] == [1, 25]
        # c-null-walk: the kernel's floor, whose program counted every cgroup
        # of the tree in every session (memcg_bench checks; units == size)
        assert {"bpf", "text", "c-stat-walk", "c-bpf-walk", "c-null-walk"} <= \
            set(trees[1].per_snapshot)
        assert trees[1].best["c-null-walk"] <= trees[1].per_snapshot["c-null-walk"]
        tree_root = made.path("check")
        made_cgroups.make_tree(tree_root, 25)
        try:
            assert measure.compare_with_text(reader.read_tree(tree_root), tree_root) > 25
        finally:
            assert not made_cgroups.remove_tree(tree_root)
        # the single-read goals of this run: Reader.read against Python's
        # pread + parse and against C's read by Reader.read's own method
        api = r.py["bpf"].per_op
        c_read = r.c["bpf-fetch" if one_call else "bpf"].per_op
        by_text = {g.text: g for g in report.goals(single, [])}
        vs_parse = by_text[f"leaf: `Reader.read` ≥ {report.GOAL_API_VS_PARSE:.0f}× faster than "
                           f"Python pread + parse"]
        assert report.GOAL_API_VS_PARSE == 10.0
        assert vs_parse.score == pytest.approx(r.py["pread+parse"].per_op / api / 10.0)
        vs_c = by_text["leaf: `Reader.read` within 2× of C's " +
                       ("one-call read (`BPF_PROG_RUN`)" if one_call else "iterator session")]
        assert vs_c.score == pytest.approx(2.0 * c_read / api)
        split = measure.split_read(reader, leaf, 200, 2)
        assert set(split) == {"call", "call+unpack", "Reader.read"} | \
            ({"records"} if one_call else set())
        method = reader.read_method
        text, env = report.report(single, trees, [], split, "smoke run", "",
                                 Settings.quick(), 0.0, method)
    assert "## 4. The speed goals" in text and method in "\n".join(env)
    if one_call:
        assert "the Record made in C (`pymemcg._records`)" in text
    assert not os.path.exists(made.top)


def test_bench_rotation_against_the_c_floor(bpf_ok, cgroups):
    """The poller's rotation with the kernel's floor: the C side read the
    same cgroups in the same rotation by each of its methods, and the table
    gives Python's share on top of it at each size."""
    binary, why = c_side.build_c()
    assert binary is not None, why
    with made_cgroups.BenchCgroups(cgroups.base) as made:
        results = rotation.measure_rotation(made, 2, sizes=(5, 20),
                                            cbench=c_side.CBench(binary))
    assert [r.size for r in results] == [5, 20]
    for r in results:
        assert set(r.c_cpu_per_cgroup) == set(rotation.C_METHODS)
        assert all(v > 0 for v in r.c_cpu_per_cgroup.values())
    text = "\n".join(rotation.rotation_markdown(results))
    assert "The kernel's floor" in text
    share = rotation.python_share(results[1], "fetch-each")
    assert f"| {share * 1e6:.2f} |" in text.split("The kernel's floor")[1]
    assert "At 20 against 5, per cgroup: the C one-call read" in text
    assert not os.path.exists(made.top)


def test_full_bench_runs_as_a_module_of_the_checkout(bpf_ok):
    """`make bench` runs it as `python -m pymemcg_bench` with bench/ on
    PYTHONPATH; its helpers for the C side and for profilers run so too."""
    env = {**ENV, "PYTHONPATH": os.path.join(CHECKOUT, "bench")}
    for args in (["--help"], ["oomd", "--help"], ["specs", "--stats", "anon,usage"],
                 ["loop", "read", own_memory_cgroup(), "10"]):
        r = subprocess.run([sys.executable, "-m", "pymemcg_bench", *args], capture_output=True,
                           text=True, env=env, timeout=60, cwd="/")
        assert r.returncode == 0, (args, r.stderr)
        if args[0] == "specs":
            assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == ["anon", "usage"]


def test_bench_part5_smoke_run(bpf_ok, cgroups):
    pytest.importorskip("prometheus_client")
    with made_cgroups.BenchCgroups(cgroups.base) as made:
        scrapes = exporter.measure_scrapes(made, 1, sizes=(25,))
        many = exporter.measure_read_many(made, 1, 2, n=5)
        anchor = exporter.measure_anchor(made, 1, shape=(2, 2))
    (s,) = scrapes
    # the writer read the same as prometheus_client's own exposition, of one snapshot
    assert s.same_as_client is True and s.body_bytes > 25 * 100
    assert set(s.costs) == {"bpf", "text", "client"}
    assert all(c["cpu"] > 0 for c in s.costs.values())
    assert many["n"] == 5 and set(many["median_ns_per_cgroup"]) == \
        {"read loop", "read_many", "memory.stat"}
    assert anchor.size == 1 + 2 + 4 and set(anchor.costs) == {"bpf", "memory.stat"}
    text = "\n".join(exporter.report_part5(scrapes, many, anchor,
                                           {1000: {"session": 1e-3, "records": 2e-3,
                                                   "read_tree": 3e-3, "floor": 4e-4,
                                                   "floor-median": 5e-4}}, 1))
    for heading in ("### Prometheus scrapes", "### Reader.read_many", "### The anchor",
                    "### Where a tree snapshot's time goes"):
        assert heading in text
    assert "36.9×" in text
    assert "| kernel floor: the iterator's walk, null program (C) | 400 ns (500) |" in text
    assert not os.path.exists(made.top)


def test_bench_oomd_smoke_run(bpf_ok, cgroups):
    """examples/oomd.py's polls, both ways, on a small tree: both daemons
    read the same candidates with the same values, every poll costs, and
    the tree is gone after."""
    with made_cgroups.BenchCgroups(cgroups.base) as made:
        r = oomd.measure_oomd(made, 1, size=12)
        assert not os.path.exists(made.path("oomd"))
    assert r.same_candidates is True and r.candidates == 12 - 1 - 3   # the top, 3 middle
    assert set(r.costs) == {f"{side} {kind}" for side in ("files", "pymemcg")
                            for kind in ("pressure", "swap", "quiet pressure", "quiet swap")}
    assert all(c["cpu"] >= 0 and c["real"] > 0 for c in r.costs.values())
    text = "\n".join(oomd.oomd_markdown(r))
    assert "### A memory daemon: examples/oomd.py" in text and "as a share of one core" in text
    assert f"cgroup v{r.version}" in text


def test_exporter_load_smoke_run(bpf_ok):
    """bench/exporter_load.py end to end, small: every scrape made while the
    crowd is connected is answered with every cgroup, and the cgroups it
    made are gone."""
    pytest.importorskip("prometheus_client")
    own = own_memory_cgroup()
    before = set(os.listdir(own))
    r = subprocess.run([sys.executable, os.path.join(CHECKOUT, "bench", "exporter_load.py"),
                        "--clients", "40", "--cgroups", "20", "--big", "0", "--scrapes", "2",
                        "--json"], capture_output=True, text=True, env=ENV, timeout=180)
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["under_load"]
    assert run["failures"] == [] and run["scrape_under_load_s"]["count"] == 2
    assert run["exporter_peak"]["threads"] <= 3
    assert run["exporter_peak"]["sockets"] <= 40 + 2    # the crowd, a scrape, the listener
    assert not {d for d in set(os.listdir(own)) - before if d.startswith("pymemcg-bench-")}


def test_bench_embedding_smoke_run(bpf_ok, cgroups):
    """The embedding table: every way on both backends, in the same rounds;
    the drop-in read as prometheus_client's own exposition does."""
    pytest.importorskip("prometheus_client")
    pytest.importorskip("opentelemetry.sdk.metrics")
    with made_cgroups.BenchCgroups(cgroups.base) as made:
        r = exporter.measure_embedding(made, 1, size=25)
    assert r.same_as_client is True
    assert set(r.costs) == {f"{m}/{b}" for m, _ in exporter.EMBED_METHODS
                            for b in ("bpf", "text")}
    assert all(c["cpu"] > 0 for c in r.costs.values())
    # every instrument observed every cgroup: the default's five container.*
    # points (no limit: no container.memory.available), and with memcg.* the
    # default stats too (v1's text backend lacks two of them)
    assert r.points["otel/bpf"] >= 25 * 5 and r.points["otel/text"] >= 25 * 5
    assert r.points["otel-memcg/bpf"] >= 25 * 18 and r.points["otel-memcg/text"] > 25 * 10
    for key in ("otel/bpf", "otel/text", "otel-memcg/bpf", "otel-memcg/text"):
        assert 0 < r.otel_ours[key] < r.costs[key]["cpu"]
    text = "\n".join(exporter.report_part5([], None, None, {}, 1, r))
    assert "### Embedding in a daemon" in text and "| SDK per data point |" in text
    assert "`pymemcg.prometheus.generate_latest`" in text
    assert not os.path.exists(made.top)


def test_signals_control_parses_as_the_kernel_prints():
    """The daemon's control (part 2b) converts the files as pymemcg's own
    parsers do: memory.pressure's averages as hundredths of a percent, its
    totals in microseconds, "max" as the page counter's maximum."""
    from pymemcg.decode import RAW_MAX
    from pymemcg.memory_stat import parse_pressure
    text = b"some avg10=5.23 avg60=0.40 avg300=10.00 total=824308\n" \
           b"full avg10=0.00 avg60=0.07 avg300=1.25 total=512590\n"
    names = [n for n in signals.SIGNAL_STATS if n.startswith("pressure_")]
    out: dict = {}
    signals._pressure(names)(text, out)
    assert out == parse_pressure(text) and out["pressure_some_avg10_x100"] == 523
    one: dict = {}
    signals._number("limit")(b"max\n", one)
    signals._number("memory_low")(b"1048576\n", one)
    assert one == {"limit": RAW_MAX, "memory_low": 1 << 20}


def test_signals_smoke_run(bpf_ok, cgroups):
    """Part 2b end to end on a small tree: both sides read the same values
    (measure_signals compares them first), and the section and its goal are
    written. On cgroup v1 the control reads the v1 files that carry the
    selection, and BPF serves the events the files do not have."""
    with made_cgroups.BenchCgroups(cgroups.base) as made:
        r = signals.measure_signals(made, 1, 1, size=25)
    assert not os.path.exists(made.top)
    assert r.compared >= 25 * r.file_values > 0
    assert {"bpf", "bpf+columns", "files", "bpf-cold", "files-cold"} <= set(r.per_snapshot)
    files = set(r.plan.files_of.values())
    if r.version == 1:
        assert files == {"memory.stat", "memory.usage_in_bytes", "memory.limit_in_bytes",
                         "memory.soft_limit_in_bytes", "memory.memsw.limit_in_bytes",
                         "memory.failcnt", "memory.oom_control"}
        assert {"low", "high", "max", "oom", "nr_descendants"} <= set(r.bpf_served)
        assert not any(n.startswith("pressure_") for n in r.bpf_served)
    else:
        assert {"memory.stat", "memory.current", "memory.max", "memory.min", "memory.low",
                "memory.high", "memory.events", "cgroup.stat"} <= files
    text = "\n".join(signals.signals_markdown(r))
    assert "## 2b." in text and "`memory.stat`" in text
    goal = signals.signals_goal(r)
    assert goal.text.startswith("25-cgroup snapshot") and "≥ 50×" in goal.text



def test_goals_judge_the_rotation_against_100_and_against_the_c_floor():
    def result(size, py, c):
        return rotation.RotationResult(
            size, {}, "BPF_PROG_RUN", {"read()": py[0], "read_many()": py[1], "pread+parse": 9.0},
            {"fetch-each": c[0], "fetch-many": c[1], "stat-pread": 5.0})
    # read() grows 2x and 3x as its floor does; read_many() 2x and 1.2x where
    # its floor grows 2x and 1.5x: a cliff as the target words it, none
    # beyond the kernel's own
    rs = [result(100, (1.0, 0.5), (0.5, 0.2)), result(1_000, (2.0, 1.0), (1.0, 0.4)),
          result(10_000, (3.0, 0.6), (1.5, 0.3))]
    literal, floor = report.rotation_goals(rs)
    assert literal.text.startswith("no cliff: ") and not literal.met
    assert literal.score == pytest.approx(1.5 / 3.0)
    assert "read() 2.00×, 3.00×" in literal.measured
    assert floor.text.startswith("no cliff, against the kernel's floor") and floor.met
    assert floor.score == pytest.approx(1.5)
    assert "read_many() 2.00× where C grows 2.00× (1.00), 1.20× where C grows 1.50× (0.80)" \
        in floor.measured
    # Python growing 2x past a floor that stays flat is a cliff of Python's own
    rs[2] = result(10_000, (3.0, 0.6), (0.5, 0.3))
    assert not report.rotation_goals(rs)[1].met
    # without 100 or a bigger size: nothing to judge
    assert report.rotation_goals(rs[1:]) == [] and report.rotation_goals(rs[:1]) == []


def test_goals_judge_pythons_share_of_a_snapshot_over_the_c_walk():
    def tree(size, read_tree, c_walk):
        return measure.TreeResult(size, 1, {"bpf": 9.9, "text": 50.0}, 0.0, 0.0, 150 * size, 0,
                                  None, split={"c-walk": 0.5, "read_tree": read_tree,
                                               "session": c_walk},
                                  cpu={"bpf": 9.9, "text": 50.0})
    (share,) = [g for g in report.goals([], [tree(1_000, 1.0, 0.9), tree(10_000, 2.0, 1.7)])
                if g.text.startswith("Python's share")]
    assert share.met and "1,000: 10.0%" in share.measured and "10,000: 15.0%" in share.measured
    assert "the C walk in its own process 500.00 ms" in share.measured
    (share,) = [g for g in report.goals([], [tree(1_000, 1.0, 0.7)])
                if g.text.startswith("Python's share")]
    assert not share.met and share.score == pytest.approx(0.2 / 0.3)
