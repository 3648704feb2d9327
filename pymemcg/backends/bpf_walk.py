"""A BPF reader's tree reads: one iterator session of the root's
DESCENDANTS_PRE link per walk. Records past the session buffer spill into
the program's overflow map in the same walk, and the trailer says how many
records there were, so a tree is complete or the read fails, never
truncated; a tree that outgrows the overflow map reloads the program with
a bigger one."""

from __future__ import annotations

import errno
import os
from typing import Optional

from ..cgroupfs import Cgroup, TreePaths, resolve_cgroup, still_names
from ..decode import PackedRecords, RawRecords, Selection, Snapshot
from ..errors import BpfUnavailable, CgroupNotFound, MalformedData, ReadError
from ..programs import ORDER_DESCENDANTS_PRE, Program
from ..wire import VISITED_UNKNOWN, parse_trailer
from . import bpf_links
from .bpf_links import MAX_TREE_LINKS, BpfSelection, Link, Links, Sessions

_RETRIES = 8


class TreeWalks:
    """read_tree() of one reader: its roots' links (in Links), the overflow
    copy buffer and the paths of the last walks."""

    def __init__(self, bpf: BpfSelection, links: Links, sessions: Sessions,
                 sel_tree: bytes) -> None:
        self.bpf = bpf
        self.links = links
        self.sessions = sessions
        self.selection: Selection = bpf.selection
        self.sel_tree = sel_tree   # what the trailer of a walk must say
        self.packed = PackedRecords.supported(self.selection)
        self.paths = TreePaths()
        self.ovf = bytearray(0)

    def read(self, path: str) -> Snapshot:
        links = self.links
        try:
            cg = links.roots.get(path)
        except TypeError:  # not a path at all (unhashable): resolve says so
            cg = None
        if cg is None or not still_names(cg.path, cg.id):
            if cg is not None:  # that root is gone: release its link
                old = links.get(cg.id, ORDER_DESCENDANTS_PRE)
                if old is not None:
                    links.drop(old)
                links.roots.pop(path, None)
            cg = resolve_cgroup(path)
            if isinstance(path, str) and path == cg.path:  # canonical paths only
                links.roots[path] = cg
        for _ in range(_RETRIES):
            links.evict(ORDER_DESCENDANTS_PRE, MAX_TREE_LINKS)
            link = links.link(cg, ORDER_DESCENDANTS_PRE)
            raw = self._walk(link)
            if not raw and not still_names(cg.path, cg.id):
                # a walk of a dead root visits nothing (and claims nothing)
                links.drop(link)
                raise CgroupNotFound(f"{path}: the cgroup was removed")
            if raw is None:
                continue
            if not raw:
                links.drop(link)
                raise CgroupNotFound(f"{path}: the cgroup was removed while being read")
            if raw[0][0] != cg.id and (still_names(cg.path, raw[0][0]) or
                                       not still_names(cg.path, cg.id)):
                # replaced between resolve and attach (and maybe removed
                # since): start over
                links.drop(link)
                links.roots.pop(path, None)
                cg = resolve_cgroup(path)
                continue
            return self._snapshot(cg, raw)
        raise ReadError(errno.EAGAIN, f"reading {path}: other sessions of the same program "
                                      f"kept taking the overflow map; retry")

    def _walk(self, link: Link) -> Optional[RawRecords]:
        """The records of one complete walk (PackedRecords where the host
        reads them as words, else tuples), or None to retry."""
        rs = self.selection.record_size
        sessions = self.sessions
        n = sessions.run(link)
        count, session, visited = parse_trailer(sessions.buf, n, rs, self.sel_tree)
        if visited == VISITED_UNKNOWN:
            return None  # another session claimed the bookkeeping at our end
        seq = memoryview(sessions.buf)[:count * rs]
        extra = visited - count
        if extra <= 0:
            return self._records(bytes(seq))
        prog = self.links.prog
        assert prog is not None  # links.link() above refuses a closed reader
        if extra > prog.capacity:
            self._grow(visited)
            return None
        if len(self.ovf) < extra * rs:
            self.ovf = bytearray(prog.capacity * rs)
        rc = sessions.lib.pmc_copy_overflow(prog.prog, session,
                                            sessions.ffi.from_buffer(self.ovf), extra)
        if rc == -errno.EAGAIN:
            return None
        if rc < 0:
            raise ReadError(-rc, f"copying overflow records failed: {os.strerror(-rc)}")
        return self._records(b"".join((seq, memoryview(self.ovf)[:extra * rs])))

    def _records(self, data: bytes) -> RawRecords:
        """A walk's records kept as the kernel wrote them (a snapshot reads
        its columns from the bytes), or unpacked where the host cannot."""
        if self.packed:
            return PackedRecords(self.selection, data)
        return list(self.selection.record.iter_unpack(data))

    def _grow(self, needed: int) -> None:
        """Reload with an overflow map that holds `needed` records and more."""
        capacity = bpf_links.INITIAL_OVERFLOW_CAPACITY
        while capacity < needed * 5 // 4:
            capacity *= 2
        bigger: Optional[Program] = None
        try:
            bigger = self.bpf.iterator(capacity)
            bigger.loaded(ORDER_DESCENDANTS_PRE)   # here, where a failure is expected
        except BpfUnavailable as e:
            if bigger is not None:
                bigger.destroy()
            # the program loaded before serves on: only this tree is too big
            raise ReadError(errno.ENOMEM, f"the tree has {needed} cgroups and a program with "
                                          f"room for their records could not be loaded ({e}); "
                                          f"read a smaller subtree or fewer stats") from None
        self.links.reload(bigger)

    def _snapshot(self, root: Cgroup, raw: RawRecords) -> Snapshot:
        if raw[0][0] != root.id:
            raise MalformedData(f"walk of {root.path} did not start at its root")
        return Snapshot(root.relpath, self.selection, raw, *self.paths.paths_and_index(root, raw))
