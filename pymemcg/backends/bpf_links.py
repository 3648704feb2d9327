"""What a BPF reader holds in the kernel: the iterator program of its
selection (BpfSelection resolves it for this kernel), a link (an fd) per
(cgroup, walk order) made from it, and the fetch program whose slots hold
the cgroups read one by one; with them (Links) the paths proven to name
what those read (routes, tree roots), and the session buffer (Sessions).

Each kind is bounded: at most programs.MAX_FETCH_CGROUPS cgroups read one
by one through fetch slots (the least recently read let go first; the
kernel deletes a removed cgroup's slot itself), programs.MAX_SINGLE_CGROUPS
SELF_ONLY links where the fetch program does not load, and MAX_TREE_LINKS
tree roots (links: the oldest let go first). A link keeps its cgroup alive
in the kernel: a reader that watches removals (programs.Removals) closes
the links of removed cgroups at its next read of any path. pins.pin()
makes its one link here too (BpfSelection, Links).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from .. import programs, slots
from ..binding import load
from ..cgroupfs import Cgroup
from ..decode import Selection
from ..errors import BpfUnavailable, Closed, ReadError
from ..kernel_probe import KernelFacts, kernel_facts, psi_running
from ..memory_stat import PAGE_SIZE
from ..programs import Fetch, Program, Removals, Slot
from ..record_format import FETCH_WANT, SESSION_BUF_SIZE

INITIAL_OVERFLOW_CAPACITY = 1024     # records; grows by reloading when a tree needs more
MAX_TREE_LINKS = 64                  # tree roots that keep a link (an fd) each


class BpfSelection:
    """A selection of stats resolved for this kernel: how each stat is read
    (resolutions, each stat's source) and the programs that read them."""

    def __init__(self, names: Sequence[str], local: bool, version: int,
                 flush: bool = False) -> None:
        self.facts: KernelFacts = kernel_facts()
        self.plan = slots.plan(self.facts, local, flush)
        self.resolutions = slots.resolve(names, self.facts, version, PAGE_SIZE, local=local,
                                         backend=self.plan.backend, psi_on=psi_running())
        sources = {r.stat.name: (f"bpf/{r.via}: {r.detail}" if r.available
                                 else f"unavailable: {r.detail}") for r in self.resolutions}
        self.selection = Selection(names, sources,
                                   {r.stat.name: r.stat.unit for r in self.resolutions})
        self.local = local

    def iterator(self, capacity: int, now: Sequence[int] = ()) -> Program:
        """The iterator programs, the tree's with an overflow map of `capacity`
        records; each loads on first use, or here if its order is in `now`."""
        return Program(self.resolutions, self.local, capacity, self.plan.kfuncs,
                       self.plan.flush, now)

    def fetch(self) -> Fetch:
        """The one-call program, a slot for each cgroup read one by one."""
        return Fetch(self.resolutions, self.local, self.plan.kfuncs, self.plan.flush,
                     self.selection.record_size, programs.MAX_FETCH_CGROUPS)


class Link:
    """An iterator link of one cgroup and walk order (programs.ORDER_*)."""

    __slots__ = ("fd", "cgroup", "order")

    def __init__(self, fd: int, cgroup: Cgroup, order: int) -> None:
        self.fd, self.cgroup, self.order = fd, cgroup, order


class Route:
    """What one canonical path was proven to name: the cgroup's id and
    relpath, the slot or link that reads it, and the path hash the kernel
    reported for the cgroup while it had that path. Kept per path, not per
    cgroup: a renamed cgroup's slot serves its new path, and its old path's
    hash no longer matches, so the old path is resolved again. A slot's
    route has its proof in C memory too (`proof`, a struct pmc_fetch_route;
    None for a link): with the fetch program's rename count read before the
    proof, while which the cgroup's being alive proves the path with no
    hash (Fetch.renames, pmc_fetch_read), and the fetch program's pointer,
    so that a read is a shim call of one argument."""

    __slots__ = ("target", "id", "relpath", "path_hash", "want", "proof", "proof_addr")

    def __init__(self, target: Union[Slot, Link], cg: Cgroup, path_hash: int,
                 renames: int = 0, fetch: Optional[Fetch] = None) -> None:
        self.target, self.id, self.relpath, self.path_hash = target, cg.id, cg.relpath, path_hash
        self.proof: Any = None
        self.proof_addr: Optional[int] = None   # where pymemcg._records finds it
        # the entry of a batched fetch that reads and checks this path
        self.want: Optional[bytes] = None
        if isinstance(target, Slot):
            if fetch is None:
                raise ValueError("a slot's route needs the fetch program that holds the slot")
            ffi = load()[0]
            self.proof = ffi.new("struct pmc_fetch_route *",
                                 (cg.id, path_hash, renames, fetch.ptr))
            self.proof_addr = int(ffi.cast("uintptr_t", self.proof))
            self.want = FETCH_WANT.pack(cg.id, path_hash)


class Routes(Dict[str, Route]):
    """canonical path -> Route, counting its changes: read_many reuses the
    last call's fetch entries for the same paths while `gen` says that no
    route was added, replaced or dropped since."""

    __slots__ = ("gen",)

    def __init__(self) -> None:
        super().__init__()
        self.gen = 0

    def __setitem__(self, path: str, route: Route) -> None:
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

    def popitem(self) -> Tuple[str, Route]:
        self.gen += 1
        return super().popitem()

    def setdefault(self, path: str, route: Any = None) -> Any:
        self.gen += 1
        return super().setdefault(path, route)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.gen += 1
        super().update(*args, **kwargs)


class Sessions:
    """The session buffer, and one iterator session of a link into it."""

    def __init__(self) -> None:
        self.ffi, self.lib = load()
        self.buf = bytearray(SESSION_BUF_SIZE)
        self.cbuf = self.ffi.from_buffer(self.buf)

    def run(self, link: Link) -> int:
        """One session of link: the bytes it wrote into buf."""
        n: int = self.lib.pmc_read_session(link.fd, self.cbuf, len(self.buf))
        if n < 0:
            raise ReadError(-n, f"reading the iterator of {link.cgroup.path} failed: "
                                f"{os.strerror(-n)}")
        return n


class Links:
    """The iterator program and its links by (cgroup id, order), oldest
    first; the fetch program (None where it did not load, or no longer
    serves); and the paths proven to name what they read: routes of single
    reads, roots of tree reads.

    release() lets go of every kernel object; a BpfBackend runs it from a
    finalizer, so nothing here refers back to the backend."""

    def __init__(self, prog: Program) -> None:
        self.prog: Optional[Program] = prog
        self.fetch: Optional[Fetch] = None
        self._retired: Optional[Fetch] = None   # no longer read through, not yet destroyed
        self.by_key: Dict[Tuple[int, int], Link] = {}
        self.routes = Routes()
        self.roots: Dict[str, Cgroup] = {}     # canonical path -> the tree root it names
        # close the links of removed cgroups (reap()): loaded with the first
        # link where watch_removals is set (a reader's, not a pin's)
        self.watch_removals = False
        self.removals: Optional[Removals] = None

    def link(self, cg: Cgroup, order: int) -> Link:
        """The link reading cg in this order, made on first use."""
        if self.prog is None:
            raise Closed("this Reader is closed: make a new one")
        key = (cg.id, order)
        known = self.by_key.get(key)
        if known is not None:
            known.cgroup = cg  # the same cgroup, maybe renamed
            return known
        if self.watch_removals and self.removals is None:
            try:
                self.removals = Removals()
                if self.fetch is not None:   # its reads say when to reap
                    self.fetch.watch(self.removals)
            except BpfUnavailable as e:
                from ..reader import FallbackWarning
                self.watch_removals = False
                warnings.warn(f"pymemcg cannot watch cgroup removals here ({e}): the link of a "
                              f"removed cgroup keeps it in the kernel until this Reader reads "
                              f"that path again or closes", FallbackWarning, stacklevel=2)
        link = Link(self.prog.attach(cg, order), cg, order)
        self.by_key[key] = link
        return link

    def reap(self) -> None:
        """Close the links of cgroups removed since the last call (all
        links, if more were removed than the ring tells)."""
        removals = self.removals
        if removals is None or removals.words[0] == removals.seen:
            return
        gone = removals.since()
        for link in list(self.by_key.values()):
            if gone is None or link.cgroup.id in gone:
                self.drop(link)

    def loaded(self, order: int) -> None:
        """Load the program that reads in this order, if it is not yet."""
        if self.prog is None:
            raise Closed("this Reader is closed: make a new one")
        self.prog.loaded(order)

    def get(self, cgroup_id: int, order: int) -> Optional[Link]:
        return self.by_key.get((cgroup_id, order))

    def evict(self, order: int, limit: int) -> None:
        """Drop the oldest links of this order, so that one more makes at
        most `limit` of them."""
        same = [link for link in self.by_key.values() if link.order == order]
        for link in same[:max(0, len(same) - limit + 1)]:
            self.drop(link)

    def drop(self, link: Link) -> None:
        """Close the link, and forget the routes and roots that lead to it."""
        self.by_key.pop((link.cgroup.id, link.order), None)
        routes = self.routes
        for path in [p for p, r in routes.items() if r.target is link]:
            del routes[path]
        self.roots = {p: c for p, c in self.roots.items() if c.id != link.cgroup.id}
        os.close(link.fd)

    def single(self, cg: Cgroup) -> Union[Slot, Link]:
        """What reads one cgroup: a fetch slot, else a SELF_ONLY link."""
        fetch = self.fetch
        if fetch is not None:
            slot = fetch.stash(cg)
            if fetch.evicted:
                self._forget_slots(fetch)
            return slot
        self.evict(programs.ORDER_SELF_ONLY, programs.MAX_SINGLE_CGROUPS)
        return self.link(cg, programs.ORDER_SELF_ONLY)

    def _forget_slots(self, fetch: Fetch) -> None:
        """Forget the routes to the slots the fetch program let go of."""
        gone = {id(slot) for slot in fetch.evicted}
        fetch.evicted.clear()
        routes = self.routes
        for path in [p for p, r in routes.items() if id(r.target) in gone]:
            del routes[path]

    def drop_single(self, target: Union[Slot, Link]) -> None:
        """Let go of what single() gave."""
        if isinstance(target, Slot):
            if self.fetch is not None:
                self.fetch.clear(target)
        else:
            self.drop(target)

    def reload(self, prog: Program) -> None:
        """Serve from prog instead: the old program goes with its links, and
        the routes through them; the fetch program and its slots stay."""
        self.release(reload=True)
        routes = self.routes
        for path in [p for p, r in routes.items() if r.want is None]:
            del routes[path]
        self.prog = prog

    def retire_fetch(self) -> None:
        """Read no more through the fetch program (a forked child shares its
        output map with the parent) and forget the routes to its slots;
        release() still destroys it."""
        if self.fetch is not None:
            self._retired, self.fetch = self.fetch, None
            self.routes.clear()

    def release(self, reload: bool = False) -> None:
        """Close the links, unload. Idempotent.
        reload: keep what outlives a reload of the iterator program (the fetch
        program and its slots)."""
        if not reload:
            for fetch in (self.fetch, self._retired):
                if fetch is not None:
                    fetch.destroy()
            self.fetch = self._retired = None
            if self.removals is not None:
                self.removals.destroy()
                self.removals = None
        for link in list(self.by_key.values()):
            try:
                os.close(link.fd)
            except OSError:
                pass
        self.by_key.clear()
        if self.prog is not None:
            self.prog.destroy()
            self.prog = None
