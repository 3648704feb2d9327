"""The BPF backend: records read straight out of the programs (programs.py).

A link per (cgroup, order), kept as an fd (nothing is pinned: a read-only
or absent bpffs does not matter); each read runs one iterator session, or
for a single cgroup one BPF_PROG_RUN where the kernel takes the one-call
program. A walk whose records exceed the session buffer spills into the
overflow map in the same walk, and the trailer says how many records there
were, so a tree is complete or the read fails, never truncated. A path's
answer is proven to be the cgroup that has the path now (see _Route);
read_many reads the proven paths of a list in one BPF_PROG_RUN, which
checks each record against its path's proof.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import weakref
from itertools import repeat
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

from .. import forksafe, slots
from ..binding import load
from ..cgroupfs import Cgroup, TreePaths, path_list, resolve_cgroup, still_names
from ..decode import Selection, PackedRecord, PackedRecords, RawRecords, Record, Snapshot
from ..errors import BpfUnavailable, CgroupNotFound, Closed, MalformedData, ReadError
from ..kernel_probe import kernel_facts
from ..programs import (ORDER_DESCENDANTS_PRE, ORDER_SELF_ONLY, PAGE_SIZE, Fetch, Program,
                        Replaced, Slot)
from .._record_h import REC_GONE, TRAILER_MAGIC
from ..hashes import path_hash
from ..record_format import FETCH_WANT, SESSION_BUF_SIZE, TRAILER
from ..wire import VISITED_UNKNOWN, parse_trailer, selection_digest
from . import read_each

INITIAL_OVERFLOW_CAPACITY = 1024     # records; grows by reloading when a tree needs more
MAX_SINGLE_LINKS = 256               # cgroups read one by one keep a link (an fd) or slot each
MAX_TREE_LINKS = 64                  # and so do tree roots
_RETRIES = 8


class _Route:
    """What one canonical path was proven to name: the cgroup's id and
    relpath, the slot or link that reads it, and the path hash the kernel
    reported for the cgroup while it had that path. Kept per path, not per
    cgroup: a renamed cgroup's slot serves its new path, and its old path's
    hash no longer matches, so the old path is resolved again."""

    __slots__ = ("target", "id", "relpath", "path_hash", "want")

    def __init__(self, target: Union[Slot, _Link], cg: Cgroup, path_hash: int) -> None:
        self.target, self.id, self.relpath, self.path_hash = target, cg.id, cg.relpath, path_hash
        # the entry of a batched fetch that reads and checks this path
        self.want: Optional[bytes] = FETCH_WANT.pack(target.index, 0, cg.id, path_hash) \
            if isinstance(target, Slot) else None


class _Routes(Dict[str, "_Route"]):
    """canonical path -> _Route, counting its changes: read_many reuses the
    last call's fetch entries for the same paths while `gen` says that no
    route was added, replaced or dropped since."""

    __slots__ = ("gen",)

    def __init__(self) -> None:
        super().__init__()
        self.gen = 0

    def __setitem__(self, path: str, route: _Route) -> None:
        self.gen += 1
        super().__setitem__(path, route)

    def __delitem__(self, path: str) -> None:
        self.gen += 1
        super().__delitem__(path)

    def clear(self) -> None:
        self.gen += 1
        super().clear()

    def pop(self, *args: Any) -> Any:
        self.gen += 1
        return super().pop(*args)

    def popitem(self) -> Tuple[str, _Route]:
        self.gen += 1
        return super().popitem()

    def setdefault(self, path: str, route: Any = None) -> Any:
        self.gen += 1
        return super().setdefault(path, route)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.gen += 1
        super().update(*args, **kwargs)


class _Link:
    __slots__ = ("fd", "cgroup", "order")

    def __init__(self, fd: int, cgroup: Cgroup, order: int) -> None:
        self.fd, self.cgroup, self.order = fd, cgroup, order


def _release(state: Dict[str, Any], reload: bool = False) -> None:
    """Close links, unload. Idempotent; also run by a finalizer.
    reload: keep what outlives a reload of the iterator program (the fetch
    program and its slots)."""
    fetch = state.get("fetch")
    if fetch is not None and not reload:
        fetch.destroy()
        state["fetch"] = None
    for link in list(state["links"].values()):
        try:
            os.close(link.fd)
        except OSError:
            pass
    state["links"].clear()
    prog = state.get("prog")
    if prog is not None:
        prog.destroy()
        state["prog"] = None


class BpfBackend:
    """Reads the selection through the memcg iterator program."""

    name = "bpf"
    loads_programs = True   # reads any tree through BPF programs of its own

    def __init__(self, names: Sequence[str], local: bool, version: int, mountpoint: str,
                 flush: bool = False,
                 singles: bool = True) -> None:
        facts = kernel_facts()
        self.facts = facts
        self.plan = slots.plan(facts, local, flush)
        self.kernel_backend = self.plan.backend
        self.resolutions = slots.resolve(names, facts, version, PAGE_SIZE, local=local,
                                              backend=self.plan.backend)
        sources = {r.stat.name: (f"bpf/{r.via}: {r.detail}" if r.available
                                 else f"unavailable: {r.detail}") for r in self.resolutions}
        self.selection = Selection(names, sources, {r.stat.name: r.stat.unit for r in self.resolutions})
        self.local = local
        self.version = version
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock", reset=BpfBackend._after_fork)
        self._state: Dict[str, Any] = {"links": {}, "prog": None, "fetch": None}
        self._finalizer = weakref.finalize(self, _release, self._state)
        # load first: without privileges this is what fails, with a clear error
        self._state["prog"] = self._load(INITIAL_OVERFLOW_CAPACITY)
        self._by_path = _Routes()
        # the last read_many: its paths, _by_path.gen then, their fetch
        # entries and relpaths
        self._plan: Tuple[Optional[List[str]], int, bytes, List[str]] = (None, -1, b"", [])
        # path -> (id, path hash) seen by the last slow read where the hash
        # could not be computed from the path (see _prove)
        self._seen_hash: Dict[str, Tuple[int, int]] = {}
        self._roots: Dict[str, Cgroup] = {}
        self._paths = TreePaths()
        self._ffi, self._lib = load()
        self._buf = bytearray(SESSION_BUF_SIZE)
        self._buflen = len(self._buf)
        self._cbuf = self._ffi.from_buffer(self._buf)
        # one record and the trailer, unpacked by one Struct call
        self._single = struct.Struct(self.selection.record.format + TRAILER.format[1:])
        self._single_size = self._single.size
        self._unpack_single = self._single.unpack_from
        self._read_session = self._lib.pmc_read_session
        # what this Reader's programs say their records hold (the trailer)
        self._sel_tree = selection_digest(self.selection.names, local, False)
        self._sel_path = selection_digest(self.selection.names, local, True)
        self._ovf = bytearray(0)
        self._packed = PackedRecords.supported(self.selection)
        self._fetch: Optional[Fetch] = None
        self.read_method = "iterator session"
        if singles:
            self._load_fetch()

    def _load_fetch(self) -> None:
        """Single reads through BPF_PROG_RUN where the kernel takes the fetch
        program (6.4+); iterator sessions where it does not."""
        try:
            fetch = Fetch(self.resolutions, self.local, self.plan.kfuncs, self.plan.flush,
                          self.selection.record_size, MAX_SINGLE_LINKS)
        except BpfUnavailable as e:
            why = str(e).split("): ", 1)[-1].rsplit("; use backend", 1)[0]
            self.read_method = f"iterator session (the one-call read did not load: {why})"
            return
        self._state["fetch"] = self._fetch = fetch
        self._fetch_ptr = fetch.ptr
        self._fetch_run = self._lib.pmc_fetch_run
        self._fetch_record = fetch.record
        self._unpack_record = self.selection.record.unpack_from
        # read_many's runs: records in elements of batch_stride bytes
        self._run_many = self._lib.pmc_fetch_run_many
        self._batch_view = fetch.batch
        self._stride = fetch.batch_stride
        pad = fetch.batch_stride - self.selection.record_size
        self._unpack_batch = struct.Struct(self.selection.record.format + f"{pad}x").iter_unpack
        self.read_method = "BPF_PROG_RUN (memcg_fetch)"

    def _after_fork(self) -> None:
        """In a forked child (pymemcg.forksafe), maybe of a backend that
        another thread of the parent was still making: parent and child
        would share the fetch program's output map, so the child reads
        through iterator sessions, whose buffers are its own."""
        if getattr(self, "_fetch", None) is not None:
            self._fetch = None
            self._by_path.clear()   # routes to the fetch program's slots
            self.read_method = "iterator session (forked child)"

    # --- links ---
    def _link(self, cg: Cgroup, order: int) -> _Link:
        if self._state["prog"] is None:
            raise Closed("this Reader is closed: make a new one")
        key = (cg.id, order)
        known: Optional[_Link] = self._state["links"].get(key)
        if known is not None:
            known.cgroup = cg  # the same cgroup, maybe renamed
            return known
        link: _Link = _Link(self._state["prog"].attach(cg, order), cg, order)
        self._state["links"][key] = link
        return link

    def _evict_tree_links(self) -> None:
        """Keep at most MAX_TREE_LINKS tree links: drop the oldest."""
        trees = [l for l in self._state["links"].values() if l.order == ORDER_DESCENDANTS_PRE]
        for link in trees[:max(0, len(trees) - MAX_TREE_LINKS + 1)]:
            self._drop_link(link)

    def _evict_single_links(self) -> None:
        """Keep at most MAX_SINGLE_LINKS one-cgroup links: drop the oldest."""
        singles = [l for l in self._state["links"].values() if l.order == ORDER_SELF_ONLY]
        for link in singles[:max(0, len(singles) - MAX_SINGLE_LINKS + 1)]:
            self._drop_link(link)

    def _drop_link(self, link: _Link) -> None:
        self._state["links"].pop((link.cgroup.id, link.order), None)
        for path in [p for p, r in self._by_path.items() if r.target is link]:
            del self._by_path[path]
        self._roots = {p: c for p, c in self._roots.items() if c.id != link.cgroup.id}
        os.close(link.fd)

    def _session(self, link: _Link) -> int:
        n: int = self._lib.pmc_read_session(link.fd, self._cbuf, len(self._buf))
        if n < 0:
            raise ReadError(-n, f"reading the iterator of {link.cgroup.path} failed: "
                                f"{os.strerror(-n)}")
        return n

    # --- reads ---
    def read(self, path: str) -> Record:
        lock = self._lock
        lock.acquire()
        try:
            try:
                route = self._by_path.get(path)
            except TypeError:  # not a path at all (unhashable)
                route = None
            if route is not None:
                target = route.target
                if isinstance(target, Slot):
                    # fast path: one bpf() call fills the record, one unpack,
                    # and the path hash proves the path still names this cgroup
                    if self._fetch_run(self._fetch_ptr, target.index) == 0:
                        t = self._unpack_record(self._fetch_record)
                        if t[2] == route.path_hash and t[0] == route.id and \
                                not t[4] & REC_GONE:
                            return Record(self.selection, t, route.relpath)
                        if t[4] & REC_GONE and self._fetch is not None:
                            self._fetch.clear(target)  # removed: let the kernel free it
                else:
                    # fast path: one record and the trailer, one unpack
                    n = self._read_session(target.fd, self._cbuf, self._buflen)
                    if n == self._single_size:
                        t = self._unpack_single(self._buf)
                        if t[-3] == TRAILER_MAGIC and t[-4] == self._sel_path and \
                                t[2] == route.path_hash and t[0] == route.id:
                            return Record(self.selection, t, route.relpath)
                del self._by_path[path]  # renamed, removed or replaced: resolve again
            return self._read_slow(path)
        finally:
            lock.release()

    def read_many(self, paths: Sequence[str]) -> List[Optional[Record]]:
        """read() of each path; None where no cgroup has the path (see
        Reader.read_many). Paths with a proven route are read together, up
        to the fetch program's batch capacity per BPF_PROG_RUN, and checked
        against their routes as read() checks one (by the program, which
        counts the records that fail; one by one here only when some did);
        a path that fails, or has no route yet, is read by read()'s slow path."""
        if paths.__class__ is not list:
            paths = path_list(paths)
        lock = self._lock
        lock.acquire()
        try:
            if self._fetch is not None:
                plan = self._plan
                if plan[1] == self._by_path.gen and paths == plan[0]:
                    # fast path: the paths of the last call (a poller's list)
                    # and their routes unchanged; one run, and the program
                    # found every record to be what its route proved
                    return self._settle(paths, None, plan[3],
                                        self._run_many(self._fetch_ptr, plan[2], len(paths)))
                return self._read_many_fetch(paths)
        finally:
            lock.release()
        # no one-call program (kernels before 6.4, a forked child): a session each
        return read_each(self.read, paths)

    def _read_many_fetch(self, paths: List[str]) -> List[Optional[Record]]:
        fetch = self._fetch
        assert fetch is not None  # read_many calls it only then
        routes: List[Optional[_Route]]
        try:
            routes = list(map(self._by_path.get, paths))
        except TypeError:  # not a path at all (unhashable): the slow path says so
            routes = [self._by_path.get(p) if isinstance(p, str) else None for p in paths]
        if len(routes) <= fetch.batch_capacity:
            # where every path has a slot route; one without (None, or a
            # link's want None) raises, cheaper than checking each first
            slotted = cast(List[_Route], routes)
            try:
                wants = b"".join([cast(bytes, r.want) for r in slotted])
            except (AttributeError, TypeError):  # a path without a slot route
                pass
            else:
                relpaths = [r.relpath for r in slotted]
                # a copy: the caller may change its list before the next call
                self._plan = (list(paths), self._by_path.gen, wants, relpaths)
                return self._settle(paths, slotted, relpaths,
                                    self._run_many(self._fetch_ptr, wants, len(routes)))
        # some paths have no route yet, or more than a run takes: runs of the
        # routed ones, then the rest one by one
        out: List[Optional[Record]] = [None] * len(paths)
        slot_routes = {i: r for i, r in enumerate(routes) if r is not None and r.want is not None}
        routed = list(slot_routes)
        cap = fetch.batch_capacity
        for start in range(0, len(routed), cap):
            part = routed[start:start + cap]
            some = [slot_routes[i] for i in part]
            rc = self._run_many(self._fetch_ptr, b"".join([cast(bytes, r.want) for r in some]),
                                len(some))
            got = self._settle([paths[i] for i in part], some, [r.relpath for r in some], rc)
            for i, rec in zip(part, got):
                out[i] = rec
        routed_set = set(routed)
        self._fix(paths, routes, out, [i for i in range(len(paths)) if i not in routed_set])
        return out

    def _settle(self, paths: List[str], routes: Optional[Sequence[_Route]], relpaths: List[str],
                rc: int) -> List[Optional[Record]]:
        """The answers of one run for these paths' routes (None: look them
        up, needed only if some record failed): rc is what
        pmc_fetch_run_many returned (how many records are not what their
        route says, or -errno). A Record per path, None where no cgroup has
        it; what the run did not prove is read by read()'s slow path."""
        n = len(paths)
        stride = self._stride
        view = self._batch_view[:n * stride]
        if rc == 0:
            # every record proven by the program: each Record unpacks its
            # values from one copy of the batch when first used
            data = bytes(view)
            return list(map(PackedRecord, repeat(self.selection, n), repeat(data, n),
                            range(0, n * stride, stride), relpaths))
        if routes is None:
            # the last call's paths, routes unchanged since (_by_path.gen)
            routes = [self._by_path[p] for p in paths]
        out: List[Optional[Record]] = [None] * n
        if rc < 0:  # as read() does when a run fails: the slow path
            self._fix(paths, routes, out, list(range(n)))
            return out
        failed = []
        selection = self.selection
        fetch = self._fetch
        for k, (route, t) in enumerate(zip(routes, self._unpack_batch(view))):
            if t[2] == route.path_hash and t[0] == route.id and not t[4] & REC_GONE:
                out[k] = Record(selection, t, route.relpath)
                continue
            # removed: let the kernel free it
            if t[4] & REC_GONE and fetch is not None and isinstance(route.target, Slot):
                fetch.clear(route.target)
            failed.append(k)
        self._fix(paths, routes, out, failed)
        return out

    def _fix(self, paths: List[str], routes: Sequence[Optional[_Route]],
             out: List[Optional[Record]], failed: List[int]) -> None:
        """Read the failed positions by read()'s slow path; None where no
        cgroup has the path."""
        by_path = self._by_path
        for i in failed:
            path, route = paths[i], routes[i]
            if route is not None and by_path.get(path) is route:
                del by_path[path]  # renamed, removed or replaced: resolve again
            try:
                out[i] = self._read_slow(path)
            except CgroupNotFound:
                out[i] = None

    def _attach_single(self, cg: Cgroup) -> Union[Slot, _Link]:
        """What reads one cgroup: a fetch slot, else a SELF_ONLY link."""
        if self._fetch is not None:
            return self._fetch.stash(cg)
        self._evict_single_links()
        return self._link(cg, ORDER_SELF_ONLY)

    def _read_single(self, target: Union[Slot, _Link]) -> Optional[Tuple[Any, ...]]:
        """The record tuple of one cgroup, or None when it was removed."""
        if isinstance(target, Slot):
            rc = self._fetch_run(self._fetch_ptr, target.index)
            if rc < 0:
                raise ReadError(-rc, f"reading {target.cgroup.path} (BPF_PROG_RUN) failed: "
                                     f"{os.strerror(-rc)}")
            t = self._unpack_record(self._fetch_record)
            return None if t[4] & REC_GONE else t
        n = self._session(target)
        count, _session, _visited = parse_trailer(self._buf, n, self.selection.record_size,
                                                  self._sel_path)
        if count > 1:
            raise MalformedData(f"the read of {target.cgroup.path} returned {count} records, "
                                f"not one")
        return self.selection.record.unpack_from(self._buf, 0) if count == 1 else None

    def _drop_single(self, target: Union[Slot, _Link]) -> None:
        if isinstance(target, Slot):
            if self._fetch is not None:
                self._fetch.clear(target)
        else:
            self._drop_link(target)

    def _read_slow(self, path: str) -> Record:
        """Resolve path, read the cgroup it names, and prove that it named
        that cgroup before and after the read."""
        for _ in range(3):
            cg = resolve_cgroup(path)
            try:
                target = self._attach_single(cg)
            except Replaced:
                continue
            t = self._read_single(target)
            if t is None:  # the cgroup died; the path may name a new one
                self._drop_single(target)
                continue
            if t[0] != cg.id:
                if still_names(cg.path, t[0]) or not still_names(cg.path, cg.id):
                    # replaced between resolve and attach (and maybe removed
                    # since): the target serves the new cgroup under the old
                    # one's key; start over
                    self._drop_single(target)
                    continue
                raise MalformedData(f"the read of {path} returned cgroup {t[0]}, not {cg.id}")
            if not still_names(cg.path, cg.id):
                continue  # renamed or replaced meanwhile: resolve again
            # only a canonical absolute path may skip resolution next time:
            # a relative one depends on the cwd, a symlink on its target
            if isinstance(path, str) and path == cg.path and self._prove(path, cg, t[2]):
                self._by_path[path] = _Route(target, cg, t[2])
            return Record(self.selection, t, cg.relpath)
        raise CgroupNotFound(f"{path}: the cgroup was removed while being read")

    def _prove(self, path: str, cg: Cgroup, reported: int) -> bool:
        """Whether the path hash the kernel reported may stand for path.

        It is computed from the relpath where the kernel's root is ours; a
        cgroup namespace or a mount of a subtree hides the top of the path,
        and then a hash counts only once two slow reads, each checked by
        stat before and after, saw the same one (a single observation could
        come from a cgroup renamed away and back during the read). 0: deeper
        than the program walks, never provable."""
        if reported == 0:
            return False
        if reported == path_hash(cg.relpath):
            return True
        seen = self._seen_hash.get(path)
        self._seen_hash[path] = (cg.id, reported)
        if len(self._seen_hash) > 4 * MAX_SINGLE_LINKS:
            self._seen_hash.clear()
        return seen == (cg.id, reported)

    def read_tree(self, path: str) -> Snapshot:
        with self._lock:
            try:
                cg = self._roots.get(path)
            except TypeError:  # not a path at all (unhashable): resolve says so
                cg = None
            if cg is None or not still_names(cg.path, cg.id):
                if cg is not None:  # that root is gone: release its link
                    old = self._state["links"].get((cg.id, ORDER_DESCENDANTS_PRE))
                    if old is not None:
                        self._drop_link(old)
                    self._roots.pop(path, None)
                cg = resolve_cgroup(path)
                if isinstance(path, str) and path == cg.path:  # canonical paths only
                    self._roots[path] = cg
            for _ in range(_RETRIES):
                self._evict_tree_links()
                link = self._link(cg, ORDER_DESCENDANTS_PRE)
                raw = self._walk(link)
                if not raw and not still_names(cg.path, cg.id):
                    # a walk of a dead root visits nothing (and claims nothing)
                    self._drop_link(link)
                    raise CgroupNotFound(f"{path}: the cgroup was removed")
                if raw is None:
                    continue
                if not raw:
                    self._drop_link(link)
                    raise CgroupNotFound(f"{path}: the cgroup was removed while being read")
                if raw[0][0] != cg.id and (still_names(cg.path, raw[0][0]) or
                                           not still_names(cg.path, cg.id)):
                    # replaced between resolve and attach (and maybe removed
                    # since): start over
                    self._drop_link(link)
                    self._roots.pop(path, None)
                    cg = resolve_cgroup(path)
                    continue
                return self._snapshot(cg, raw)
            raise ReadError(errno.EAGAIN, f"reading {path}: other sessions of the same program "
                                          f"kept taking the overflow map; retry")

    def _walk(self, link: _Link) -> Optional[RawRecords]:
        """The records of one complete walk (PackedRecords where the host
        reads them as words, else tuples), or None to retry."""
        rs = self.selection.record_size
        n = self._session(link)
        count, session, visited = parse_trailer(self._buf, n, rs, self._sel_tree)
        if visited == VISITED_UNKNOWN:
            return None  # another session claimed the bookkeeping at our end
        seq = memoryview(self._buf)[:count * rs]
        extra = visited - count
        if extra <= 0:
            return self._records(bytes(seq))
        prog: Program = self._state["prog"]
        if extra > prog.capacity:
            self._grow(visited)
            return None
        if len(self._ovf) < extra * rs:
            self._ovf = bytearray(prog.capacity * rs)
        rc = self._lib.pmc_copy_overflow(prog.prog, session, self._ffi.from_buffer(self._ovf),
                                         extra)
        if rc == -errno.EAGAIN:
            return None
        if rc < 0:
            raise ReadError(-rc, f"copying overflow records failed: {os.strerror(-rc)}")
        return self._records(b"".join((seq, memoryview(self._ovf)[:extra * rs])))

    def _records(self, data: bytes) -> RawRecords:
        """A walk's records kept as the kernel wrote them (a snapshot reads
        its columns from the bytes), or unpacked where the host cannot."""
        if self._packed:
            return PackedRecords(self.selection, data)
        return list(self.selection.record.iter_unpack(data))

    def _grow(self, needed: int) -> None:
        """Reload with an overflow map that holds `needed` records and more."""
        capacity = INITIAL_OVERFLOW_CAPACITY
        while capacity < needed * 5 // 4:
            capacity *= 2
        try:
            bigger = self._load(capacity)
        except BpfUnavailable as e:
            # the program loaded before serves on: only this tree is too big
            raise ReadError(errno.ENOMEM, f"the tree has {needed} cgroups and a program with "
                                          f"room for their records could not be loaded ({e}); "
                                          f"read a smaller subtree or fewer stats") from None
        _release(self._state, reload=True)
        if self._fetch is None:
            self._by_path.clear()  # iterator links went with the program
        self._state["prog"] = bigger

    def _load(self, capacity: int) -> Program:
        return Program(self.resolutions, self.local, capacity, self.plan.kfuncs,
                        self.plan.flush)

    def _snapshot(self, root: Cgroup, raw: RawRecords) -> Snapshot:
        if raw[0][0] != root.id:
            raise MalformedData(f"walk of {root.path} did not start at its root")
        return Snapshot(root.relpath, self.selection, raw, *self._paths.paths_and_index(root, raw))

    def close(self) -> None:
        with self._lock:
            self._fetch = None  # before the finalizer frees what its pointers point at
            self._batch_view, self._fetch_record = memoryview(b""), None
            self._finalizer()
            self._by_path.clear()
            self._plan = (None, -1, b"", [])
            self._roots.clear()
