"""A BPF reader's read_many through the fetch program: the paths that have
a slot route go up to batch_capacity per BPF_PROG_RUN, each entry carrying
what its route proved (wire.FETCH_WANT), and the program counts the records
that are not what their route says; only then are records checked here one
by one, and a path that fails, or has no route yet, is read by the single
read's slow path (bpf_single)."""

from __future__ import annotations

import struct
from itertools import repeat
from operator import attrgetter
from typing import Callable, List, Optional, Sequence, Tuple, cast

from ..binding import load
from ..decode import Record
from ..errors import CgroupNotFound
from ..programs import Fetch, Slot
from .._record_h import MANY_WARM, REC_GONE
from ..record_format import FETCH_WANT
from .bpf_links import Links, Route
from .bpf_single import SingleReads


_want = attrgetter("want")   # a route's fetch entry; None (no slot) fails b"".join


class Batches:
    """read_many's runs of one fetch program, and the last call's plan."""

    def __init__(self, links: Links, singles: SingleReads, fetch: Fetch) -> None:
        self.links = links
        self.routes = links.routes
        self.singles = singles
        self.selection = singles.selection
        self.capacity = fetch.batch_capacity
        self.run_many = fetch.lib.pmc_fetch_run_many
        self.fetch_ptr = fetch.ptr
        # a run's records, packed: the first record_size bytes of each element
        self.copy_records = fetch.lib.pmc_fetch_batch_copy
        self.from_buffer = load()[0].from_buffer
        self.record_size = self.selection.record_size
        # each run's records, in elements of stride bytes
        self.view = fetch.batch
        self.stride = fetch.batch_stride
        pad = fetch.batch_stride - self.selection.record_size
        self.unpack = struct.Struct(self.selection.record.format + f"{pad}x").iter_unpack
        # the last call: its paths, routes.gen then, their fetch entries (a
        # run's worth each: one for up to capacity paths) and relpaths
        self.plan: Tuple[Optional[List[str]], int, List[bytes], List[str]] = (None, -1, [], [])
        # a poller's calls reuse the plan, and read() reads a route, without
        # touching each slot: an eviction sweep asks for those slots instead
        fetch.in_use = self.slots_in_use
        # Records of a proven run made in C (pymemcg._records.Reads.many),
        # set by the backend where it reads through pymemcg._records
        self.records: Optional[Callable[[List[str]], List[Optional[Record]]]] = None

    def slots_in_use(self) -> List[Slot]:
        """The slots read since the last sweep without being marked used:
        those of the last call's plan (read with every call that reuses it)
        and those read() read through a route (the shim set its proof's
        `used`, cleared here)."""
        paths = self.plan[0] or []
        slots = [r.target for r in map(self.routes.get, paths)
                 if r is not None and isinstance(r.target, Slot)]
        for r in self.routes.values():
            proof = r.proof
            if proof is not None and proof.used:
                proof.used = 0
                slots.append(cast(Slot, r.target))
        return slots

    def read(self, paths: List[str]) -> List[Optional[Record]]:
        """read_many() of paths other than the last call's, or with routes
        changed since."""
        by_path = self.routes
        routes: List[Optional[Route]]
        try:
            routes = list(map(by_path.get, paths))
        except TypeError:  # not a path at all (unhashable): the slow path says so
            routes = [by_path.get(p) if isinstance(p, str) else None for p in paths]
        # where every path has a slot route; one without (None, or a link's
        # want None) raises, cheaper than checking each first
        slotted = cast(List[Route], routes)
        cap = self.capacity
        try:
            wants = [b"".join(map(_want, slotted[i:i + cap])) for i in range(0, len(slotted), cap)]
        except (AttributeError, TypeError):  # a path without a slot route
            pass
        else:
            relpaths = [r.relpath for r in slotted]
            # a copy: the caller may change its list before the next call
            self.plan = (list(paths), by_path.gen, wants, relpaths)
            if len(wants) == 1:
                return self.answers(paths, slotted, relpaths,
                                    self.run_many(self.fetch_ptr, wants[0], len(routes), 0))
            return self.run_plan(paths)
        # some paths have no route yet: runs of the routed ones, then the
        # rest one by one
        out: List[Optional[Record]] = [None] * len(paths)
        slot_routes = {i: r for i, r in enumerate(routes) if r is not None and r.want is not None}
        for r in slot_routes.values():
            cast(Slot, r.target).used = True   # spared by the next eviction sweep
        routed = list(slot_routes)
        flags = MANY_WARM if len(routed) > cap else 0
        for start in range(0, len(routed), cap):
            part = routed[start:start + cap]
            some = [slot_routes[i] for i in part]
            rc = self.run_many(self.fetch_ptr, b"".join(map(_want, some)), len(some), flags)
            got = self.answers([paths[i] for i in part], some, [r.relpath for r in some], rc)
            for i, rec in zip(part, got):
                out[i] = rec
        routed_set = set(routed)
        self._fix(paths, routes, out, [i for i in range(len(paths)) if i not in routed_set])
        return out

    def run_plan(self, paths: List[str]) -> List[Optional[Record]]:
        """The last call's plan (for these same paths, routes unchanged
        since) in runs of up to capacity paths. Each run's records are
        checked against its own entries, so a route that a run's slow reads
        change does not make a later run's answers wrong.

        Each run but a call's only one warms the caches first: by the time
        a rotation over more cgroups than a run reads comes back to a
        cgroup, the other runs have pushed its lines out of the CPU's
        caches, and the program's warm-up has many of their misses in
        flight at once instead of one after another. (A call of one run
        read back to back finds its lines cached, where the warm-up only
        costs.)"""
        _, _, wants, relpaths = self.plan
        cap = self.capacity
        flags = MANY_WARM if len(wants) > 1 else 0
        out: List[Optional[Record]] = []
        for k, chunk in enumerate(wants):
            start = k * cap
            m = len(chunk) // FETCH_WANT.size
            out += self.answers(paths[start:start + m], None, relpaths[start:start + m],
                                self.run_many(self.fetch_ptr, chunk, m, flags))
        return out

    def answers(self, paths: List[str], routes: Optional[Sequence[Route]], relpaths: List[str],
               rc: int) -> List[Optional[Record]]:
        """The answers of one run for these paths' routes (None: look them
        up, needed only if some record failed): rc is what
        pmc_fetch_run_many returned (how many records are not what their
        route says, or -errno). A Record per path, None where no cgroup has
        it; what the run did not prove is read by the slow path."""
        n = len(paths)
        if rc == 0 and self.records is not None:
            # every record proven by the program: a Record of each, made in C
            return self.records(relpaths)
        if rc == 0:
            # every record proven by the program: one copy of the run's
            # records, packed (a batch element has room for every stat: copied
            # whole, a few stats' records would cost ten times the copy), and
            # a Record per path unpacked from it now; unpacked on first use
            # instead, a Record cost twice as much CPU by its first value
            size = self.record_size
            data = bytearray(n * size)
            if self.copy_records(self.fetch_ptr, self.from_buffer(data), n, size) == 0:
                return list(map(Record, repeat(self.selection, n),
                                self.selection.record.iter_unpack(data), relpaths))
            rc = -1  # not copied: read as a failed run is
        view = self.view[:n * self.stride]
        known: Sequence[Optional[Route]]
        if routes is None:
            # the last call's paths; an earlier run of the same call may have
            # dropped or replaced a route since (a path listed twice): such a
            # record is checked against the route now, or read again
            known = list(map(self.routes.get, paths))
        else:
            known = routes
        out: List[Optional[Record]] = [None] * n
        if rc < 0:  # as read() does when a run fails: the slow path
            self._fix(paths, known, out, list(range(n)))
            return out
        failed = []
        selection = self.selection
        fetch = self.links.fetch
        for k, (route, t) in enumerate(zip(known, self.unpack(view))):
            if route is not None and t[2] == route.path_hash and t[0] == route.id and \
                    not t[4] & REC_GONE:
                out[k] = Record(selection, t, route.relpath)
                continue
            # removed: let the kernel free it
            if t[4] & REC_GONE and fetch is not None and route is not None and \
                    isinstance(route.target, Slot):
                fetch.clear(route.target)
            failed.append(k)
        self._fix(paths, known, out, failed)
        return out

    def _fix(self, paths: List[str], routes: Sequence[Optional[Route]],
             out: List[Optional[Record]], failed: List[int]) -> None:
        """Read the failed positions by the slow path; None where no cgroup
        has the path."""
        by_path = self.routes
        read = self.singles.read
        for i in failed:
            path, route = paths[i], routes[i]
            if route is not None and by_path.get(path) is route:
                del by_path[path]  # renamed, removed or replaced: resolve again
            try:
                out[i] = read(path)
            except CgroupNotFound:
                out[i] = None
