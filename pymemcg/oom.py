"""OOM kills as they happen, from the kernel through a BPF ring buffer.

    with pymemcg.OomEvents() as events:          # loads and attaches; root
        for item in events:                      # blocks; ends when closed
            if isinstance(item, pymemcg.OomEventsLost):
                print("lost", item.count)        # the ring overflowed
            else:
                print(item.cgroup, item.pid, item.comm, item.anon_rss_kb)

No /dev/kmsg: bpf_src/memcg_oom.bpf.c sends one event per process the OOM
killer kills, with the memory figures the kernel logs for it ("Killed
process ... total-vm anon-rss file-rss shmem-rss pgtables oom_score_adj"),
the victim's memory cgroup and the one whose limit was hit, each by kernfs
id and by path. The paths are read in the kernel at the kill, so a cgroup
removed right after (a container that exits when its process is killed)
still has its path and its container labels here.

How the kernel is watched (`method`): kprobes on oom_kill_process,
__oom_kill_process and mark_oom_victim where they attach (every kernel
built with CONFIG_KPROBES): everything above. Where they do not, the
oom:mark_victim and signal:signal_generate tracepoints: the victim's side
only, the OOM's cgroup is then unknown (`oom_known` False, its fields None);
bpf_src/memcg_oom.bpf.c says why.

Forms: the iterator (blocks until an event or close()), `poll(timeout)`
(a list, [] at the timeout), `read()` (what waits, without blocking),
`run(callback)` (calls it per item until close()), `fileno()` (readable
when events wait: `loop.add_reader`), and `aiter()` (an async iterator on
asyncio's loop). close() from any thread ends every blocked call. An event
that did not fit the ring is never dropped silently: the next call gives an
`OomEventsLost` with how many, before the events that follow.
"""

from __future__ import annotations

import asyncio
import os
import select
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Union

from . import forksafe
from .binding import load
from .containers import CgroupIdentity, identify
from .errors import BadRingSize, BpfUnavailable, Closed, InvalidArgument, MalformedData
from .programs import load_program

# bpf_src/memcg_oom.h: struct pmc_oom_event (13 u64, 12 u32, 2 u64);
# tests check it against the compiled layout
EVENT_FORMAT = "=13Q12I2Q"
EVENT_SIZE = struct.calcsize(EVENT_FORMAT)
FORMAT_VERSION = 1

FLAG_VICTIM_PATH = 1 << 0
FLAG_OOM_PATH = 1 << 1
FLAG_MEMCG = 1 << 2
FLAG_HAS_MM = 1 << 3
FLAG_RSS_EXACT = 1 << 4
FLAG_OOM_COUNTER = 1 << 5
FLAG_OOM_KNOWN = 1 << 6

METHODS = {1: "kprobes", 2: "tracepoints"}

#: seconds a blocked poll() waits at most before it looks whether it was closed
WAKE_CHECK = 1.0

# enum oom_constraint (include/linux/oom.h, unchanged 4.x-7.x)
CONSTRAINTS = ("none", "cpuset", "memory_policy", "memcg")


@dataclass(frozen=True)
class OomEvent:
    """One process killed by the OOM killer.

    Paths are relative to the memory hierarchy's root (str, bytes decoded
    with surrogateescape, as Record.path; print them through
    pymemcg.names.escape), None where the kernel's walk could not read
    them whole. Memory figures are KiB, as the kernel logs them; None where
    the victim had no mm when read. `rss_exact`: the rss figures are the
    kernel's exact counts (Linux 6.1); on later kernels they are the shared
    part of per-CPU counters, as get_mm_counter() reads them (the kernel's
    own log line may differ by the per-CPU deltas it sums in).
    """

    seq: int                       # 1, 2, ... per OomEvents: gaps are lost events
    time: float                    # seconds since the epoch (from CLOCK_BOOTTIME)
    pid: int                       # the killed thread, as the kernel logs it
    tgid: int                      # its process
    comm: bytes
    uid: int
    oom_score_adj: int
    cgroup: Optional[str]          # the victim's memory cgroup (the kernel's task_memcg)
    cgroup_id: int
    oom_known: bool                # False: this kernel's hooks do not show the OOM's side
    global_oom: Optional[bool]     # no memory cgroup's limit: the whole machine's
    oom_cgroup: Optional[str]      # the memory cgroup whose limit was hit
    oom_cgroup_id: Optional[int]
    constraint: Optional[str]      # "memcg", "none" (global), "cpuset", "memory_policy"
    total_vm_kb: Optional[int]
    anon_rss_kb: Optional[int]
    file_rss_kb: Optional[int]
    shmem_rss_kb: Optional[int]
    pgtables_kb: Optional[int]
    rss_exact: bool
    oom_usage_kb: Optional[int]    # the OOM cgroup's usage and limit when it chose
    oom_limit_kb: Optional[int]
    oom_failcnt: Optional[int]
    boot_ns: int = field(repr=False)

    @property
    def container(self) -> CgroupIdentity:
        """Who the victim's cgroup is (pymemcg.containers.identify)."""
        return identify(self.cgroup)

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready: paths and comm escaped (pymemcg.names.escape)."""
        from .names import escape
        ident = self.container
        out = {
            "event": "oom_kill", "seq": self.seq, "time": round(self.time, 6),
            "pid": self.pid, "tgid": self.tgid, "comm": escape(self.comm), "uid": self.uid,
            "oom_score_adj": self.oom_score_adj,
            "cgroup": None if self.cgroup is None else escape(self.cgroup),
            "cgroup_id": self.cgroup_id, "oom_known": self.oom_known,
            "global_oom": self.global_oom,
            "oom_cgroup": None if self.oom_cgroup is None else escape(self.oom_cgroup),
            "oom_cgroup_id": self.oom_cgroup_id, "constraint": self.constraint,
            "total_vm_kb": self.total_vm_kb, "anon_rss_kb": self.anon_rss_kb,
            "file_rss_kb": self.file_rss_kb, "shmem_rss_kb": self.shmem_rss_kb,
            "pgtables_kb": self.pgtables_kb, "rss_exact": self.rss_exact,
            "oom_usage_kb": self.oom_usage_kb, "oom_limit_kb": self.oom_limit_kb,
            "oom_failcnt": self.oom_failcnt,
        }
        if ident.pod_uid or ident.container_id:
            out["pod_uid"] = ident.pod_uid
            out["container_id"] = ident.container_id
        return out


@dataclass(frozen=True)
class OomEventsLost:
    """`count` kills whose events were lost (the ring was full) since the
    previous item; `total` since load."""

    count: int
    total: int

    def as_dict(self) -> Dict[str, Any]:
        return {"event": "lost", "count": self.count, "total": self.total}


Item = Union[OomEvent, OomEventsLost]


def _path(names: bytes, whole: bool) -> Optional[str]:
    """The path from the program's names, leaf first, each NUL-terminated."""
    if not whole:
        return None
    parts = names.split(b"\0")[:-1] if names else []
    return os.fsdecode(b"/" + b"/".join(reversed(parts)))


def _boot_offset() -> float:
    """Epoch seconds minus CLOCK_BOOTTIME seconds, now."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def parse_event(data: bytes, boot_offset: float) -> OomEvent:
    """One event's bytes (struct pmc_oom_event + its names) as an OomEvent."""
    if len(data) < EVENT_SIZE:
        raise MalformedData(f"an OOM event of {len(data)} bytes, shorter than its header "
                            f"({EVENT_SIZE}): the BPF object and pymemcg differ; reinstall")
    (seq, boot_ns, victim_id, oom_id, total_vm, anon, file_, shmem, pgtables, usage, limit,
     failcnt, _totalpages, pid, tgid, uid, flags, constraint, score_adj, _vlevel, _olevel,
     vlen, olen, fmt, _pad, comm0, comm1) = struct.unpack_from(EVENT_FORMAT, data)
    if fmt != FORMAT_VERSION or EVENT_SIZE + vlen + olen > len(data):
        raise MalformedData(f"an OOM event of format {fmt} ({len(data)} bytes, names {vlen} + "
                            f"{olen}): pymemcg reads format {FORMAT_VERSION}; reinstall")
    names = data[EVENT_SIZE:EVENT_SIZE + vlen + olen]
    comm = struct.pack("=2Q", comm0, comm1).split(b"\0", 1)[0]
    mm = bool(flags & FLAG_HAS_MM)
    known = bool(flags & FLAG_OOM_KNOWN)
    memcg = bool(flags & FLAG_MEMCG)
    counter = known and memcg and bool(flags & FLAG_OOM_COUNTER)
    return OomEvent(
        seq=seq, time=boot_offset + boot_ns / 1e9, boot_ns=boot_ns,
        pid=pid, tgid=tgid, comm=comm, uid=uid,
        oom_score_adj=score_adj - (1 << 32) if score_adj >= 1 << 31 else score_adj,
        cgroup=_path(names[:vlen], bool(flags & FLAG_VICTIM_PATH)) if victim_id else None,
        cgroup_id=victim_id,
        oom_known=known, global_oom=(not memcg) if known else None,
        oom_cgroup=_path(names[vlen:], bool(flags & FLAG_OOM_PATH)) if known and memcg else None,
        oom_cgroup_id=oom_id if known and memcg else None,
        constraint=(CONSTRAINTS[constraint] if constraint < len(CONSTRAINTS) else str(constraint))
        if known else None,
        total_vm_kb=total_vm if mm else None, anon_rss_kb=anon if mm else None,
        file_rss_kb=file_ if mm else None, shmem_rss_kb=shmem if mm else None,
        pgtables_kb=pgtables if mm else None, rss_exact=mm and bool(flags & FLAG_RSS_EXACT),
        oom_usage_kb=usage if counter else None, oom_limit_kb=limit if counter else None,
        oom_failcnt=failcnt if counter else None,
    )


def ring_bytes(ring_pages: Optional[int], page_size: int, most: int, default: int) -> int:
    """The ring buffer's size in bytes for `ring_pages` pages of `page_size`
    bytes (None: `default` bytes, or one page where a page is larger);
    BadRingSize where the kernel cannot take it (a power of two pages, at
    most `most` bytes)."""
    if ring_pages is None:
        return max(default, page_size)
    largest = most // page_size
    if type(ring_pages) is not int or ring_pages < 1 or ring_pages & (ring_pages - 1) \
            or ring_pages > largest:
        raise BadRingSize(
            f"ring_pages={ring_pages!r}: the OOM events' ring buffer is a power of two "
            f"pages (1, 2, 4, ... {largest} pages of {page_size} bytes); pass one of those, "
            "or None for the default")
    return ring_pages * page_size


class OomEvents:
    """OOM kill events of the whole machine, from load until close().

    Needs what the BPF backend needs (root or CAP_SYS_ADMIN, BTF). Safe to
    share between threads: reads are serialised, and close() from any
    thread wakes every blocked one (which then ends or raises Closed). In
    the child of a fork it is closed (the parent's events stay the
    parent's).

    `ring_pages`: the ring buffer's size in pages, a power of two (default
    256 KiB worth, 64 pages of 4 KiB; several hundred events of cgroups a few
    levels deep). Kills that come while the ring is full are counted as
    lost (`OomEventsLost`, `lost`), never dropped silently: a caller that
    may stop reading for long, or that watches many kills at once, takes a
    larger ring. Its memory is locked kernel memory, charged to the
    process's memory cgroup."""

    def __init__(self, ring_pages: Optional[int] = None) -> None:
        ffi, lib = load()
        self._ffi, self._lib = ffi, lib
        self._lock = threading.Lock()
        self._ptr = None
        self._closed = False
        page_size = os.sysconf("SC_PAGE_SIZE")
        self.ring_bytes: int = ring_bytes(ring_pages, page_size, lib.PMC_OOM_RING_BYTES_MAX,
                                          lib.PMC_OOM_RING_BYTES)
        out = ffi.new("struct pmc_oom **")
        try:
            load_program(lib.pmc_oom_load, out, page_size, self.ring_bytes)
        except BpfUnavailable as e:
            raise type(e)(f"OOM events: {e}") from None
        self._ptr = out[0]
        self.method: str = METHODS.get(lib.pmc_oom_method(self._ptr), "unknown")
        self._epoll_fd: int = lib.pmc_oom_fd(self._ptr)
        # close() writes here to wake a thread blocked in select()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lost_told = 0
        self._pending: List[Item] = []
        forksafe.renew_in_child(self, "_lock", reset=OomEvents._forget_in_child)

    # -- the forms --------------------------------------------------------

    def fileno(self) -> int:
        """An fd that is readable when events wait (the ring buffer's epoll
        fd): for select/poll/epoll and asyncio's add_reader. Then read()."""
        self._check()
        return self._epoll_fd

    def read(self) -> List[Item]:
        """Every item waiting now, without blocking; [] if none."""
        with self._lock:
            self._check()
            return self._take()

    def poll(self, timeout: Optional[float] = None) -> List[Item]:
        """Items as soon as any wait, or [] after `timeout` seconds (None:
        wait until there are some or close()). Raises Closed once closed."""
        if timeout is not None and timeout < 0:
            raise InvalidArgument(f"timeout must be >= 0 seconds or None, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            items = self.read()
            if items:
                return items
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            # a second at most per select: a close() between read() and
            # select() closes these fds, and their numbers may be reused
            wait = WAKE_CHECK if left is None else min(left, WAKE_CHECK)
            try:
                ready, _, _ = select.select([self._epoll_fd, self._wake_r], [], [], wait)
            except (OSError, ValueError):
                self._check()   # closed meanwhile: Closed, else the error itself
                raise
            if self._wake_r in ready:
                self._check()

    def __iter__(self) -> Iterator[Item]:
        """Items as they come, blocking; ends when closed (from any thread)."""
        while True:
            try:
                items = self.poll()
            except Closed:
                return
            yield from items

    def run(self, callback: Callable[[Item], None]) -> None:
        """callback(item) for each item, in this thread, until close()
        (from another thread, or from the callback). An exception from the
        callback ends run() and propagates."""
        for item in self:
            callback(item)

    async def aiter(self) -> AsyncIterator[Item]:
        """Items on the running asyncio loop (its add_reader on fileno());
        ends when closed."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = self.fileno()
        loop.add_reader(fd, ready.set)
        loop.add_reader(self._wake_r, ready.set)
        try:
            while True:
                try:
                    items = self.read()
                except Closed:
                    return
                for item in items:
                    yield item
                if not items:
                    await ready.wait()
                    ready.clear()
        finally:
            for f in (fd, self._wake_r):
                try:
                    loop.remove_reader(f)
                except (OSError, ValueError):
                    pass

    # -- what it counts -----------------------------------------------------

    @property
    def seen(self) -> int:
        """Kills the programs saw since load (events sent or lost)."""
        with self._lock:
            self._check()
            return int(self._lib.pmc_oom_seen(self._ptr))

    @property
    def lost(self) -> int:
        """Kills whose events were lost since load (the ring was full)."""
        with self._lock:
            self._check()
            return int(self._lib.pmc_oom_lost(self._ptr))

    # -- closing ----------------------------------------------------------

    def close(self) -> None:
        """Detach and free everything; wakes every blocked call. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        with self._lock:
            if self._ptr is not None:
                self._lib.pmc_oom_destroy(self._ptr)
                self._ptr = None
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_r = self._wake_w = -1

    def __enter__(self) -> "OomEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finalizer must not raise
            pass

    # -- inside -------------------------------------------------------------

    def _check(self) -> None:
        if self._closed or self._ptr is None:
            raise Closed("these OomEvents are closed")

    def _take(self) -> List[Item]:
        ffi, lib = self._ffi, self._lib
        n = lib.pmc_oom_consume(self._ptr)
        if n < 0:
            raise BpfUnavailable(f"reading the OOM event ring failed: {os.strerror(-n)}")
        items: List[Item] = []
        lost = int(lib.pmc_oom_lost(self._ptr))
        if lost > self._lost_told:
            items.append(OomEventsLost(lost - self._lost_told, lost))
            self._lost_told = lost
        if n:
            size = ffi.new("size_t *")
            ptr = lib.pmc_oom_buffer(self._ptr, size)
            buf = bytes(ffi.buffer(ptr, size[0]))
            lib.pmc_oom_clear(self._ptr)
            offset, at = _boot_offset(), 0
            while at + 4 <= len(buf):
                (length,) = struct.unpack_from("=I", buf, at)
                items.append(parse_event(buf[at + 4:at + 4 + length], offset))
                at += (4 + length + 7) & ~7
        return items

    def _forget_in_child(self) -> None:
        # the parent's ring, programs and pipe are the parent's: drop this
        # process's copies of the fds and mappings without detaching
        self._closed = True
        self._ptr = None
