"""The public Reader: one API over the BPF and text backends."""

from __future__ import annotations

import functools
import os
import threading
import warnings
from dataclasses import dataclass
from collections import Counter
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import catalog, forksafe
from . import numa as _numa
from .cgroupfs import Mount, memory_mount
from .decode import Record, Snapshot
from .errors import (BpfUnavailable, Closed, InvalidArgument, NoMemoryController, UnknownStat,
                     quoted)

if TYPE_CHECKING:
    from .backends import Backend

#: set to 1 (CI does) to make "BPF unavailable" an error instead of a fallback
REQUIRE_BPF_ENV = "PYMEMCG_REQUIRE_BPF"


class FallbackWarning(UserWarning):
    """The BPF backend could not run; the text backend serves instead."""


def _bpf_required() -> bool:
    return os.environ.get(REQUIRE_BPF_ENV, "") not in ("", "0")


BACKENDS = ("auto", "bpf", "text")
_CLOSED = "this Reader is closed: make a new one"


def _check_names(names: Sequence[str]) -> List[str]:
    """stats= as a list of known, distinct names (a single str is one name)."""
    if isinstance(names, str):
        names = [names]
    try:
        if isinstance(names, (bytes, bytearray, memoryview)):
            raise TypeError
        out = list(names)
    except TypeError:
        raise InvalidArgument(f"Reader(stats={quoted(names)}): stats takes a list of stat "
                              f"names (str), e.g. ['anon', 'file']; see pymemcg.stats()"
                              ) from None
    for n in out:
        if not isinstance(n, str):
            raise InvalidArgument(f"Reader(stats=...): {quoted(n)} ({type(n).__name__}) is "
                                  f"not a stat name: stats takes str names, see "
                                  f"pymemcg.stats()")
        if n not in catalog.STATS and not _numa.is_numa(n):
            raise UnknownStat(f"unknown stat {quoted(n)}: see pymemcg.stats() for the names "
                              f"this version knows")
    repeated = [n for n, count in Counter(out).items() if count > 1]
    if repeated:
        raise UnknownStat(f"stats lists {', '.join(map(repr, repeated))} twice or more: "
                          f"give each name once")
    return out


def _check_numa(value: object, version: int) -> List[str]:
    """numa=: True (every item memory.numa_stat prints on this cgroup
    version), False or () for none, or a list of item names."""
    if value is True:
        return list(_numa.items(version))
    if value is False:
        return []
    if isinstance(value, str):
        value = [value]
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError
        out: List[object] = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgument(f"Reader(numa={quoted(value)}): numa takes True, False or a list "
                              f"of memory.numa_stat item names, e.g. ['anon', 'file']"
                              ) from None
    names = [n for n in out if isinstance(n, str)]
    if len(names) != len(out):
        raise InvalidArgument(f"Reader(numa={quoted(value)}): item names are str")
    return names


def _check_flag(name: str, value: object) -> bool:
    """A True/False argument: anything else (a truthy "no") would be taken
    for what it was not meant to be."""
    if value is not True and value is not False:
        raise InvalidArgument(f"Reader({name}={quoted(value)}): {name} takes True or False")
    return value


def _check_shared_pins(value: object) -> Union[bool, Tuple[str, str]]:
    """shared_pins=: True, False, or (pin directory, metadata directory)."""
    if value is True or value is False:
        return value
    what = ("shared_pins takes True (the default directories), False, or a (pin directory, "
            "metadata directory) pair of paths")
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidArgument(f"Reader(shared_pins={quoted(value)}): {what}")
    dirs = []
    for d in value:
        try:
            path = os.fspath(d)
        except TypeError:
            path = None
        if not isinstance(path, str) or not path or "\0" in path:
            raise InvalidArgument(f"Reader(shared_pins={quoted(value)}): {quoted(d)} is not a "
                                  f"directory path: {what}")
        dirs.append(path)
    return dirs[0], dirs[1]


def _own_backend(stats: List[str], local: bool, flush: bool, backend: str, mount: Mount,
                 stacklevel: int, for_trees: bool = False) -> Backend:
    """A Reader's own backend: BPF, else (auto) text with a FallbackWarning."""
    if backend in ("auto", "bpf"):
        try:
            from .backends.bpf import BpfBackend
            return BpfBackend(stats, local, mount.version, mount.mountpoint, flush=flush,
                              singles=not for_trees)
        except BpfUnavailable as e:
            if backend == "bpf" or _bpf_required():
                raise
            warnings.warn(f"pymemcg: BPF backend unavailable, reading memory.stat text "
                          f"instead: {e}", FallbackWarning, stacklevel=stacklevel)
    from .backends.text import TextBackend
    return TextBackend(stats, local, mount.version, mount.mountpoint)


class Reader:
    """Reads memory-cgroup stats, through BPF where it can.

    stats: names from pymemcg.stats(); sizes come back in bytes, events as
    counts. local: the cgroup's own values instead of hierarchical ones.
    backend: "auto" (BPF, else text with a FallbackWarning), "bpf", "text".
    flush: fold each cgroup's pending per-CPU updates in before reading it,
    as a read of memory.stat does. It needs a kernel flush kfunc (Linux
    7.0+); elsewhere "bpf" raises FlushUnavailable and "auto" falls back to
    text. Without it, BPF values are the kernel's last flush (at most ~2 s
    old on an idle system). Shared pins do not flush: flush=True uses none.
    shared_pins: True (the default directories of pymemcg.pins), False, or
    (pin directory, metadata directory): where a matching shared pin made
    by root (`pymemcg pin`) serves reads instead of a program of this
    Reader's own, which is then loaded only when a read needs it (see
    pymemcg/backends/pinned.py); this is how a non-root process reads through BPF.
    for_trees: a Reader made for read_tree() (an exporter, `pymemcg
    snapshot`): the tree program is the one loaded when it is made, and
    the one-call program of single reads (BPF_PROG_RUN, Linux 6.4+) never
    is; read() and read_many() still work, through iterator sessions.
    numa: memory.numa_stat items to read per node (True: every item the file
    prints on this cgroup version; see pymemcg.numa): each item on each
    node with memory now is a stat of its own, "anon:N0", and
    Record.numa("anon") gives {node: value}, in the file's unit (v2 bytes
    or counts, v1 pages). More nodes than pymemcg.numa.MAX_NODES: none.
    Once the nodes with memory change (memory hotplug), reads raise
    NumaNodesChanged: make a new Reader (docs/numa.md).
    Reads are serialised per Reader; use one Reader per thread for
    parallel reads. Close it (or use `with`) to close its links and unload its programs.
    An argument of another type or value raises InvalidArgument (a
    TypeError and ValueError too) naming it; an unknown or repeated stat
    name raises UnknownStat.
    """

    def __init__(self, stats: Sequence[str] = catalog.DEFAULT_STATS, *, local: bool = False,
                 backend: str = "auto", flush: bool = False,
                 shared_pins: Union[bool, Tuple[str, str]] = True,
                 for_trees: bool = False,
                 numa: Union[bool, Sequence[str]] = ()) -> None:
        self.stats = _check_names(stats)
        self.local = local = _check_flag("local", local)
        self.flush = flush = _check_flag("flush", flush)
        for_trees = _check_flag("for_trees", for_trees)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise InvalidArgument(f"Reader(backend={quoted(backend)}): backend takes "
                                  f"{', '.join(map(repr, BACKENDS))}")
        shared_pins = _check_shared_pins(shared_pins)
        mount = memory_mount()
        if mount is None:
            raise NoMemoryController("no cgroup hierarchy on this host has the memory "
                                     "controller: mount one (cgroup v2 with +memory, or v1 "
                                     "-o memory)")
        self.cgroup_version = mount.version
        # --- NUMA: one stat per item and node with memory, now ---
        self.numa_items = _check_numa(numa, mount.version)
        # the nodes they were made for, checked again at every read
        self._nodes: Optional[_numa.NodeWatch] = None
        if self.numa_items:
            self._nodes = _numa.NodeWatch()
            self.stats = _check_names(self.stats + _numa.expand(
                self.numa_items, mount.version, self._nodes.nodes))
        self._backend: Optional[Backend] = None
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")
        if backend in ("auto", "bpf") and shared_pins and not flush:
            from .backends.pinned import PinnedBackend
            self._backend = PinnedBackend.for_reader(
                self.stats, local, shared_pins,
                functools.partial(_own_backend, self.stats, local, flush, backend, mount, 4,
                                  for_trees),
                backend)
        if self._backend is None:
            self._backend = _own_backend(self.stats, local, flush, backend, mount, 3, for_trees)
        # read()'s one lookup: the backend's read, bound once (None once closed)
        self._read: Optional[Callable[[str], Record]] = self._backend.read

    @property
    def backend(self) -> str:
        """'bpf' or 'text'; with shared pins (see `pins`): 'pins' while
        every read came through them, 'pins+bpf' or 'pins+text' once a read
        needed this Reader's own backend."""
        return self._be().name

    @property
    def pins(self) -> Dict[str, str]:
        """Shared pins this Reader read through: pin path -> what it served
        ("cgroup /a", "tree /"). Each Record says so too: record.source(name)
        starts with "shared pin <path>"."""
        return dict(getattr(self._be(), "pins_used", {}))

    @property
    def read_method(self) -> str:
        """How read() reads one cgroup: 'BPF_PROG_RUN (memcg_fetch)' (one bpf()
        call, Linux 6.4+), 'iterator session (why not the former)', 'memory.stat
        text', or 'shared pins' first (then the Reader's own method)."""
        return self._be().read_method

    @property
    def sources(self) -> Dict[str, str]:
        """stat name -> how it is read on this host, or why it is unavailable."""
        return dict(self._be().selection.sources)

    def _be(self) -> Backend:
        if self._backend is None:
            raise Closed(_CLOSED)
        return self._backend

    def read(self, path: str) -> Record:
        """The selected stats of the cgroup directory `path`."""
        # a hot path: one call layer over the backend's read
        read = self._read
        if read is None:
            raise Closed(_CLOSED)
        if self._nodes is not None:
            self._nodes.check()
        return read(path)

    def read_many(self, paths: Sequence[str]) -> List[Optional[Record]]:
        """read() of each path, in order, as one call: a Record per path, or
        None where no cgroup has that path at the time of the read (where
        read() raises CgroupNotFound). Every Record is the cgroup that has
        its path then, proven as read() proves it.

        None rather than an exception: across many cgroups one that goes
        away meanwhile (a container that exits) is routine, and raising for
        it would lose every other answer and make the caller read the rest
        again; the answers stay aligned with `paths`. Other errors (not a
        cgroup, no memory controller, a failed read) still raise. A path
        given twice is answered twice, each answer proven on its own.

        With the BPF backend on Linux 6.4+, the paths this Reader has read
        before (by read() or read_many) are read together, up to 256 in one
        bpf() call (a call per 256 paths); a path's first read proves its
        cgroup on its own and takes a kernel reference to it, which the
        Reader keeps for up to 65,536 distinct cgroups (past that, the least
        recently read let go first, and read one by one again when next
        asked for). Elsewhere (text, kernels before 6.4, shared pins) it is
        a loop of read().
        """
        backend = self._backend
        if backend is None:
            raise Closed(_CLOSED)
        if self._nodes is not None:
            self._nodes.check()
        return backend.read_many(paths)

    def read_tree(self, root: str) -> Snapshot:
        """Every cgroup under `root` (included), from one walk."""
        backend = self._be()
        if self._nodes is not None:
            self._nodes.check()
        return backend.read_tree(root)

    def close(self) -> None:
        """Close the links (fds: a Reader pins nothing) and unload the programs. Safe to
        call twice."""
        with self._lock:
            self._read = None
            if self._backend is not None:
                self._backend.close()
                self._backend = None
            if self._nodes is not None:
                self._nodes.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._backend.name if self._backend else "closed"
        return f"Reader({len(self.stats)} stats, local={self.local}, backend={state})"


@dataclass(frozen=True)
class StatInfo:
    """One row of pymemcg.stats()."""

    name: str
    unit: str          # "bytes" or "count"
    meaning: str
    available: bool    # can this host serve it exactly?
    backend: str       # "bpf", "text" or "" when unavailable
    via: str           # how: "bpf/table ...", "text: memory.stat", or why not


def stats(local: bool = False) -> List[StatInfo]:
    """Every stat name with its unit, meaning and how this host serves it."""
    from .memory_stat import PAGE_SIZE, printed_keys, text_availability
    mount = memory_mount()
    version = mount.version if mount else 2
    keys = printed_keys(mount.mountpoint) if mount else None
    # --- NUMA: memory.numa_stat's items on this host's nodes with memory ---
    numa_names = _numa.expand(_numa.items(version), version, _numa.memory_nodes())
    bpf_res = {}
    bpf_error = ""
    try:
        from .kernel_probe import kernel_facts, psi_running
        from .slots import resolve
        facts = kernel_facts()
        bpf_res = {r.stat.name: r for r in resolve(list(catalog.STATS) + numa_names, facts,
                                                    version, PAGE_SIZE, local=local,
                                                    psi_on=psi_running())}
    except Exception as e:  # no BTF, no extension: the text backend still answers
        bpf_error = str(e)
    out = []
    for s in [*catalog.STATS.values(), *(_numa.stat(n, version) for n in numa_names)]:
        r = bpf_res.get(s.name)
        if r is not None and r.available:
            out.append(StatInfo(s.name, s.unit, s.meaning, True, "bpf", f"{r.via}: {r.detail}"))
            continue
        ok, where = text_availability(s.name, version, local, keys)
        why = r.detail if r is not None else bpf_error
        if ok:
            out.append(StatInfo(s.name, s.unit, s.meaning, True, "text",
                                f"{where} (bpf: {why})"))
        else:
            out.append(StatInfo(s.name, s.unit, s.meaning, False, "", f"bpf: {why}; text: {where}"))
    return out
