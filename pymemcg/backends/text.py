"""The text backend: what BPF would read, from the kernel's own files
(memory_stat.py). It serves hosts where BPF cannot run."""

from __future__ import annotations

import errno
import os
from typing import Callable, Dict, List, Optional, Sequence

from .. import catalog
from ..catalog import MEMEVENT, PRESSURE
from ..cgroupfs import Cgroup, Replaced, path_list, resolve_cgroup
from ..decode import Selection, Record, Snapshot, raw_record
from ..errors import CgroupNotFound, ReadError
from ..memory_stat import (CGROUP_STAT_KEYS, EVENTS_KEYS, HIERARCHICAL_FILES, PRESSURE_FILE,
                           SWAP_EVENTS_KEYS, number_files, parse_flat_keyed, parse_memory_stat,
                           parse_number, parse_pressure, printed_keys, read_file,
                           text_availability)
from ..numa import NUMA_FILE, is_numa, parse_numa_stat
from . import read_each


def _removed(dfd: int) -> bool:
    """Whether the cgroup directory open as dfd was removed: its files go
    with it (the fd stays valid), and every memory cgroup has memory.stat."""
    try:
        os.stat("memory.stat", dir_fd=dfd)
    except FileNotFoundError:
        return True
    return False


class TextBackend:
    """Reads the selected stats from cgroupfs files."""

    name = "text"
    loads_programs = False
    read_method = "memory.stat text"

    def __init__(self, names: Sequence[str], local: bool, version: int,
                 mountpoint: Optional[str] = None) -> None:
        self.version = version
        self.local = local
        keys = printed_keys(mountpoint) if mountpoint else None
        sources = {}
        self._numa = frozenset(n for n in names if is_numa(n))
        for n in names:
            ok, where = text_availability(n, version, local, keys)
            sources[n] = f"text: {where}" if ok else f"unavailable: {where}"
        self.selection = Selection(names, sources)

    def values(self, path: str, is_root: bool = False,
               cgroup_id: Optional[int] = None) -> Dict[str, int]:
        """All stats this backend can read for the cgroup directory `path`.

        Every file is read through one fd of the directory, so all values
        are of one cgroup even if the path is renamed meanwhile; with
        cgroup_id, that directory must be this cgroup (else Replaced).
        A cgroup removed before or while its files are read raises
        CgroupNotFound, never a record with the files it lost left out.
        The root's usage files on cgroup v1 are global approximations
        (mem_cgroup_usage), not its page counter: left out, as in BPF.
        """
        try:
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CgroupNotFound(f"{path}: the cgroup was removed") from None
        except OSError as e:
            raise ReadError(e.errno, f"cannot open {path}: {e.strerror}") from None
        try:
            if cgroup_id is not None and os.fstat(dfd).st_ino != cgroup_id:
                raise Replaced(path)
            try:
                return self._values_at(dfd, path, is_root)
            except ReadError as e:
                if e.errno != errno.ENODEV:
                    raise
                # kernfs refuses the files of a removed cgroup with ENODEV
                raise CgroupNotFound(f"{path}: the cgroup was removed while being read"
                                     ) from None
        finally:
            os.close(dfd)

    def _values_at(self, dfd: int, path: str, is_root: bool) -> Dict[str, int]:
        names = self.selection.names
        out: Dict[str, int] = {}
        missing: List[str] = []

        def read(fname: str) -> Optional[str]:
            text = read_file(fname, dfd)
            if text is None:
                missing.append(fname)
            return text

        stat_text = read("memory.stat")
        if stat_text is None:  # every memory cgroup has it: a removed one has no files
            raise CgroupNotFound(f"{path}: the cgroup was removed")
        out.update(parse_memory_stat(stat_text, self.version, self.local))
        want = set(names)
        for name, fname in number_files(self.version).items():
            if name in want and not (is_root and name in ("usage", "memsw_usage")) \
                    and not (self.local and name in HIERARCHICAL_FILES):
                text = read(fname)
                if text is not None:
                    out[name] = parse_number(text, fname)
        if want & {s.name for s in catalog.STATS.values() if s.kind == MEMEVENT}:
            out.update(self._events(read))
        if self.version == 2 and want & set(CGROUP_STAT_KEYS.values()):
            raw = parse_flat_keyed(read("cgroup.stat") or "", "cgroup.stat")
            out.update({CGROUP_STAT_KEYS[k]: v for k, v in raw.items() if k in CGROUP_STAT_KEYS})
        if self.version == 2 and not self.local and \
                want & {s.name for s in catalog.STATS.values() if s.kind == PRESSURE}:
            # absent: PSI off, or cgroup.pressure 0 (the kernel hides the file)
            text = read(PRESSURE_FILE)
            if text is not None:
                out.update(parse_pressure(text))
        # --- NUMA ---
        if any(n in self._numa for n in names):
            text = read(NUMA_FILE)
            if text is not None:
                out.update(parse_numa_stat(text, self.version, self.local))
        if missing and _removed(dfd):
            # a file this kernel does not have is unavailable; one that went
            # with its cgroup is not
            raise CgroupNotFound(f"{path}: the cgroup was removed while being read")
        return out

    def _events(self, read: Callable[[str], Optional[str]]) -> Dict[str, int]:
        text: Optional[str]
        if self.version == 1:
            if self.local:
                return {}
            text = read("memory.oom_control") or ""
            raw = parse_flat_keyed(text, "memory.oom_control")
            return {"oom_kill": raw["oom_kill"]} if "oom_kill" in raw else {}
        out = {}
        text = read("memory.events.local" if self.local else "memory.events")
        for k, v in parse_flat_keyed(text or "", "memory.events").items():
            if k in EVENTS_KEYS:
                out[EVENTS_KEYS[k]] = v
        if self.local:
            # no memory.swap.events.local: its counts are the subtree's
            return out
        text = read("memory.swap.events")
        for k, v in parse_flat_keyed(text or "", "memory.swap.events").items():
            if k in SWAP_EVENTS_KEYS:
                out[SWAP_EVENTS_KEYS[k]] = v
        return out

    def record(self, cg: Cgroup, parent_id: int) -> Record:
        values = self.values(cg.path, cg.relpath == "/", cg.id)
        valid = 0
        row: List[int] = []
        for i, name in enumerate(self.selection.names):
            v = values.get(name)
            if v is not None:
                valid |= 1 << i
            row.append(v or 0)
        return Record(self.selection, raw_record(cg.id, parent_id, 0, cg.level, 0, valid, row),
                      cg.relpath)

    def read(self, path: str) -> Record:
        """The selected stats of the cgroup directory `path`."""
        return self.read_file(resolve_cgroup(path))

    def read_many(self, paths: Sequence[str]) -> List[Optional[Record]]:
        """read() of each path, None where no cgroup has it: the files are
        read per cgroup whichever way, so there is nothing to batch."""
        return read_each(self.read, path_list(paths))

    def read_file(self, cg: Cgroup) -> Record:
        for _ in range(3):
            try:
                parent_id = 0 if cg.relpath == "/" else os.stat(os.path.dirname(cg.path)).st_ino
                return self.record(cg, parent_id)
            except (Replaced, FileNotFoundError):
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
                rec = self.record(cg, parent_id) if records else self.read_file(cg)
                entries = sorted((e for e in os.scandir(cg.path) if e.is_dir(follow_symlinks=False)),
                                 key=lambda e: e.name, reverse=True)
            except (FileNotFoundError, Replaced):  # CgroupNotFound among them
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

