"""What a Reader costs to start: which BPF programs it loads, and the memory
that loading charges to its memory cgroup (the verifier's is kernel memory,
charged to whoever loads). Each program loads when first used, so a process
pays for what it runs; a container with a small memory limit must be able
to start an exporter. Counts and bounds, not timings (bench/ times it)."""

from __future__ import annotations

import collections
import ctypes
import os
import platform
import struct
from typing import Counter, Iterable

import pymemcg
from pymemcg.cgroupfs import memory_mount, own_memory_cgroup

MiB = 1 << 20
# what loading every program a Reader can use may charge its cgroup at most
# (a container with a 100 MiB limit must hold it beside its own memory)
LOAD_PEAK_LIMIT = 32 * MiB


# bpf(2): its number per machine, and BPF_OBJ_GET_INFO_BY_FD's layout of
# struct bpf_prog_info up to the name (include/uapi/linux/bpf.h)
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
BPF_OBJ_GET_INFO_BY_FD = 15
PROG_INFO_NAME = slice(64, 80)


def program_name(fd: int) -> str:
    """The name of the BPF program behind fd, as the kernel keeps it (15
    characters at most)."""
    info = ctypes.create_string_buffer(PROG_INFO_NAME.stop)
    attr = struct.pack("=IIQ", fd, len(info), ctypes.addressof(info))
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(BPF_SYSCALL[platform.machine()], BPF_OBJ_GET_INFO_BY_FD,
                      ctypes.c_char_p(attr), len(attr))
    assert rc == 0, os.strerror(ctypes.get_errno())
    return info.raw[PROG_INFO_NAME].split(b"\0", 1)[0].decode()


def loaded_programs() -> Counter[str]:
    """The BPF programs that this process holds an fd of (libbpf keeps one
    for each it loaded), by name."""
    found: Counter[str] = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf-prog":
                continue
        except OSError:
            continue
        found[program_name(int(fd))] += 1
    return found


def added(now: Counter[str], before: Counter[str]) -> Counter[str]:
    return now - before


def names(*programs: Iterable[str]) -> Counter[str]:
    return collections.Counter(p for group in programs for p in group)


def test_a_reader_loads_each_program_when_first_used(no_leaks):
    own = own_memory_cgroup()
    before = loaded_programs()
    with pymemcg.Reader(stats=["anon", "file", "usage", "pgfault"], backend="bpf",
                        shared_pins=False) as r:
        one_call = "memcg_fetch" in r.read_method
        started = added(loaded_programs(), before)
        r.read(own)
        after_read = added(loaded_programs(), before)
        r.read_tree(own)
        after_tree = added(loaded_programs(), before)
        r.read_many([own, own])
        after_many = added(loaded_programs(), before)
    # single reads: the fetch program (6.4+, with its tracepoint programs
    # that let go of removed cgroups and count renames), else the path
    # iterator program;
    # the first link (a tree's, or a single read's without the fetch
    # program) brings the watcher of removed cgroups (pmc_gone)
    single = ("pmc_stash", "pmc_fetch", "pmc_rmdir", "pmc_rename") if one_call \
        else ("pmc_memcg_iter_",)
    assert started == names(single), started
    assert after_read == names(single, [] if one_call else ["pmc_gone"]), after_read
    assert after_tree == names(single, ["pmc_memcg_iter", "pmc_gone"]), after_tree
    # read_many's batch program, where there is a fetch program to batch
    assert after_many == names(single, ["pmc_memcg_iter", "pmc_gone"],
                               ["pmc_fetch_many"] if one_call else []), after_many
    assert loaded_programs() == before  # nothing left behind


def test_a_reader_for_trees_never_loads_the_single_read_program(no_leaks):
    """for_trees: the tree program loads when the Reader is made (so that a
    Reader that cannot use BPF still fails then), the fetch program never;
    a read() loads the path iterator program instead."""
    own = own_memory_cgroup()
    before = loaded_programs()
    with pymemcg.Reader(stats=["anon", "usage"], backend="bpf", shared_pins=False,
                        for_trees=True) as r:
        started = added(loaded_programs(), before)
        r.read_tree(own)
        after_tree = added(loaded_programs(), before)
        record = r.read(own)
        r.read_many([own, own])
        after_reads = added(loaded_programs(), before)
        assert record.get("anon") is not None and "made for trees" in r.read_method
    assert started == names(["pmc_memcg_iter"]), started
    assert after_tree == names(["pmc_memcg_iter", "pmc_gone"]), after_tree
    assert after_reads == names(["pmc_memcg_iter", "pmc_gone", "pmc_memcg_iter_"]), after_reads
    assert loaded_programs() == before


CHILD = """
import sys
import pymemcg
print("ready", flush=True)
sys.stdin.readline()
r = pymemcg.Reader(backend="bpf", shared_pins=False)
path = sys.argv[1]
r.read(path)
r.read_tree(path)
r.read_many([path, path])
print("done", flush=True)
sys.stdin.readline()
"""


def test_loading_every_program_charges_its_cgroup_little(cgroups):
    """A Reader that reads one cgroup, a tree and a list (so loads every
    program it has), in a fresh cgroup of its own: the highest usage of the
    cgroup while it loaded, less its usage just before."""
    cg = cgroups.make("loader")
    v2 = memory_mount().version == 2
    proc = cgroups.spawn(cg, CHILD.replace("sys.argv[1]", repr(own_memory_cgroup())))

    def read(name: str) -> int:
        with open(os.path.join(cg, name)) as f:
            return int(f.read())
    if not v2:
        with open(os.path.join(cg, "memory.max_usage_in_bytes"), "w") as f:
            f.write("0")   # the peak from now on (v2's memory.peak: since the child started)
    usage = "memory.current" if v2 else "memory.usage_in_bytes"
    peak = "memory.peak" if v2 else "memory.max_usage_in_bytes"
    before = read(usage)
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "done"
    charged = read(peak) - before
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=20) == 0
    assert charged <= LOAD_PEAK_LIMIT, \
        f"loading charged up to {charged / MiB:.1f} MiB (limit {LOAD_PEAK_LIMIT / MiB:.0f})"


# a fresh process: the bytes its read(2) calls returned (/proc/self/io rchar)
# while a Reader loaded every program, as JSON
READ_BYTES_CHILD = """
import json, sys
import pymemcg

def rchar():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
path = sys.argv[1]
before = rchar()
with pymemcg.Reader(backend="bpf", shared_pins=False) as r:
    r.read(path)
    r.read_tree(path)
    r.read_many([path, path])
print(json.dumps(rchar() - before))
"""


def test_a_process_reads_the_kernels_btf_once(bpf_ok):
    """Every program a Reader loads is relocated against the kernel's BTF:
    one parse of it serves them all (and the probes of kernel_probe), not
    one per object loaded."""
    import json
    import subprocess
    import sys
    from pymemcg.kernel_probe import VMLINUX_BTF
    size = os.path.getsize(VMLINUX_BTF)
    out = subprocess.run([sys.executable, "-c", READ_BYTES_CHILD, own_memory_cgroup()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    read = json.loads(out.stdout)
    assert size <= read < 2 * size, \
        f"the loads read {read} bytes: {read / size:.1f} times the kernel's BTF ({size})"


def test_the_shared_btf_finds_what_a_parse_of_the_file_finds(bpf_ok):
    """The running kernel's BTF, parsed once and looked up through its name
    index, says what libbpf's own walk of a fresh parse of the same file
    says: every enum, array length and kfunc resolution needs."""
    from pymemcg.binding import load
    from pymemcg.kernel_probe import MEMCG_KFUNCS, RFC_KFUNCS, VMLINUX_BTF, read_btf_facts
    assert read_btf_facts("x") == read_btf_facts("x", path=VMLINUX_BTF)
    ffi, lib = load()
    shared, parsed = ffi.new("struct pmc_btf **"), ffi.new("struct pmc_btf **")
    assert lib.pmc_btf_open(ffi.NULL, shared) == 0
    assert lib.pmc_btf_open(VMLINUX_BTF.encode(), parsed) == 0
    try:
        # names of several kinds, found or not; a name that is a struct, not a func
        for name in MEMCG_KFUNCS + RFC_KFUNCS + ("bpf_cgroup_from_id", "bpf_rdonly_cast",
                                                 "mem_cgroup", "no_such_function"):
            assert lib.pmc_btf_has_func(shared[0], name.encode()) == \
                lib.pmc_btf_has_func(parsed[0], name.encode()), name
        for struct_name, member in (("mem_cgroup", "memory_events"), ("cgroup", "kn"),
                                    ("memcg_vmstats", "state"), ("no_such", "x")):
            assert lib.pmc_btf_member_size(shared[0], struct_name.encode(), member.encode()) == \
                lib.pmc_btf_member_size(parsed[0], struct_name.encode(), member.encode())
    finally:
        lib.pmc_btf_close(shared[0])
        lib.pmc_btf_close(parsed[0])


def test_importing_and_a_snapshot_import_only_what_they_use(bpf_ok):
    """`import pymemcg` leaves shared pins and verify to be imported when
    first used, and `pymemcg snapshot` imports no other command's code."""
    import subprocess
    import sys
    code = ("import sys, io, contextlib, pymemcg\n"
            "first = sorted(m for m in ('pymemcg.parity', 'pymemcg.pins') if m in sys.modules)\n"
            "import pymemcg.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    pymemcg.cli.main(['snapshot', '--backend', 'bpf', sys.argv[1]])\n"
            "print(first, sorted(m for m in sys.modules if m in ('pymemcg.parity',\n"
            "      'pymemcg.cli.doctor', 'pymemcg.cli.verify', 'pymemcg.cli.pins',\n"
            "      'pymemcg.cli.stats')))\n"
            "print(pymemcg.verify.__module__, pymemcg.pins.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, own_memory_cgroup()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[] []", "pymemcg.parity pymemcg.pins"], out.stdout
