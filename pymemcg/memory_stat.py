"""The kernel's own files of a memory cgroup, parsed: memory.stat in both
formats (v2 keys are the stat names; v1 keys map to them, cache -> file,
rss -> anon, ..., with the total_* keys as the hierarchical values and the
plain keys as local ones), the page-counter files, the protections and
limits (one number each, "max" where none is set), memory.events and
cgroup.stat.

The text backend (backends/text.py) reads through these, and they are the
control of `pymemcg verify`, every parity test and the benchmark.
"""

from __future__ import annotations

import os
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

from . import catalog
from .catalog import COUNTER, FIELD, MEMEVENT, PRESSURE
from .errors import MalformedData, ReadError
from .kernel_probe import psi_running

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")   # bytes; the unit of page counters and of page stats
PAGE_COUNTER_MAX_BYTES = (2**63 - 1) // PAGE_SIZE * PAGE_SIZE  # "max" / unlimited

# counter -> file, per cgroup version
V1_COUNTER_FILES = {
    "usage": "memory.usage_in_bytes", "peak": "memory.max_usage_in_bytes",
    "limit": "memory.limit_in_bytes", "failcnt": "memory.failcnt",
    "memsw_usage": "memory.memsw.usage_in_bytes", "memsw_peak": "memory.memsw.max_usage_in_bytes",
    "memsw_limit": "memory.memsw.limit_in_bytes", "memsw_failcnt": "memory.memsw.failcnt",
}
V2_COUNTER_FILES = {
    "usage": "memory.current", "peak": "memory.peak", "limit": "memory.max",
    "swap_usage": "memory.swap.current", "swap_peak": "memory.swap.peak",
    "swap_limit": "memory.swap.max",
}
# the protections and limits (and memory.zswap.current): one number each,
# "max" where none is set
V1_TUNABLE_FILES = {"soft_limit": "memory.soft_limit_in_bytes"}
V2_TUNABLE_FILES = {
    "memory_min": "memory.min", "memory_low": "memory.low", "memory_high": "memory.high",
    "swap_high": "memory.swap.high", "zswap_max": "memory.zswap.max",
    "oom_group": "memory.oom.group", "zswap_current": "memory.zswap.current",
}
# of those, files that print the subtree's value, not one the cgroup alone has
# (page counters and settings have one value, whatever local= says)
HIERARCHICAL_FILES = frozenset({"zswap_current"})
# memory.events keys -> stat names
EVENTS_KEYS = {"low": "low", "high": "high", "max": "max", "oom": "oom", "oom_kill": "oom_kill",
                "oom_group_kill": "oom_group_kill", "sock_throttled": "sock_throttled"}
# cgroup.stat (cgroup v2) keys -> stat names
CGROUP_STAT_KEYS = {"nr_descendants": "nr_descendants",
                    "nr_dying_descendants": "nr_dying_descendants"}
SWAP_EVENTS_KEYS = {"high": "swap_high_events", "max": "swap_max_events",
                     "fail": "swap_fail_events"}


def number_files(version: int) -> Dict[str, str]:
    """Stat name -> the one-number file that prints it on cgroup `version`:
    page counters, protections and limits."""
    if version == 1:
        return {**V1_COUNTER_FILES, **V1_TUNABLE_FILES}
    return {**V2_COUNTER_FILES, **V2_TUNABLE_FILES}


def _lines(text: Union[str, bytes, bytearray, memoryview], what: str
           ) -> List[Tuple[int, str]]:
    """A kernel file's non-empty lines, numbered from 1; MalformedData if
    the text is not ASCII."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as e:
            raise MalformedData(f"{what}: not ASCII text at byte {e.start}") from None
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line]


def parse_flat_keyed(text: Union[str, bytes, bytearray, memoryview], what: str = "memory.stat") -> Dict[str, int]:
    """'key value' lines -> {key: value}. Raises MalformedData on anything else."""
    out: Dict[str, int] = {}
    for lineno, line in _lines(text, what):
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0]:
            raise MalformedData(f"{what} line {lineno}: expected 'key value', got {line[:60]!r}")
        key, value = parts
        if not key.isascii() or not key.isprintable():
            raise MalformedData(f"{what} line {lineno}: key {key[:30]!r} is not printable ASCII")
        # the kernel prints u64s: 20 digits at most
        if not value.isascii() or not value.isdigit() or len(value) > 20 or int(value) >= 2**64:
            raise MalformedData(f"{what} line {lineno}: {key} has a value that is not a u64 "
                                f"{value[:30]!r}")
        out[key] = int(value)
    return out


# --- pressure (PSI) ---
PRESSURE_FILE = "memory.pressure"


def parse_pressure(text: Union[str, bytes, bytearray, memoryview],
                   what: str = PRESSURE_FILE) -> Dict[str, int]:
    """memory.pressure text -> {stat name: value}, in the record's units:
    total= microseconds as printed; avg10=5.23 -> 523, hundredths of a
    percent (psi_show prints LOAD_INT, ".", LOAD_FRAC as two digits).
    Lines: "some ..." and "full ..."; raises MalformedData on anything else."""
    out: Dict[str, int] = {}
    for lineno, line in _lines(text, what):
        head, *fields = line.split(" ")
        if head not in catalog.PRESSURE_LINES or len(fields) != 4:
            raise MalformedData(f"{what} line {lineno}: expected 'some|full avg10=.. avg60=.. "
                                f"avg300=.. total=..', got {line[:80]!r}")
        for field, want in zip(fields, catalog.PRESSURE_WINDOWS + ("total",)):
            key, _, value = field.partition("=")
            if key != want:
                raise MalformedData(f"{what} line {lineno}: expected {want}=, got {field[:30]!r}")
            if want == "total":
                ok = value.isascii() and value.isdigit() and len(value) <= 20
                number = int(value) if ok else -1
            else:
                whole, dot, frac = value.partition(".")
                ok = (dot == "." and len(frac) == 2 and whole.isascii() and whole.isdigit()
                      and frac.isascii() and frac.isdigit() and len(whole) <= 18)
                number = int(whole) * 100 + int(frac) if ok else -1
            if not ok or number >= 2**64:
                raise MalformedData(f"{what} line {lineno}: {head} {want} is not a number "
                                    f"as the kernel prints it: {value[:30]!r}")
            out[catalog.pressure_name(head, want)] = number
    return out


def v1_to_names(raw: Dict[str, int], local: bool) -> Dict[str, int]:
    """v1 memory.stat keys -> stat names: plain keys if local, total_* otherwise."""
    out: Dict[str, int] = {}
    for v1_key, name in catalog.V1_KEYS.items():
        key = v1_key if local else "total_" + v1_key
        if key in raw:
            out[name] = raw[key]
    return out


def parse_memory_stat(text: Union[str, bytes, bytearray, memoryview], version: int, local: bool = False) -> Dict[str, int]:
    """memory.stat text of cgroup `version` -> {stat name: value}.

    v2 memory.stat has hierarchical values only: with local=True it gives {}.
    """
    raw = parse_flat_keyed(text)
    if version == 1:
        return v1_to_names(raw, local)
    if local:
        return {}
    return {k: v for k, v in raw.items() if k in catalog.STATS}


def read_file(path: str, dir_fd: Optional[int] = None) -> Optional[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ReadError(e.errno, f"cannot read {path}: {e.strerror}") from None
    try:
        return os.read(fd, 1 << 16).decode("ascii")
    except OSError as e:
        raise ReadError(e.errno, f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def parse_number(text: str, what: str) -> int:
    """A one-number file's text (memory.current, limit_in_bytes, ...) -> int;
    "max" is unlimited: PAGE_COUNTER_MAX_BYTES."""
    text = text.strip()
    if text == "max":
        return PAGE_COUNTER_MAX_BYTES
    if not text.isdigit():
        raise MalformedData(f"{what}: expected a number, got {text[:30]!r}")
    return int(text)


_printed_keys: Dict[str, FrozenSet[str]] = {}


def printed_keys(mountpoint: str) -> FrozenSet[str]:
    """The keys this kernel prints in memory.stat (read at the hierarchy root
    once): a catalog name is served by text only where the kernel prints it."""
    keys = _printed_keys.get(mountpoint)
    if keys is None:
        text = read_file(os.path.join(mountpoint, "memory.stat")) or ""
        keys = _printed_keys[mountpoint] = frozenset(parse_flat_keyed(text))
    return keys


def text_availability(name: str, version: int, local: bool,
                      keys: Optional[FrozenSet[str]] = None) -> Tuple[bool, str]:
    """Whether the text backend can serve a stat, and from which file.
    keys: what memory.stat prints on this kernel (printed_keys())."""
    if name not in catalog.STATS:   # a per-node NUMA stat: memory.numa_stat
        from .numa import numa_availability
        return numa_availability(name, version, local)
    stat = catalog.STATS[name]
    files = number_files(version)
    if name in CGROUP_STAT_KEYS.values():
        return (True, "cgroup.stat") if version == 2 else \
            (False, "no cgroup v1 file (cgroup.stat is cgroup v2's)")
    if name in files:
        if local and name in HIERARCHICAL_FILES:
            return False, f"{files[name]} prints hierarchical values only"
        return True, files[name]
    if stat.kind in (COUNTER, FIELD):
        return False, f"no cgroup v{version} file"
    if stat.kind == PRESSURE:
        if version == 1:
            return False, "cgroup v1 has no memory.pressure"
        if local:
            return False, "memory.pressure is hierarchical only"
        if not psi_running():
            return False, "PSI is off on this kernel (psi=0): no memory.pressure"
        return True, PRESSURE_FILE
    if stat.kind == MEMEVENT:
        if version == 1:
            ok = name == "oom_kill" and not local
            return ok, "memory.oom_control" if ok else "no cgroup v1 file"
        if name in SWAP_EVENTS_KEYS.values():
            if local:
                # the kernel counts them in memory_events_local[] (BPF reads
                # that), but prints only the hierarchical memory.swap.events
                return False, "no memory.swap.events.local: the kernel prints the " \
                              "hierarchical counts only"
            return True, "memory.swap.events"
        return True, "memory.events.local" if local else "memory.events"
    key = stat.v1_key if version == 1 else stat.v2_key
    if version == 2 and local:
        return False, "v2 memory.stat has no local values"
    if key is None:
        return False, f"not in v{version} memory.stat"
    if keys is not None and key not in keys:
        return False, "this kernel's memory.stat does not print it"
    return True, "memory.stat"
