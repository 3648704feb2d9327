"""The BPF programs, loaded and driven through the C shim.

An iterator program (bpf_src/memcg_iter.bpf.c) per selection: attached to a
cgroup and walk order it makes a link, and each session of the link writes
one fixed-layout record per cgroup and a trailer; records past the 32 KiB
session buffer go to an mmaped overflow map. Where the kernel takes it
(6.4+), a second program (bpf_src/memcg_fetch.bpf.c) keeps a reference to
each cgroup read one by one and fills its record in one BPF_PROG_RUN call.
The selection, as struct pmc_config, goes into each program's .rodata.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set

from . import slots
from .binding import load
from .cgroupfs import Cgroup, Replaced
from .memory_stat import PAGE_SIZE
from ._record_h import GONE_RING, KFUNCS_NONE, KIND_PRESSURE
from .kernel_probe import kernel_facts
from .wire import selection_digest, seq_budget
from .errors import BpfUnavailable, CgroupNotFound, Closed, PermissionDenied, ReadError, VerifierRejected

ORDER_SELF_ONLY, ORDER_DESCENDANTS_PRE = 1, 2
# cgroups read one by one that a reader keeps a SELF_ONLY link (an fd) to,
# where the fetch program does not load; past it the oldest is let go
MAX_SINGLE_CGROUPS = 256
# cgroups read one by one that the fetch program keeps a reference to (an
# element of its slots map each, allocated as used, deleted by the kernel
# when the cgroup is removed); past it the least recently read go
MAX_FETCH_CGROUPS = 65536


def object_digest() -> str:
    """sha256 of the embedded BPF object: a pin made by another build never matches."""
    ffi, lib = load()
    size = ffi.new("size_t *")
    data = lib.pmc_object_bytes(size)
    return hashlib.sha256(ffi.buffer(data, size[0])).hexdigest()


def config(resolutions: Sequence[slots.Resolution], local: bool, kfuncs: int,
            flush: bool, capacity: int = 0, programs: int = 0) -> Any:
    """The selection as the shim's struct pmc_config; programs: which
    iterator programs to load (PROGRAMS_TREE | PROGRAMS_PATH; 0: both)."""
    ffi, _ = load()
    cfg = ffi.new("struct pmc_config *")
    cfg.programs = programs
    cfg.nr_stats = len(resolutions)
    for i, r in enumerate(resolutions):
        spec = cfg.specs[i]
        spec.kind, spec.slot, spec.item = r.kind, r.slot, r.item
        spec.flags, spec.scale = r.flags, r.scale
    cfg.local_stats = int(local)
    # --- pressure (PSI): where the v2 root's psi group is (kallsyms; 0: unknown) ---
    if any(r.kind == KIND_PRESSURE for r in resolutions):
        cfg.psi_system = kernel_facts().psi_system
    cfg.kfuncs = kfuncs
    cfg.flush = int(flush)
    cfg.page_size = PAGE_SIZE
    cfg.overflow_capacity = capacity
    names = [r.stat.name for r in resolutions]
    ffi.memmove(cfg.selection_tree, selection_digest(names, local, False), 32)
    ffi.memmove(cfg.selection_path, selection_digest(names, local, True), 32)
    return cfg


def load_program(loader: Callable[..., int], out: Any, *args: Any) -> None:
    """Run a shim loader with a log buffer; a failure raises with the log."""
    ffi, _ = load()
    log = ffi.new("char[]", 1 << 20)
    rc = loader(*args, out, log, len(log))
    if rc < 0:
        raise load_error(-rc, ffi.string(log).decode(errors="replace").strip())


class Program:
    """The iterator programs of a selection: the tree program (walks, with
    the overflow map of `capacity` records) and the path program (one cgroup,
    its record with its path's hash), each an object of its own that loads
    when first attached (the verifier's time and kernel memory are most of
    a load: a process pays for what it runs); `now` loads those named
    (ORDER_SELF_ONLY: the path program, ORDER_DESCENDANTS_PRE: the tree's)
    at once, so that a failure is raised here."""

    def __init__(self, resolutions: Sequence[slots.Resolution], local: bool,
                 capacity: int, kfuncs: int = KFUNCS_NONE,
                 flush: bool = False,
                 now: Sequence[int] = (ORDER_SELF_ONLY, ORDER_DESCENDANTS_PRE)) -> None:
        ffi, lib = load()
        self.ffi, self.lib = ffi, lib
        self._selection = (resolutions, local, kfuncs, flush)
        self.capacity = max(capacity, 1)   # records the tree program's overflow map holds
        self.record_size = ffi.sizeof("struct pmc_record") + 8 * len(resolutions)
        self.seq_budget = seq_budget(self.record_size)
        self._tree: Any = None      # struct pmc_prog * of each, once loaded
        self._path: Any = None
        self._destroyed = False
        for order in now:
            self.loaded(order)

    def loaded(self, order: int) -> Any:
        """The loaded program (struct pmc_prog *) that walks in `order`."""
        tree = order != ORDER_SELF_ONLY
        have = self._tree if tree else self._path
        if have is not None:
            return have
        if self._destroyed:
            raise Closed("this Reader is closed: make a new one")
        out = self.ffi.new("struct pmc_prog **")
        # the path program's sessions hold one record: no overflow map to speak of
        load_program(self.lib.pmc_prog_load, out,
                     config(*self._selection, capacity=self.capacity if tree else 1,
                            programs=self.lib.PMC_PROGRAMS_TREE if tree
                            else self.lib.PMC_PROGRAMS_PATH))
        if tree:
            self._tree = out[0]
        else:
            self._path = out[0]
        return out[0]

    @property
    def prog(self) -> Any:
        """The tree program (struct pmc_prog *), whose overflow map a walk reads."""
        return self.loaded(ORDER_DESCENDANTS_PRE)

    def serves(self, order: int) -> bool:
        """Whether the program of this order is loaded."""
        return (self._tree if order != ORDER_SELF_ONLY else self._path) is not None

    def attach(self, cg: Cgroup, order: int) -> int:
        try:
            fd = os.open(cg.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CgroupNotFound(f"{cg.path}: the cgroup was removed") from None
        try:
            link = self.lib.pmc_prog_attach(self.loaded(order), fd, order)
        finally:
            os.close(fd)
        if link == -errno.ENOENT or (link < 0 and not os.path.isdir(cg.path)):
            raise CgroupNotFound(f"{cg.path}: the cgroup was removed")
        if link < 0:
            raise BpfUnavailable(f"attaching the cgroup iterator to {cg.path} failed "
                                 f"({os.strerror(-link)}): this kernel needs cgroup iterators "
                                 f"(Linux 6.1+); use backend='text'")
        fd_of_link: int = link
        return fd_of_link

    def destroy(self) -> None:
        self._destroyed = True
        for name in ("_tree", "_path"):
            prog = getattr(self, name)
            if prog is not None:
                setattr(self, name, None)
                self.lib.pmc_prog_destroy(prog)


class Slot:
    """A cgroup that the fetch program holds a reference to, for single
    reads, under its id. `used`: read again since it was stashed or since
    the last eviction sweep looked (a second chance before it is let go)."""

    __slots__ = ("id", "cgroup", "used")

    def __init__(self, cgroup: Cgroup) -> None:
        self.id = cgroup.id
        self.cgroup = cgroup
        self.used = False


class Fetch:
    """The one-call single-read program (memcg_fetch.bpf.c) and its slots.

    A slot holds a kernel reference to its cgroup until it is cleared or the
    cgroup is removed (the program's own tracepoint deletes it then). The
    slots are bounded by the map's capacity; past it the least recently
    read are let go (second chance: each read marks its slot used, and an
    eviction sweep spares a used slot once).
    """

    def __init__(self, resolutions: Sequence[slots.Resolution], local: bool,
                 kfuncs: int, flush: bool, record_size: int,
                 slots: int = MAX_FETCH_CGROUPS) -> None:
        ffi, lib = load()
        self.lib = lib
        self._ffi = ffi
        out = ffi.new("struct pmc_fetch **")
        self.capacity = slots   # slots in the map
        load_program(lib.pmc_fetch_load, out, config(resolutions, local, kfuncs, flush),
              self.capacity)
        self.ptr = out[0]
        self.record = ffi.buffer(ffi.cast("char *", lib.pmc_fetch_record(self.ptr)),
                                 record_size)
        # pmc_fetch_run_many: up to batch_capacity packed struct pmc_fetch_want
        # (record_format.FETCH_WANT) per run, a record per element of the batch map
        self.batch_capacity = lib.pmc_fetch_batch_capacity(self.ptr)
        self.batch_stride = lib.pmc_fetch_batch_stride(self.ptr)
        self.batch = memoryview(ffi.buffer(ffi.cast("char *", lib.pmc_fetch_batch(self.ptr)),
                                           self.batch_capacity * self.batch_stride))
        self.by_id: Dict[int, Slot] = {}    # in the order stashed (or spared)
        self._id_out = ffi.new("unsigned long long *")
        # slots evict() let go of, for the owner to drop its routes to them
        self.evicted: List[Slot] = []
        # slots read without marking each (a read_many plan reused): marked
        # used at the start of each eviction sweep
        self.in_use: Callable[[], Iterable[Slot]] = tuple

    def renames(self) -> int:
        """Renames of cgroups counted since load (the program's tracepoint).
        Read before a path's proof: while it has not moved, the path names
        the cgroup it was proven to name for as long as that cgroup lives,
        and a read of it need not hash the path (pmc_fetch_read)."""
        n: int = self.lib.pmc_fetch_renames(self.ptr)
        return n

    def watch(self, removals: Optional["Removals"]) -> None:
        """Make each pmc_fetch_read answer PMC_READ_REAP, reading nothing,
        while `removals` has ids its owner has not seen (None: never).
        removals must outlive this program, or be unwatched first."""
        self.lib.pmc_fetch_watch(self.ptr, removals.ptr if removals is not None else
                                 self._ffi.NULL)

    def load_many(self) -> None:
        """Load the batch program (pmc_fetch_run_many) if it is not yet:
        only a process that reads many cgroups at once pays for its load."""
        if not self.lib.pmc_fetch_has_many(self.ptr):
            load_program(self.lib.pmc_fetch_load_many, self.ptr)

    def stash(self, cg: Cgroup) -> Slot:
        """The slot of cg, made (one iterator session) if it has none; past
        capacity the least recently read slots are let go first (evicted()
        says which, for the caller to forget its routes to them)."""
        slot = self.by_id.get(cg.id)
        if slot is not None:
            slot.cgroup = cg  # the same cgroup, maybe by another path or renamed
            slot.used = True
            return slot
        if len(self.by_id) >= self.capacity:
            self.evict(max(1, self.capacity // 8))
        try:
            fd = os.open(cg.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CgroupNotFound(f"{cg.path}: the cgroup was removed") from None
        try:
            rc = self.lib.pmc_fetch_stash(self.ptr, fd, self._id_out)
        finally:
            os.close(fd)
        if rc == -errno.ENOENT:
            raise CgroupNotFound(f"{cg.path}: the cgroup was removed")
        if rc < 0:
            raise ReadError(-rc, f"taking a reference to {cg.path} failed: {os.strerror(-rc)}")
        got = self._id_out[0]
        if got != cg.id:  # the directory was replaced meanwhile
            if got not in self.by_id:  # not a slot some other path reads
                self.lib.pmc_fetch_clear(self.ptr, got)
            raise Replaced(cg.path)
        slot = self.by_id[cg.id] = Slot(cg)
        return slot

    def evict(self, count: int) -> None:
        """Let go of `count` slots, least recently read first: a slot read
        since the last sweep is spared once (and goes to the back)."""
        by_id = self.by_id
        for slot in self.in_use():
            slot.used = True
        gone: List[Slot] = []
        while len(gone) < count and by_id:
            for cgroup_id, slot in list(by_id.items()):
                if len(gone) >= count:
                    break
                if slot.used:
                    slot.used = False
                    del by_id[cgroup_id]
                    by_id[cgroup_id] = slot
                else:
                    gone.append(slot)
                    del by_id[cgroup_id]
        for slot in gone:
            self.lib.pmc_fetch_clear(self.ptr, slot.id)
        self.evicted.extend(gone)

    def clear(self, slot: Slot) -> None:
        """Drop the slot's reference to its cgroup (if the kernel has not
        already, at the cgroup's removal)."""
        if self.by_id.get(slot.id) is slot:
            del self.by_id[slot.id]
            self.lib.pmc_fetch_clear(self.ptr, slot.id)

    def destroy(self) -> None:
        if self.ptr is not None:
            self.lib.pmc_fetch_destroy(self.ptr)  # drops every slot's reference
            self.ptr = None
            self.by_id.clear()


class Removals:
    """The ids of cgroups removed since the last look (memcg_gone.bpf.c),
    for a holder of iterator links, each of which keeps its cgroup alive
    until closed. Seeing that nothing changed costs one read of the
    kernel-updated counter (`words[0]` against `seen`)."""

    def __init__(self) -> None:
        ffi, lib = load()
        self.lib = lib
        out = ffi.new("struct pmc_gone **")
        load_program(lib.pmc_gone_load, out)
        self.ptr = out[0]
        # struct pmc_gone_ring as u64 words: gen, then the ring of ids
        self.words = memoryview(ffi.buffer(ffi.cast("char *", lib.pmc_gone_ring(self.ptr)),
                                           8 * (1 + GONE_RING))).cast("Q")
        # in C memory: a fetch program watching these removals compares it
        # with the ring's gen (pmc_fetch_read, PMC_READ_REAP)
        self._seen = lib.pmc_gone_seen(self.ptr)
        self.seen = self.words[0]

    @property
    def seen(self) -> int:
        """The ring's gen up to which the owner has seen the removals."""
        gen: int = self._seen[0]
        return gen

    @seen.setter
    def seen(self, gen: int) -> None:
        self._seen[0] = gen

    def since(self) -> Optional[Set[int]]:
        """The ids removed since the last call, or None when more were
        removed than the ring holds (some ids are lost: let go of all)."""
        words = self.words
        seen, gen = self.seen, words[0]
        if gen - seen > GONE_RING:
            self.seen = gen
            return None
        ids = {words[1 + (g & (GONE_RING - 1))] for g in range(seen, gen)}
        # the ring may have wrapped over ids still to read while reading
        if words[0] - seen > GONE_RING:
            self.seen = words[0]
            return None
        self.seen = gen
        return ids

    def destroy(self) -> None:
        if self.ptr is not None:
            self.words.release()
            self.lib.pmc_gone_destroy(self.ptr)
            self.ptr = None


def load_error(err: int, log: str) -> Exception:
    if err in (errno.EPERM,) and "verifier" not in log.lower() and "processed" not in log:
        return PermissionDenied(f"loading the BPF program was refused ({os.strerror(err)}): it "
                                f"needs root or CAP_SYS_ADMIN (CAP_BPF and CAP_PERFMON are not "
                                f"enough for libbpf's BTF walk), and a seccomp filter that "
                                f"allows bpf(2) (container runtimes' default profiles allow it "
                                f"with CAP_SYS_ADMIN only); `pymemcg doctor` tells which is "
                                f"missing; or use backend='text'")
    if "processed" in log or "R0" in log or "invalid" in log.lower() or "BEGIN PROG LOAD LOG" in log:
        return VerifierRejected(f"the kernel's verifier rejected the pymemcg program "
                                f"({os.strerror(err)}): this kernel is not supported by this "
                                f"build; report it with the log below, or use backend='text'", log)
    # libbpf says the cause first, then "failed to load ..." for each layer
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    cause = next((line for line in lines if "failed to load" not in line),
                 lines[-1] if lines else "no log")
    if "/proc/kallsyms" in cause:
        cause += (" (libbpf reads it to resolve the program's kernel symbols; systemd's "
                  "ProtectKernelTunables=yes makes it unreadable)")
    return BpfUnavailable(f"loading the BPF program failed ({os.strerror(err)}): "
                          f"{cause}; use backend='text'")
