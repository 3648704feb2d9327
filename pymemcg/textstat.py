"""The text backend: memory.stat and friends, parsed.

It serves hosts where BPF cannot run and is the control of every parity test
and benchmark. Both memory.stat formats are understood: v2 keys are the stat
names; v1 keys map to them (cache -> file, rss -> anon, ...), with the
total_* keys as the hierarchical values and the plain keys as local ones.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from . import catalog
from .catalog import COUNTER, MEMEVENT
from .cgroupfs import Cgroup, resolve_cgroup
from .decode import Layout, Record, Snapshot
from .errors import CgroupNotFound, MalformedData, ReadError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PAGE_COUNTER_MAX_BYTES = (2**63 - 1) // PAGE_SIZE * PAGE_SIZE  # "max" / unlimited

# counter -> file, per cgroup version
_V1_COUNTER_FILES = {
    "usage": "memory.usage_in_bytes", "peak": "memory.max_usage_in_bytes",
    "limit": "memory.limit_in_bytes", "failcnt": "memory.failcnt",
    "memsw_usage": "memory.memsw.usage_in_bytes", "memsw_peak": "memory.memsw.max_usage_in_bytes",
    "memsw_limit": "memory.memsw.limit_in_bytes", "memsw_failcnt": "memory.memsw.failcnt",
}
_V2_COUNTER_FILES = {
    "usage": "memory.current", "peak": "memory.peak", "limit": "memory.max",
    "swap_usage": "memory.swap.current", "swap_peak": "memory.swap.peak",
    "swap_limit": "memory.swap.max",
}
# memory.events keys -> stat names
_EVENTS_KEYS = {"low": "low", "high": "high", "max": "max", "oom": "oom", "oom_kill": "oom_kill",
                "oom_group_kill": "oom_group_kill"}
_SWAP_EVENTS_KEYS = {"high": "swap_high_events", "max": "swap_max_events",
                     "fail": "swap_fail_events"}


def parse_flat_keyed(text, what: str = "memory.stat") -> Dict[str, int]:
    """'key value' lines -> {key: value}. Raises MalformedData on anything else."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as e:
            raise MalformedData(f"{what}: not ASCII text at byte {e.start}") from None
    out: Dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
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


def v1_to_names(raw: Dict[str, int], local: bool) -> Dict[str, int]:
    """v1 memory.stat keys -> stat names: plain keys if local, total_* otherwise."""
    out: Dict[str, int] = {}
    for v1_key, name in catalog.V1_KEYS.items():
        key = v1_key if local else "total_" + v1_key
        if key in raw:
            out[name] = raw[key]
    return out


def parse_memory_stat(text, version: int, local: bool = False) -> Dict[str, int]:
    """memory.stat text of cgroup `version` -> {stat name: value}.

    v2 memory.stat has hierarchical values only: with local=True it gives {}.
    """
    raw = parse_flat_keyed(text)
    if version == 1:
        return v1_to_names(raw, local)
    if local:
        return {}
    return {k: v for k, v in raw.items() if k in catalog.STATS}


def _read(path: str, dir_fd: Optional[int] = None) -> Optional[str]:
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


def _read_number(path: str, dir_fd: Optional[int] = None) -> Optional[int]:
    text = _read(path, dir_fd)
    return None if text is None else parse_number(text, path)


class _Replaced(Exception):
    """The path names another cgroup than the one resolved: resolve again."""


_printed_keys: Dict[str, frozenset] = {}


def printed_keys(mountpoint: str) -> frozenset:
    """The keys this kernel prints in memory.stat (read at the hierarchy root
    once): a catalog name is served by text only where the kernel prints it."""
    keys = _printed_keys.get(mountpoint)
    if keys is None:
        text = _read(os.path.join(mountpoint, "memory.stat")) or ""
        keys = _printed_keys[mountpoint] = frozenset(parse_flat_keyed(text))
    return keys


def text_availability(name: str, version: int, local: bool,
                      keys: Optional[frozenset] = None) -> Tuple[bool, str]:
    """Whether the text backend can serve a stat, and from which file.
    keys: what memory.stat prints on this kernel (printed_keys())."""
    stat = catalog.STATS[name]
    if stat.kind == COUNTER:
        files = _V1_COUNTER_FILES if version == 1 else _V2_COUNTER_FILES
        return (name in files, files.get(name, f"no cgroup v{version} file"))
    if stat.kind == MEMEVENT:
        if version == 1:
            ok = name == "oom_kill" and not local
            return ok, "memory.oom_control" if ok else "no cgroup v1 file"
        return True, "memory.events.local" if local else "memory.events"
    key = stat.v1_key if version == 1 else stat.v2_key
    if version == 2 and local:
        return False, "v2 memory.stat has no local values"
    if key is None:
        return False, f"not in v{version} memory.stat"
    if keys is not None and key not in keys:
        return False, "this kernel's memory.stat does not print it"
    return True, "memory.stat"


class TextBackend:
    """Reads the selected stats from cgroupfs files."""

    name = "text"
    read_method = "memory.stat text"

    def __init__(self, names: Sequence[str], local: bool, version: int,
                 mountpoint: Optional[str] = None) -> None:
        self.version = version
        self.local = local
        keys = printed_keys(mountpoint) if mountpoint else None
        sources = {}
        for n in names:
            ok, where = text_availability(n, version, local, keys)
            sources[n] = f"text: {where}" if ok else f"unavailable: {where}"
        self.layout = Layout(names, sources)

    def values(self, path: str, is_root: bool = False,
               cgroup_id: Optional[int] = None) -> Dict[str, int]:
        """All stats this backend can read for the cgroup directory `path`.

        Every file is read through one fd of the directory, so all values
        are of one cgroup even if the path is renamed meanwhile; with
        cgroup_id, that directory must be this cgroup (else _Replaced).
        The root's usage files on cgroup v1 are global approximations
        (mem_cgroup_usage), not its page counter: left out, as in BPF.
        """
        try:
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ReadError(2, f"{path} vanished: the cgroup was removed") from None
        except OSError as e:
            raise ReadError(e.errno, f"cannot open {path}: {e.strerror}") from None
        try:
            if cgroup_id is not None and os.fstat(dfd).st_ino != cgroup_id:
                raise _Replaced(path)
            return self._values_at(dfd, path, is_root)
        finally:
            os.close(dfd)

    def _values_at(self, dfd: int, path: str, is_root: bool) -> Dict[str, int]:
        names = self.layout.names
        out: Dict[str, int] = {}
        stat_text = _read("memory.stat", dfd)
        if stat_text is None:
            raise ReadError(2, f"{path}/memory.stat vanished: the cgroup was removed")
        out.update(parse_memory_stat(stat_text, self.version, self.local))
        files = _V1_COUNTER_FILES if self.version == 1 else _V2_COUNTER_FILES
        want = set(names)
        for name, fname in files.items():
            if name in want and not (is_root and name in ("usage", "memsw_usage")):
                value = _read_number(fname, dfd)
                if value is not None:
                    out[name] = value
        if want & {s.name for s in catalog.STATS.values() if s.kind == MEMEVENT}:
            out.update(self._events(dfd))
        return out

    def _events(self, dfd: int) -> Dict[str, int]:
        if self.version == 1:
            if self.local:
                return {}
            text = _read("memory.oom_control", dfd) or ""
            raw = parse_flat_keyed(text, "memory.oom_control")
            return {"oom_kill": raw["oom_kill"]} if "oom_kill" in raw else {}
        out = {}
        text = _read("memory.events.local" if self.local else "memory.events", dfd)
        for k, v in parse_flat_keyed(text or "", "memory.events").items():
            if k in _EVENTS_KEYS:
                out[_EVENTS_KEYS[k]] = v
        text = _read("memory.swap.events", dfd)
        for k, v in parse_flat_keyed(text or "", "memory.swap.events").items():
            if k in _SWAP_EVENTS_KEYS:
                out[_SWAP_EVENTS_KEYS[k]] = v
        return out

    def record(self, cg: Cgroup, parent_id: int) -> Record:
        values = self.values(cg.path, cg.relpath == "/", cg.id)
        valid = 0
        row: List[int] = []
        for i, name in enumerate(self.layout.names):
            v = values.get(name)
            if v is not None:
                valid |= 1 << i
            row.append(v or 0)
        return Record(self.layout, (cg.id, parent_id, 0, cg.level, 0, valid & (2**64 - 1),
                                    valid >> 64, *row), cg.relpath)

    def read(self, path: str) -> Record:
        """The selected stats of the cgroup directory `path`."""
        return self._read(resolve_cgroup(path))

    def _read(self, cg: Cgroup) -> Record:
        for _ in range(3):
            try:
                parent_id = 0 if cg.relpath == "/" else os.stat(os.path.dirname(cg.path)).st_ino
                return self.record(cg, parent_id)
            except (_Replaced, FileNotFoundError):
                cg = resolve_cgroup(cg.path)  # renamed or replaced meanwhile
        raise CgroupNotFound(f"{cg.path}: the cgroup kept being replaced while being read")

    def read_tree(self, path: str) -> Snapshot:
        """Every cgroup under `path` (included) in pre-order, as the kernel's
        walk gives them: a cgroup, then each child's whole subtree (children
        by name)."""
        root = resolve_cgroup(path)
        records: List[Record] = []
        stack = [(root, 0)]
        while stack:
            cg, parent_id = stack.pop()
            try:
                rec = self.record(cg, parent_id) if records else self._read(cg)
                entries = sorted((e for e in os.scandir(cg.path) if e.is_dir(follow_symlinks=False)),
                                 key=lambda e: e.name, reverse=True)
            except (ReadError, FileNotFoundError, _Replaced):
                if not records:
                    raise CgroupNotFound(f"{root.path}: the cgroup was removed") from None
                continue  # removed while we walked
            records.append(rec)
            prefix = cg.relpath.rstrip("/") + "/"
            stack.extend((Cgroup(e.path, root.mount, prefix + e.name, e.inode()), rec.id)
                         for e in entries)
        return Snapshot.from_records(root.relpath, records)

    def close(self) -> None:
        pass


def read_cgroup(path: str, names: Sequence[str], local: bool = False) -> Record:
    """One-shot text read (no Reader)."""
    cg = resolve_cgroup(path)
    return TextBackend(names, local, cg.mount.version, cg.mount.mountpoint)._read(cg)
