"""A BPF reader's read of one cgroup by path when no proven route serves
it (BpfBackend.read's fast path is in bpf.py): resolve the path, take hold
of the cgroup (a fetch slot or a SELF_ONLY link, bpf_links.Links.single),
read it, and prove that the path named that cgroup before and after the
read; a canonical path so proven gets a route for the next read."""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

from .. import programs
from ..cgroupfs import PathHashProofs, Replaced, resolve_cgroup, still_names
from ..decode import Record, Selection
from ..errors import CgroupNotFound, MalformedData, ReadError
from ..programs import Slot
from .._record_h import REC_GONE
from ..wire import parse_trailer
from .bpf_links import Link, Links, Route, Sessions


class SingleReads:
    """read() of a path without a route (or whose route failed)."""

    def __init__(self, links: Links, sessions: Sessions, selection: Selection,
                 sel_path: bytes) -> None:
        self.links = links
        self.sessions = sessions
        self.selection = selection
        self.sel_path = sel_path   # what the trailer of a one-cgroup session must say
        self.proofs = PathHashProofs(programs.MAX_FETCH_CGROUPS)

    def read_target(self, target: Union[Slot, Link]) -> Optional[Tuple[Any, ...]]:
        """The record tuple of one cgroup, or None when it was removed."""
        if isinstance(target, Slot):
            fetch = self.links.fetch
            assert fetch is not None  # a slot is only given while the fetch program serves
            rc = fetch.lib.pmc_fetch_run(fetch.ptr, target.id)
            if rc < 0:
                raise ReadError(-rc, f"reading {target.cgroup.path} (BPF_PROG_RUN) failed: "
                                     f"{os.strerror(-rc)}")
            t: Tuple[Any, ...] = self.selection.record.unpack_from(fetch.record)
            return None if t[4] & REC_GONE else t
        n = self.sessions.run(target)
        buf = self.sessions.buf
        count, _session, _visited = parse_trailer(buf, n, self.selection.record_size,
                                                  self.sel_path)
        if count > 1:
            raise MalformedData(f"the read of {target.cgroup.path} returned {count} records, "
                                f"not one")
        return self.selection.record.unpack_from(buf, 0) if count == 1 else None

    def read(self, path: str) -> Record:
        """Resolve path, read the cgroup it names, and prove that it named
        that cgroup before and after the read."""
        links = self.links
        for _ in range(3):
            # the rename count before the proof: a rename counted after it
            # makes the route's next read hash the path again
            fetch = links.fetch
            renames = fetch.renames() if fetch is not None else 0
            cg = resolve_cgroup(path)
            try:
                target = links.single(cg)
            except Replaced:
                continue
            t = self.read_target(target)
            if t is None:  # the cgroup died; the path may name a new one
                links.drop_single(target)
                continue
            if t[0] != cg.id:
                if still_names(cg.path, t[0]) or not still_names(cg.path, cg.id):
                    # replaced between resolve and attach (and maybe removed
                    # since): the target serves the new cgroup under the old
                    # one's key; start over
                    links.drop_single(target)
                    continue
                raise MalformedData(f"the read of {path} returned cgroup {t[0]}, not {cg.id}")
            if not still_names(cg.path, cg.id):
                continue  # renamed or replaced meanwhile: resolve again
            # only a canonical absolute path may skip resolution next time:
            # a relative one depends on the cwd, a symlink on its target
            if isinstance(path, str) and path == cg.path and self.proofs.proves(path, cg, t[2]):
                links.routes[path] = Route(target, cg, t[2], renames, links.fetch)
            return Record(self.selection, t, cg.relpath)
        raise CgroupNotFound(f"{path}: the cgroup was removed while being read")
