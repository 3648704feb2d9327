"""The kernel's own files that verify compares with, read and turned into
values by stat name: memory.stat, the page-counter files and the limits and
protections of either cgroup version (pymemcg.MAX where a limit is not
set), memory.events(.local), memory.swap.events, cgroup.stat and
memory.pressure on v2, and
memory.kmem.usage_in_bytes and memory.oom_control on v1. Sizes are bytes and
events counts, as the files print them (memory_stat.py parses each file)."""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple

from .. import catalog
from ..catalog import COUNTER, FIELD, MEMEVENT, PRESSURE
from ..decode import Value, unlimited
from ..numa import NUMA_FILE, parse_numa_stat
from ..memory_stat import (CGROUP_STAT_KEYS, EVENTS_KEYS, HIERARCHICAL_FILES, PRESSURE_FILE,
                           SWAP_EVENTS_KEYS, number_files, parse_flat_keyed, parse_number,
                           parse_pressure)

# v1: the kmem page counter is charged in the same call as MEMCG_KMEM
# (memcg_account_kmem), so it is the kernel's own print of "kernel" there
V1_KMEM_FILE = "memory.kmem.usage_in_bytes"
V1_OOM_FILE = "memory.oom_control"


FileValues = Dict[str, Tuple[Value, str]]    # stat name -> (value, "file key")


def _files_for(version: int) -> Tuple[str, ...]:
    extra = (V1_KMEM_FILE, V1_OOM_FILE) if version == 1 else \
        ("memory.events", "memory.events.local", "memory.swap.events", "cgroup.stat",
         PRESSURE_FILE)
    return ("memory.stat",) + tuple(number_files(version).values()) + extra + (NUMA_FILE,)


def read_files(path: str, version: int) -> Dict[str, Optional[str]]:
    """The text of every file verify compares, by file name (None if absent)."""
    out: Dict[str, Optional[str]] = {}
    for name in _files_for(version):
        try:
            with open(os.path.join(path, name), "rb", buffering=0) as f:
                out[name] = f.read().decode("ascii")
        except FileNotFoundError:
            out[name] = None
    return out


def file_values(files: Mapping[str, Optional[str]], version: int, local: bool,
                leaf: bool) -> Tuple[FileValues, Dict[str, str]]:
    """What the kernel's files say, by stat name, and why a stat has no value.

    local values come from files that print them (v1 memory.stat's plain
    keys, v2 memory.events.local) and, at a leaf, from the hierarchical files:
    a cgroup without children is its whole subtree.
    """
    values: FileValues = {}
    why: Dict[str, str] = {}
    hier = not local or leaf
    note = " (a leaf: its own values are its subtree's)" if local and leaf else ""
    stat_keys = parse_flat_keyed(files.get("memory.stat") or "")

    numbers = number_files(version)
    for s in catalog.STATS.values():
        if s.name in CGROUP_STAT_KEYS.values():
            _cgroup_stat(s.name, files, version, values, why)
            continue
        if s.kind in (COUNTER, FIELD) or s.name in numbers:
            fname = numbers.get(s.name)
            if fname is None:
                why[s.name] = f"no cgroup v{version} file has it"
            elif files.get(fname) is None:
                why[s.name] = f"this kernel has no {fname}"
            elif s.name in HIERARCHICAL_FILES and not hier:
                why[s.name] = f"{fname} prints the subtree's value only (local values " \
                              f"compared at the leaves)"
            else:
                # a page counter or a setting has one value: local=True reads
                # the same; `or ""`: not None, the branch above says
                value = parse_number(files[fname] or "", fname)
                values[s.name] = (unlimited(value) if s.tunable else value,
                                  fname + (note if s.name in HIERARCHICAL_FILES else ""))
            continue
        if s.kind == MEMEVENT:
            _memevent(s.name, files, version, local, leaf, note, values, why)
            continue
        if s.kind == PRESSURE:
            _pressure(s.name, files, version, local, values, why)
            continue
        if version == 1:
            if s.name == "kernel":
                if not hier:
                    why[s.name] = (f"cgroup v1 prints no local value of it ({V1_KMEM_FILE} "
                                   f"is hierarchical; compared at the leaves)")
                elif files.get(V1_KMEM_FILE) is None:
                    why[s.name] = f"this kernel has no {V1_KMEM_FILE}"
                else:
                    values[s.name] = (parse_number(files[V1_KMEM_FILE] or "", V1_KMEM_FILE),
                                      V1_KMEM_FILE + note)
                continue
            if s.v1_key is None:
                other = f" (v2's memory.stat prints it as {s.v2_key})" if s.v2_key else ""
                why[s.name] = f"cgroup v1's memory.stat has no key for it{other}"
                continue
            key = s.v1_key if local else "total_" + s.v1_key
        else:
            if s.v2_key is None:
                other = f" (only v1's memory.stat prints it, as {s.v1_key})" if s.v1_key else ""
                why[s.name] = f"cgroup v2's memory.stat has no key for it{other}"
                continue
            if not hier:
                why[s.name] = ("cgroup v2's memory.stat prints hierarchical values only "
                               "(local ones compared at the leaves)")
                continue
            key = s.v2_key
        if key not in stat_keys:
            why[s.name] = f"this kernel's memory.stat does not print {key}"
        else:
            values[s.name] = (stat_keys[key], f"memory.stat {key}" + (note if version == 2
                                                                        else ""))
    _numa(files, version, local, leaf, note, values, why)
    return values, why


# --- NUMA ---
def _numa(files: Mapping[str, Optional[str]], version: int, local: bool, leaf: bool,
          note: str, values: FileValues, why: Dict[str, str]) -> None:
    """memory.numa_stat per node ("anon:N0"): v2 prints hierarchical values
    only (a leaf's are its own), v1 both (hierarchical_* and plain lines).
    A NUMA name the file does not print has no entry: why_numa() says why."""
    text = files.get(NUMA_FILE)
    if text is None:
        why[NUMA_FILE] = f"this kernel has no {NUMA_FILE}"
        return
    hier_only = version == 2 and local
    if hier_only and not leaf:
        why[NUMA_FILE] = (f"cgroup v2's {NUMA_FILE} prints hierarchical values only (local "
                          f"ones compared at the leaves)")
        return
    for n, v in parse_numa_stat(text, version, local and not hier_only).items():
        prefix = "hierarchical_" if version == 1 and not local else ""
        values[n] = (v, f"{NUMA_FILE} {prefix}{n.replace(':N', ' N', 1)}="
                     + (note if hier_only else ""))


def _memevent(name: str, files: Mapping[str, Optional[str]], version: int, local: bool,
              leaf: bool, note: str, values: FileValues, why: Dict[str, str]) -> None:
    """A memory.events counter: v2 memory.events(.local) and memory.swap.events;
    v1 prints only oom_kill, in memory.oom_control."""
    if version == 1:
        if name != "oom_kill":
            why[name] = "cgroup v1 has no memory.events (it prints only oom_kill, in " \
                        "memory.oom_control)"
        elif local and not leaf:
            why[name] = f"cgroup v1 prints no local value of it beside {V1_OOM_FILE}'s " \
                        f"(compared at the leaves)"
        elif files.get(V1_OOM_FILE) is None:
            why[name] = f"this kernel has no {V1_OOM_FILE}"
        else:
            raw = parse_flat_keyed(files[V1_OOM_FILE] or "", V1_OOM_FILE)
            if "oom_kill" in raw:
                values[name] = (raw["oom_kill"], f"{V1_OOM_FILE} oom_kill{note}")
            else:
                why[name] = f"this kernel's {V1_OOM_FILE} does not print oom_kill"
        return
    for fname, keys in (("memory.events.local" if local else "memory.events", EVENTS_KEYS),
                        ("memory.swap.events", SWAP_EVENTS_KEYS)):
        key = next((k for k, n in keys.items() if n == name), None)
        if key is None:
            continue
        if fname == "memory.swap.events" and local and not leaf:
            why[name] = "cgroup v2 has no memory.swap.events.local (compared at the leaves)"
        elif files.get(fname) is None:
            why[name] = f"this kernel has no {fname}"
        else:
            raw = parse_flat_keyed(files[fname] or "", fname)
            if key in raw:
                values[name] = (raw[key], f"{fname} {key}"
                                + (note if fname == "memory.swap.events" else ""))
            else:
                why[name] = f"this kernel's {fname} does not print {key}"
        return
    why[name] = "no cgroup v2 file prints it"


def _cgroup_stat(name: str, files: Mapping[str, Optional[str]], version: int,
                 values: FileValues, why: Dict[str, str]) -> None:
    """A count of cgroup.stat (cgroup v2): a field of the cgroup itself, so
    local and hierarchical reads have the same value."""
    key = next(k for k, n in CGROUP_STAT_KEYS.items() if n == name)
    if version == 1:
        why[name] = ("cgroup v1 has no cgroup.stat (the memory hierarchy's cgroups keep "
                     "the count, but no file prints it)")
    elif files.get("cgroup.stat") is None:
        why[name] = "this kernel has no cgroup.stat"
    else:
        raw = parse_flat_keyed(files["cgroup.stat"] or "", "cgroup.stat")
        if key in raw:
            values[name] = (raw[key], f"cgroup.stat {key}")
        else:
            why[name] = f"this kernel's cgroup.stat does not print {key}"


# --- pressure (PSI) ---
def _pressure(name: str, files: Mapping[str, Optional[str]], version: int, local: bool,
              values: FileValues, why: Dict[str, str]) -> None:
    """A memory.pressure value (v2). Reading the file aggregates the group's
    per-CPU times and, once per 2 s period, its averages (psi_show): the
    bracketing reads are what the BPF read between them sees, so a quiet
    cgroup's values are the same in all three."""
    if version == 1:
        why[name] = "cgroup v1 has no memory.pressure"
    elif local:
        why[name] = "memory.pressure is hierarchical only"
    elif files.get(PRESSURE_FILE) is None:
        why[name] = (f"no {PRESSURE_FILE} (PSI off, or this cgroup's cgroup.pressure is 0)")
    else:
        line, field = name.split("_")[1:3]
        values[name] = (parse_pressure(files[PRESSURE_FILE] or "")[name],
                        f"{PRESSURE_FILE} {line} {field}")
