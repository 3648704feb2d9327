"""Bad input and hostile hosts: a pymemcg.Error subclass naming cause and
remedy, and nothing left behind (fds, links, pins)."""

from __future__ import annotations

import ast
import errno
import importlib
import importlib.util
import os
import pkgutil
import re
import warnings
from pathlib import Path

import pytest

import pymemcg
from pymemcg import programs
from pymemcg.backends import bpf as bpf_mod, bpf_links
from pymemcg.binding import load
from pymemcg.kernel_probe import kernel_facts
from pymemcg import slots
from pymemcg.cgroupfs import memory_mount, own_memory_cgroup

from conftest import as_nobody, my_links, open_fds





def _reader(**kw):
    return pymemcg.Reader(stats=["usage", "anon"], backend="bpf", **kw)


@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_missing_path(no_leaks, backend):
    with pymemcg.Reader(stats=["usage"], backend=backend) as r:
        with pytest.raises(pymemcg.CgroupNotFound, match="no such cgroup"):
            r.read("/sys/fs/cgroup/memory/does/not/exist")
        with pytest.raises(pymemcg.CgroupNotFound):
            r.read_tree("/nonexistent")


@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_not_a_cgroup(no_leaks, backend, tmp_path):
    own = own_memory_cgroup()
    with pymemcg.Reader(stats=["usage"], backend=backend) as r:
        for bad in (str(tmp_path), os.path.join(own, "memory.stat"), "/proc"):
            with pytest.raises(pymemcg.NotACgroup, match="not a cgroup directory"):
                r.read(bad)
        with pytest.raises(pymemcg.NotACgroup):
            r.read(12345)


def test_hierarchy_without_memory_controller(no_leaks):
    others = [m.mountpoint for m in pymemcg.cgroupfs.cgroup_mounts() if not m.has_memory]
    assert others, "this host has no cgroup hierarchy without memory to test with"
    with _reader() as r:
        for path in others:
            with pytest.raises(pymemcg.NoMemoryController, match=memory_mount().mountpoint):
                r.read(path)


def test_unknown_stat(no_leaks):
    with pytest.raises(pymemcg.UnknownStat, match="pymemcg.stats()"):
        pymemcg.Reader(stats=["usage", "no_such_stat"])
    with pytest.raises(pymemcg.UnknownStat, match="twice"):
        pymemcg.Reader(stats=["usage", "usage"])
    with _reader() as r:
        rec = r.read(own_memory_cgroup())
        with pytest.raises(pymemcg.UnknownStat, match="add it to stats="):
            rec["file"]


@pytest.mark.parametrize("kwargs, named", [
    (dict(local="yes"), "local"), (dict(local=None), "local"), (dict(local=1), "local"),
    (dict(flush="no"), "flush"), (dict(flush=0), "flush"),
    (dict(shared_pins=5), "shared_pins"), (dict(shared_pins="/sys/fs/bpf"), "shared_pins"),
    (dict(shared_pins=("/a",)), "shared_pins"), (dict(shared_pins=("/a", 7)), "shared_pins"),
    (dict(shared_pins=("/a", b"/b")), "shared_pins"), (dict(shared_pins=("", "/b")), "shared_pins"),
    (dict(backend=1), "backend"), (dict(backend=["bpf"]), "backend"),
    (dict(backend="BPF"), "backend"),
    (dict(stats=5), "stats"), (dict(stats=None), "stats"), (dict(stats=b"anon"), "stats"),
    (dict(stats=["anon", 7]), "stats"), (dict(stats=[["anon"]]), "stats"),
], ids=repr)
def test_reader_arguments_are_checked(kwargs, named):
    # each bad argument is refused before anything loads, naming the
    # argument and what it takes; TypeError and ValueError still catch it
    with pytest.raises(pymemcg.InvalidArgument) as info:
        pymemcg.Reader(**{"stats": ["usage"], **kwargs})
    err = info.value
    assert isinstance(err, pymemcg.Error) and isinstance(err, TypeError) and \
        isinstance(err, ValueError)
    assert f"Reader({named}=" in str(err) and " takes " in str(err), str(err)


def test_reader_takes_a_pair_of_path_likes_for_shared_pins(no_leaks, tmp_path):
    import pathlib
    dirs = (pathlib.Path(tmp_path, "pins"), pathlib.Path(tmp_path, "meta"))
    with pymemcg.Reader(stats=["usage"], backend="bpf", shared_pins=dirs) as r:
        assert r.backend == "bpf"  # no pin there: the Reader's own program
        assert r.read(own_memory_cgroup())["usage"] >= 0


def test_repeated_and_unknown_stats_are_named_briefly():
    every = list(pymemcg.catalog.STATS)
    with pytest.raises(pymemcg.UnknownStat) as info:
        pymemcg.Reader(stats=every * 40)
    assert len(str(info.value)) < 2000
    assert repr(every[0]) in str(info.value) and "twice" in str(info.value)
    with pytest.raises(pymemcg.UnknownStat) as info:
        pymemcg.Reader(stats=["anon", "x" * 40000])
    assert len(str(info.value)) < 300 and "'xxxx" in str(info.value)


def test_a_repeated_stats_name_is_a_short_cli_error(capsys):
    from pymemcg.cli import main
    every = ",".join(pymemcg.catalog.STATS)
    assert main(["snapshot", "--stats", ",".join([every] * 40)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pymemcg: stats lists ") and len(err) < 2000, err[:200]


def test_unavailable_stat_is_not_zero(no_leaks):
    # swap_usage is cgroup v2's counter; on v1 the union member is memsw
    name = "swap_usage" if memory_mount().version == 1 else "memsw_usage"
    with pymemcg.Reader(stats=["usage", name], backend="bpf") as r:
        rec = r.read(own_memory_cgroup())
        assert rec.get(name) is None and name not in rec
        with pytest.raises(pymemcg.StatUnavailable, match="only on cgroup"):
            rec[name]
        assert rec.as_dict()[name] is None


def test_closed_reader(no_leaks):
    r = _reader()
    r.close()
    r.close()  # idempotent
    with pytest.raises(pymemcg.Closed):
        r.read(own_memory_cgroup())


def test_missing_privileges(no_leaks):
    own = own_memory_cgroup()

    def bpf_read():
        with pymemcg.Reader(stats=["usage"], backend="bpf") as r:
            return r.read(own)["usage"]
    result = as_nobody(bpf_read)
    assert result[:2] == ("raised", "PermissionDenied"), result
    assert "root" in result[2] and "backend='text'" in result[2]

    def auto_read():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            os.environ.pop("PYMEMCG_REQUIRE_BPF", None)
            with pymemcg.Reader(stats=["usage", "anon"]) as r:
                return r.backend, r.read(own)["anon"] >= 0, [str(w.message) for w in caught]
    result = as_nobody(auto_read)
    assert result[0] == "ok", result
    backend, ok, messages = result[1]
    assert backend == "text" and ok
    assert any("BPF backend unavailable" in m for m in messages)

    def required():
        os.environ["PYMEMCG_REQUIRE_BPF"] = "1"
        pymemcg.Reader(stats=["usage"])
    result = as_nobody(required)
    assert result[:2] == ("raised", "PermissionDenied"), result


def test_kernel_without_btf(no_leaks, monkeypatch):
    from pymemcg import kernel_probe
    monkeypatch.setattr(kernel_probe, "VMLINUX_BTF", "/nonexistent/vmlinux")
    monkeypatch.setattr(kernel_probe, "_cache", {})
    with pytest.raises(pymemcg.NoBtf, match="CONFIG_DEBUG_INFO_BTF"):
        pymemcg.Reader(stats=["usage"], backend="bpf")
    monkeypatch.delenv("PYMEMCG_REQUIRE_BPF", raising=False)
    with pytest.warns(pymemcg.FallbackWarning, match="no BTF"):
        with pymemcg.Reader(stats=["usage"]) as r:
            assert r.backend == "text"


def test_verifier_rejection_carries_the_log(no_leaks):
    # Forcing the kfunc path on a kernel without the memcg kfuncs leaves
    # unresolved kfunc calls live: a real verifier rejection.
    if slots.MEMCG_KFUNCS[2] in kernel_facts().kfuncs:
        pytest.skip("this kernel has the memcg kfuncs: nothing to reject")
    res = slots.resolve(["anon", "usage"], kernel_facts(), memory_mount().version, 4096)
    with pytest.raises(pymemcg.VerifierRejected) as info:
        programs.Program(res, False, 16, kfuncs=slots.KFUNCS_MEMCG)
    assert "processed" in info.value.log
    assert "verifier log" in str(info.value) and "backend='text'" in str(info.value)


def test_verifier_log_keeps_its_end_in_a_small_buffer(bpf_ok):
    """A load log longer than the buffer keeps its last lines, where the
    verifier says why it rejected the program (and which program)."""
    if slots.MEMCG_KFUNCS[2] in kernel_facts().kfuncs:
        pytest.skip("this kernel has the memcg kfuncs: nothing to reject")
    ffi, lib = load()
    res = slots.resolve(["anon", "usage"], kernel_facts(), memory_mount().version, 4096)

    def load_log(size: int) -> str:
        out = ffi.new("struct pmc_prog **")
        log = ffi.new("char[]", size)
        rc = lib.pmc_prog_load(programs.config(res, False, slots.KFUNCS_MEMCG, False, 16), out,
                               log, len(log))
        assert rc < 0 and out[0] == ffi.NULL
        return ffi.string(log).decode()
    # the verifier prints the kernel addresses of maps, which one load may
    # get elsewhere than the other: the same width, so lengths still agree
    def same_maps(log: str) -> str:
        return re.sub(r"0xffff[0-9a-f]{12}", "0xADDRESS", log)
    whole = load_log(1 << 20)
    assert "processed" in whole and "prog 'pmc_memcg_iter" in whole
    small = load_log(len(whole) // 2)
    assert same_maps(small) == same_maps(whole[-(len(whole) // 2 - 1):])


def test_fetch_program_rejection_carries_the_log(no_leaks):
    if slots.MEMCG_KFUNCS[2] in kernel_facts().kfuncs:
        pytest.skip("this kernel has the memcg kfuncs: nothing to reject")
    res = slots.resolve(["anon", "usage"], kernel_facts(), memory_mount().version, 4096)
    with pytest.raises(pymemcg.VerifierRejected) as info:
        programs.Fetch(res, False, slots.KFUNCS_MEMCG, False, 4096)
    assert "processed" in info.value.log and "prog 'pmc_fetch'" in info.value.log


def test_errors_are_one_family():
    for cls in (pymemcg.CgroupNotFound, pymemcg.NotACgroup, pymemcg.NoMemoryController,
                pymemcg.UnknownStat, pymemcg.PermissionDenied, pymemcg.NoBtf,
                pymemcg.VerifierRejected, pymemcg.MalformedData, pymemcg.StatUnavailable,
                pymemcg.InvalidArgument):
        assert issubclass(cls, pymemcg.Error)


def _package_modules():
    for info in pkgutil.walk_packages(pymemcg.__path__, "pymemcg."):
        if info.name != "pymemcg.__main__":  # importing it runs the CLI
            yield info.name


def _descendants(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _descendants(sub)


def _base_name(base: ast.expr) -> str:
    return base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")


def test_every_error_class_is_defined_in_errors_py():
    # one module holds every error: the place to look up what a caller may catch
    unimportable = []
    for name in _package_modules():
        try:
            importlib.import_module(name)
        except ImportError:  # an extra missing here: its source is read instead
            unimportable.append(name)
    outside = [f"{c.__module__}.{c.__qualname__}" for c in _descendants(pymemcg.Error)
               if c.__module__.startswith("pymemcg") and c.__module__ != "pymemcg.errors"]
    error_names = {n for n, v in vars(pymemcg.errors).items()
                   if isinstance(v, type) and issubclass(v, pymemcg.Error)}
    for name in unimportable:
        tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text())
        outside += [f"{name}.{node.name}" for node in ast.walk(tree)
                    if isinstance(node, ast.ClassDef)
                    and any(_base_name(b) in error_names for b in node.bases)]
    assert not outside, f"pymemcg.Error subclasses outside pymemcg/errors.py: {sorted(set(outside))}"


@pytest.mark.parametrize("single", ["fetch", "iterator"])
def test_many_single_cgroups_keep_fds_bounded(no_leaks, cgroups, monkeypatch, single):
    """A limit bounds the cgroups read one by one that a reader holds:
    fetch slots, or SELF_ONLY links where the fetch program does not load."""
    monkeypatch.setattr(programs, "MAX_SINGLE_CGROUPS", 8)
    monkeypatch.setattr(programs, "MAX_FETCH_CGROUPS", 8)
    if single == "iterator":
        monkeypatch.setattr(bpf_mod.BpfBackend, "_load_fetch", lambda self: None)
    paths = [cgroups.make(f"many/c{i}") for i in range(30)]
    with pymemcg.Reader(stats=["usage"], backend="bpf", shared_pins=False) as r:
        # the programs and maps are open after a first read (with the first
        # link comes the watcher of removed cgroups)
        r.read(paths[0])
        fds = len(open_fds())
        links = len(my_links())
        for _ in range(2):
            for p in paths:
                assert r.read(p).id == os.stat(p).st_ino
        held = r._backend._links
        if single == "fetch":
            assert held.fetch is not None and len(held.fetch.by_id) == 8
            assert len(open_fds()) <= fds and len(my_links()) <= links
        else:
            assert held.fetch is None and len(held.by_key) == 8
            assert len(open_fds()) <= fds + 7  # one link per cached cgroup
            assert len(my_links()) <= links + 7


def test_single_reads_use_sessions_where_the_one_call_read_does_not_load(no_leaks, cgroups,
                                                                        monkeypatch):
    """As on 6.1 (no bpf_cgroup_acquire): reads go through iterator sessions,
    and read_method says why. The 6.1 guests of the matrix run this for real."""
    why = ("libbpf: extern (func ksym) 'bpf_cgroup_acquire': not found in kernel or module "
           "BTFs")

    def refuse(self, *args):
        raise programs.load_error(errno.EINVAL, why + "\nlibbpf: failed to load object "
                                                      "'memcg_fetch'")
    monkeypatch.setattr(programs.Fetch, "__init__", refuse)
    cg = cgroups.make("sessions")
    with pymemcg.Reader(stats=["usage"], backend="bpf") as r:
        assert r.read_method == f"iterator session (the one-call read did not load: {why})"
        assert r.read(cg).id == r.read(cg).id == os.stat(cg).st_ino
        assert my_links()  # a SELF_ONLY link per cgroup read


def test_a_failed_reload_leaves_the_reader_working(bpf_ok, cgroups, monkeypatch):
    """A tree that needs a bigger overflow map than can be loaded fails
    with a ReadError; the program loaded before keeps serving."""
    monkeypatch.setattr(bpf_links, "INITIAL_OVERFLOW_CAPACITY", 1)
    stats = [s.name for s in pymemcg.stats() if s.backend == "bpf"][:100]
    with pymemcg.Reader(stats=stats, backend="bpf", shared_pins=False) as r:
        budget = r._backend._links.prog.seq_budget
        for i in range(budget + 4):
            cgroups.make(f"c{i}")
        real_load = bpf_links.BpfSelection.iterator

        def refuse_bigger(self, capacity):
            if capacity > 1:
                raise pymemcg.BpfUnavailable("loading the BPF program failed (Cannot allocate "
                                             "memory)")
            return real_load(self, capacity)
        monkeypatch.setattr(bpf_links.BpfSelection, "iterator", refuse_bigger)
        with pytest.raises(pymemcg.ReadError, match="could not be loaded"):
            r.read_tree(cgroups.base)
        assert r.read(cgroups.base).id == os.stat(cgroups.base).st_ino
        monkeypatch.setattr(bpf_links.BpfSelection, "iterator", real_load)
        assert len(r.read_tree(cgroups.base)) == budget + 5
