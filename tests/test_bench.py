"""A short run of the benchmark code (issue 4): it runs, end to end, and both
methods return the same values. Timings are not checked: a benchmark is not a
timed test (`make bench` runs the real thing)."""

from __future__ import annotations

import os

import pymemcg
from pymemcg import bench


def test_bench_smoke_run(bpf_ok, cgroups, tmp_path):
    binary, why = bench.build_c()
    assert binary is not None, why
    cbench = bench.CBench(binary)
    leaf = cgroups.make("bench-leaf")
    with bench.BenchCgroups(cgroups.base) as made, \
            pymemcg.Reader(stats=bench.STATS, backend="bpf") as reader:
        single = bench.measure_single([("leaf", leaf)], reader, cbench, 400, 2)
        (r,) = single
        # every method ran, C and Python; the C loader read the same cgroup
        # with the same valid stats as Reader.read (measure_single checks)
        assert set(r.py) == {"bpf", "pread", "pread+parse"}
        assert {"stat-seek", "stat-pread", "bpf"} <= set(r.c)
        if reader.read_method.startswith("BPF_PROG_RUN"):
            assert "bpf-fetch" in r.c  # the C side measures Reader.read's path too
        assert all(c.count == 400 for c in list(r.py.values()) + list(r.c.values()))
        # both methods, same numbers, on an idle tree (the tree part does it too)
        trees = [bench.measure_tree(n, made, reader, cbench, 40, 1) for n in (1, 25)]
        assert [t.size for t in trees] == [1, 25]
        assert {"bpf", "text", "c-stat-walk", "c-bpf-walk"} <= set(trees[1].per_snapshot)
        tree_root = made.path("check")
        bench.make_tree(tree_root, 25)
        try:
            assert bench.compare_with_text(reader.read_tree(tree_root), tree_root) > 25
        finally:
            assert not bench.remove_tree(tree_root)
        split = bench.split_read(reader, leaf, 200, 2)
        assert set(split) == {"call", "call+unpack", "Reader.read"}
        method = reader.read_method
        text, env = bench.report(single, trees, [], split, "smoke run", "",
                                 bench.Settings.quick(), 0.0, method)
    assert "## 4. The issue's speed goals" in text and method in "\n".join(env)
    assert not os.path.exists(made.top)
