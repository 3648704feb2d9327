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
