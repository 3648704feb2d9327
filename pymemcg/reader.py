"""The public Reader: one API over the BPF and text backends."""

from __future__ import annotations

import functools
import os
import threading
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

from . import catalog, forksafe
from .cgroupfs import memory_mount
from .decode import Record, Snapshot
from .errors import BpfUnavailable, Closed, NoMemoryController, UnknownStat

#: set to 1 (CI does) to make "BPF unavailable" an error instead of a fallback
REQUIRE_BPF_ENV = "PYMEMCG_REQUIRE_BPF"


class FallbackWarning(UserWarning):
    """The BPF backend could not run; the text backend serves instead."""


def _bpf_required() -> bool:
    return os.environ.get(REQUIRE_BPF_ENV, "") not in ("", "0")


def _check_names(names: Sequence[str]) -> List[str]:
    if isinstance(names, str):
        names = [names]
    out = list(names)
    for n in out:
        if n not in catalog.STATS:
            raise UnknownStat(f"unknown stat {n!r}: see pymemcg.stats() for the names "
                              f"this version knows")
    if len(set(out)) != len(out):
        raise UnknownStat(f"stats lists a name twice: {out}")
    return out


def _own_backend(stats: List[str], local: bool, flush: bool, backend: str, mount,
                 stacklevel: int):
    """A Reader's own backend: BPF, else (auto) text with a FallbackWarning."""
    if backend in ("auto", "bpf"):
        try:
            from .backends.bpf import BpfBackend
            return BpfBackend(stats, local, mount.version, mount.mountpoint, flush=flush)
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
    Reads are serialised per Reader; use one Reader per thread for
    parallel reads. Close it (or use `with`) to unpin and unload.
    """

    def __init__(self, stats: Sequence[str] = catalog.DEFAULT_STATS, *, local: bool = False,
                 backend: str = "auto", flush: bool = False, shared_pins=True) -> None:
        self.stats = _check_names(stats)
        self.local = local
        self.flush = flush
        if backend not in ("auto", "bpf", "text"):
            raise ValueError(f"backend must be 'auto', 'bpf' or 'text', not {backend!r}")
        mount = memory_mount()
        if mount is None:
            raise NoMemoryController("no cgroup hierarchy on this host has the memory "
                                     "controller: mount one (cgroup v2 with +memory, or v1 "
                                     "-o memory)")
        self.cgroup_version = mount.version
        self._backend = None
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")
        if backend in ("auto", "bpf") and shared_pins and not flush:
            from .backends.pinned import PinnedBackend
            self._backend = PinnedBackend.for_reader(
                self.stats, local, shared_pins,
                functools.partial(_own_backend, self.stats, local, flush, backend, mount, 4),
                backend)
        if self._backend is None:
            self._backend = _own_backend(self.stats, local, flush, backend, mount, 3)
        # the hot paths: skip a call layer (close() takes them back)
        self.read = self._backend.read  # type: ignore[method-assign]
        self.read_many = self._backend.read_many  # type: ignore[method-assign]

    @property
    def backend(self) -> str:
        """'bpf' or 'text'; with shared pins (see `pins`): 'pins' while
        every read came through them, 'pins+bpf' or 'pins+text' once a read
        needed this Reader's own backend."""
        return self._be().name

    @property
    def pins(self) -> dict:
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
    def sources(self):
        """stat name -> how it is read on this host, or why it is unavailable."""
        return dict(self._be().layout.sources)

    def _be(self):
        if self._backend is None:
            raise Closed("this Reader is closed: make a new one")
        return self._backend

    def read(self, path: str) -> Record:
        """The selected stats of the cgroup directory `path`."""
        return self._be().read(path)

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
        bpf() call; a path's first read proves its cgroup on its own. More
        than 256 distinct cgroups through one Reader take turns in its
        slots, and those that lost theirs are read one by one again.
        Elsewhere (text, kernels before 6.4, shared pins) it is a loop of
        read().
        """
        return self._be().read_many(paths)

    def read_tree(self, root: str) -> Snapshot:
        """Every cgroup under `root` (included), from one walk."""
        return self._be().read_tree(root)

    def close(self) -> None:
        """Unpin links and unload the program. Safe to call twice."""
        with self._lock:
            self.__dict__.pop("read", None)
            self.__dict__.pop("read_many", None)
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
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
    from .memory_stat import printed_keys, text_availability
    mount = memory_mount()
    version = mount.version if mount else 2
    keys = printed_keys(mount.mountpoint) if mount else None
    bpf_res = {}
    bpf_error = ""
    try:
        from .programs import PAGE_SIZE
        from .kernel_facts import kernel_facts
        from .layout import resolve
        facts = kernel_facts()
        bpf_res = {r.stat.name: r for r in resolve(list(catalog.STATS), facts, version,
                                                    PAGE_SIZE, local=local)}
    except Exception as e:  # no BTF, no extension: the text backend still answers
        bpf_error = str(e)
    out = []
    for s in catalog.STATS.values():
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
