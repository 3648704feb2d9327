"""The BPF backend: records read straight out of the programs (programs.py).

BpfBackend coordinates the pieces, each in its own module:
  bpf_links.py   what it holds in the kernel (the programs, a link per
                 (cgroup, order) as an fd, fetch slots), bounded, and the
                 paths proven to name them (routes, tree roots)
  bpf_single.py  read() of a path without a route: resolve, read, prove
  bpf_batch.py   read_many() through the fetch program, many paths a run
  bpf_walk.py    read_tree(): walks, with the overflow map and reloads
Nothing is pinned (a read-only or absent bpffs does not matter). read()
and read_many() of a path with a route, their fast paths, are here: one
BPF_PROG_RUN (or one iterator session where the kernel does not take the
fetch program) whose record must carry the route's cgroup id and path
hash, so that a path's answer is the cgroup that has the path now.
"""

from __future__ import annotations

import functools
import struct
import threading
import weakref
from typing import Any, List, Optional, Sequence, cast

from .. import binding, forksafe
from ..cgroupfs import path_list
from ..decode import Record, Snapshot
from ..errors import BpfUnavailable
from ..programs import ORDER_DESCENDANTS_PRE, ORDER_SELF_ONLY, Fetch, Slot
from .._record_h import READ_GONE, READ_REAP, TRAILER_MAGIC
from ..record_format import TRAILER
from ..wire import selection_digest
from . import bpf_links, read_each
from .bpf_batch import Batches
from .bpf_links import BpfSelection, Link, Links, Sessions
from .bpf_single import SingleReads
from .bpf_walk import TreeWalks


_new_record = object.__new__


class BpfBackend:
    """Reads the selection through the memcg iterator program."""

    name = "bpf"
    loads_programs = True   # reads any tree through BPF programs of its own

    def __init__(self, names: Sequence[str], local: bool, version: int, mountpoint: str,
                 flush: bool = False,
                 singles: bool = True) -> None:
        bpf = BpfSelection(names, local, version, flush)
        self.facts = bpf.facts
        self.plan = bpf.plan
        self.kernel_backend = bpf.plan.backend
        self.resolutions = bpf.resolutions
        self.selection = bpf.selection
        self.local = local
        self.version = version
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock", reset=BpfBackend._after_fork)
        # each iterator program loads on first use (programs.Program)
        self._links = Links(bpf.iterator(bpf_links.INITIAL_OVERFLOW_CAPACITY))
        self._links.watch_removals = True
        self._finalizer = weakref.finalize(self, self._links.release)
        self._routes = self._links.routes
        sessions = Sessions()
        # what this Reader's programs say their records hold (the trailer)
        self._sel_path = selection_digest(self.selection.names, local, True)
        self._singles = SingleReads(self._links, sessions, self.selection, self._sel_path)
        self._read_slow = self._singles.read
        self._walks = TreeWalks(bpf, self._links, sessions,
                                selection_digest(self.selection.names, local, False))
        self._buf = sessions.buf
        self._buflen = len(self._buf)
        self._cbuf = sessions.cbuf
        self._read_session = sessions.lib.pmc_read_session
        # one record and the trailer, unpacked by one Struct call
        self._single = struct.Struct(self.selection.record.format + TRAILER.format[1:])
        self._single_size = self._single.size
        self._unpack_single = self._single.unpack_from
        self._bpf = bpf
        self._fetch: Optional[Fetch] = None
        self._reads: Any = None   # pymemcg._records.Reads, with the fetch program
        self._batches: Optional[Batches] = None
        self.read_method = "iterator session"
        if singles:
            self._load_fetch()
        else:
            self.read_method = "iterator session (a Reader made for trees)"
        if self._fetch is None:
            # a program loads now, whatever is read first: without privileges,
            # or where the kernel refuses the programs, this is what fails,
            # with a clear error (and Reader(backend="auto") reads text)
            self._links.loaded(ORDER_SELF_ONLY if singles else ORDER_DESCENDANTS_PRE)

    def _load_fetch(self) -> None:
        """Single reads through BPF_PROG_RUN where the kernel takes the fetch
        program (6.4+); iterator sessions where it does not."""
        try:
            fetch = self._bpf.fetch()
        except BpfUnavailable as e:
            why = str(e).split("): ", 1)[-1].rsplit("; use backend", 1)[0]
            self.read_method = f"iterator session (the one-call read did not load: {why})"
            return
        self._links.fetch = self._fetch = fetch
        self._fetch_ptr = fetch.ptr
        self._fetch_read = fetch.lib.pmc_fetch_read
        self._fetch_record = fetch.record
        self._unpack_record = self.selection.record.unpack_from
        self._batches = Batches(self._links, self._singles, fetch)
        self._run_many = self._batches.run_many
        self._many_loaded = False
        self.read_method = "BPF_PROG_RUN (memcg_fetch)"
        if not self.plan.flush:
            # read() of a proven path in one C call, which answers only while
            # the lock is free and keeps the GIL throughout (csrc/pmc_records.c):
            # not with a flush, which can take long enough to matter to other
            # threads. What it does not answer, this class's read does (called
            # through a proxy: a bound method would make a cycle, and keep the
            # programs loaded until the garbage collector ran)
            self._reads = binding.records().Reads(
                self._routes, Record, self.selection,
                binding.field_widths(self.selection.record.format), self._lock.locked,
                functools.partial(BpfBackend.read, weakref.proxy(self)),
                int(binding.load()[0].cast("uintptr_t", fetch.ptr)))
            self.read = self._reads.read   # type: ignore[method-assign]
            self._batches.records = self._reads.many
            # whoever still holds its read once this backend is gone reaches
            # the Python read (and a dead proxy), never a freed fetch program
            weakref.finalize(self, self._reads.close)

    def _load_many(self) -> Optional[Batches]:
        """The batch program, loaded by the first read_many; where it does
        not load, read_many reads path by path, as without the fetch program."""
        self._many_loaded = True
        try:
            if self._fetch is not None:
                self._fetch.load_many()
        except BpfUnavailable:
            self._batches = None
        return self._batches

    def _drop_reads(self) -> None:
        """Every read through this class's read from now on."""
        reads = getattr(self, "_reads", None)
        if reads is not None:
            reads.close()
            self._reads = None
            self.__dict__.pop("read", None)
            if self._batches is not None:
                self._batches.records = None

    def _after_fork(self) -> None:
        """In a forked child (pymemcg.forksafe), maybe of a backend that
        another thread of the parent was still making: parent and child
        would share the fetch program's output map, so the child reads
        through iterator sessions, whose buffers are its own."""
        self._drop_reads()
        if getattr(self, "_fetch", None) is not None:
            self._fetch = self._batches = None
            self._links.retire_fetch()   # and the routes to its slots
            self.read_method = "iterator session (forked child)"

    # --- reads ---
    def read(self, path: str) -> Record:
        lock = self._lock
        lock.acquire()   # not `with`: the hottest path, and this costs less
        try:
            try:
                route = self._routes.get(path)
            except TypeError:  # not a path at all (unhashable)
                route = None
            if route is not None:
                proof = route.proof
                if proof is not None:
                    # fast path: one shim call, one bpf() call, which fills the
                    # slot's record and checks it: the route's cgroup, alive,
                    # and no cgroup renamed since the path was proven (else the
                    # kernel hashed the path, and the hash matched); first,
                    # whether cgroups were removed since the last reap
                    # the Record is made first, without a call of its __init__,
                    # and only its values after the call: the less a read
                    # touches after a syscall, the less it pays for what the
                    # syscall pushed out of the CPU's caches and TLB
                    rec = _new_record(Record)
                    rec._selection = self.selection
                    rec.path = route.relpath
                    rc = self._fetch_read(proof)
                    if not rc:   # READ_OK (and proof.used set: the slot is spared
                        # by the next eviction sweep, Batches.slots_in_use)
                        rec._t = self._unpack_record(self._fetch_record)
                        return rec
                    if rc == READ_REAP:
                        self._links.reap()   # links of removed cgroups: close them
                        rc = self._fetch_read(proof)
                        if not rc:
                            return Record(self.selection,
                                          self._unpack_record(self._fetch_record), route.relpath)
                    if rc == READ_GONE and self._fetch is not None:
                        # removed: let the kernel free it
                        self._fetch.clear(cast(Slot, route.target))
                else:
                    removals = self._links.removals
                    if removals is None or removals.words[0] == removals.seen:
                        # fast path (no links of removed cgroups to close
                        # first): one record and the trailer, one unpack
                        n = self._read_session(cast(Link, route.target).fd, self._cbuf,
                                               self._buflen)
                        if n == self._single_size:
                            t = self._unpack_single(self._buf)
                            if t[-3] == TRAILER_MAGIC and t[-4] == self._sel_path and \
                                    t[2] == route.path_hash and t[0] == route.id:
                                return Record(self.selection, t, route.relpath)
                # renamed, removed or replaced (or its link closed by the reap
                # below): resolve again
                self._routes.pop(path, None)
            self._links.reap()   # links of removed cgroups: close them
            return self._read_slow(path)
        finally:
            lock.release()

    def read_many(self, paths: Sequence[str]) -> List[Optional[Record]]:
        """read() of each path; None where no cgroup has the path (see
        Reader.read_many). Paths with a proven route are read together, up
        to the fetch program's batch capacity per BPF_PROG_RUN, and checked
        against their routes as read() checks one (bpf_batch); a path that
        fails, or has no route yet, is read by read()'s slow path."""
        if paths.__class__ is not list:
            paths = path_list(paths)
        lock = self._lock
        lock.acquire()
        try:
            removals = self._links.removals
            if removals is not None and removals.words[0] != removals.seen:
                self._links.reap()   # links of removed cgroups: close them
            batches = self._batches   # None without the fetch program
            if batches is not None and not self._many_loaded:
                batches = self._load_many()
            if batches is not None:
                plan = batches.plan
                if plan[1] == self._routes.gen and paths == plan[0]:
                    # fast path: the paths of the last call (a poller's list)
                    # and their routes unchanged; one run (a run per
                    # capacity paths), and the program found every record
                    # to be what its route proved
                    wants = plan[2]
                    if len(wants) == 1:
                        return batches.answers(paths, None, plan[3],
                                               self._run_many(self._fetch_ptr, wants[0],
                                                              len(paths), 0))
                    return batches.run_plan(paths)
                return batches.read(paths)
        finally:
            lock.release()
        # no one-call program (kernels before 6.4, a forked child): a session each
        return read_each(self.read, paths)

    def read_tree(self, path: str) -> Snapshot:
        with self._lock:
            self._links.reap()   # links of removed cgroups: close them
            return self._walks.read(path)

    def close(self) -> None:
        with self._lock:
            self._drop_reads()
            # before the finalizer frees what their pointers point at
            self._fetch = self._fetch_record = self._batches = None
            self._finalizer()
            self._routes.clear()
            self._links.roots.clear()
