"""A Reader's use of shared pins (pymemcg.pins): reads that a matching pin
serves go through it, the rest through a backend loaded only when needed.

A pin matches a Reader when its metadata names the same record format, the
same BPF object (this build's), the same set of stats and the same `local`,
and it serves exactly what is asked: the cgroup of a single read (a pin made
with tree=False) or the root of a tree read (tree=True). Matching pins are
found through the metadata directory, looked at again whenever its mtime
changes (a pin made or removed), and only pins this process may read count,
with metadata files and directories that only root (or this user) can write.
Each read through a pin checks the program's selection digest against the
metadata (SelectionMismatch) and that the cgroup read is the one asked for.

The Reader is in this mode only when a matching pin exists as it is made; it
then loads no program of its own until a read that no pin serves, or a pinned
tree too big for one 32 KiB session, needs one (`Reader.backend` says
"pins", then "pins+bpf" or "pins+text"). A process that cannot load one (not
root: bpf() is forbidden to it) falls back to text for those reads, with a
FallbackWarning (backend="auto"), or raises (backend="bpf"); a pinned tree too
big for the pin then raises PinTooSmall, never a truncated tree.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

from .. import forksafe
from ..cgroupfs import Cgroup, path_list, resolve_cgroup, still_names
from ..decode import Selection, Record, Snapshot
from ..errors import BpfUnavailable, CgroupNotFound, PinGone, PinTooSmall
from . import Backend
from ..pins import META_DIR, SHARED_PIN_DIR, PinReader, _read_meta, trusted

_NO_PIN = None  # a route to the backend


def _trusted(directory: str) -> bool:
    """Only root (or this user) can have put pins and metadata there."""
    return trusted(os.stat(directory))


class SharedPins:
    """The shared pins that serve one selection, by (cgroup id, tree)."""

    def __init__(self, stats: List[str], local: bool, directory: str = SHARED_PIN_DIR,
                 meta_dir: str = META_DIR) -> None:
        self.stats, self.local = list(stats), local
        self.directory, self.meta_dir = directory, meta_dir
        self._digest: Optional[str] = None
        self._stamp: object = ()
        self._pins: Dict[Tuple[int, bool], PinReader] = {}
        self.used: Dict[str, str] = {}   # pin path -> what it served last ("tree /a")

    def _matches(self, doc: Dict[str, Any]) -> bool:
        if self._digest is None:
            from ..programs import object_digest
            self._digest = object_digest()
        from .._record_h import FORMAT_VERSION
        return (doc.get("format") == FORMAT_VERSION and doc.get("object") == self._digest and
                doc.get("local") == self.local and not doc.get("flush") and
                sorted(doc.get("stats", ())) == sorted(self.stats) and
                len(doc["stats"]) == len(self.stats))

    def _meta_stamp(self) -> object:
        try:
            st = os.stat(self.meta_dir)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def index(self) -> Dict[Tuple[int, bool], PinReader]:
        """The matching pins, read again if the metadata directory changed."""
        stamp = self._meta_stamp()
        if stamp == self._stamp:
            return self._pins
        found: Dict[Tuple[int, bool], PinReader] = {}
        try:
            trusted = stamp and _trusted(self.meta_dir) and _trusted(self.directory)
            names = sorted(os.listdir(self.meta_dir)) if trusted else []
        except OSError:
            names = []
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name[:-len(".json")])
            try:
                doc = _read_meta(path, self.meta_dir)  # only root's (or our own)
                if not self._matches(doc) or not os.access(path, os.R_OK):
                    continue
                key = (int(doc["cgroup_id"]), bool(doc["tree"]))
                old = self._pins.get(key)
                if old is not None and old.path == path:
                    found[key] = old  # keeps its buffer and path cache
                    continue
                sources = {n: f"shared pin {path}: {s}"
                           for n, s in (doc.get("sources") or {}).items()}
                found[key] = PinReader.from_doc(path, doc, sources)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable, untrusted or foreign metadata: not a match
        self._pins, self._stamp = found, stamp
        return found

    def forget(self, reader: PinReader) -> None:
        """Stop using a pin that is gone (until its metadata changes)."""
        self._pins = {k: v for k, v in self._pins.items() if v is not reader}

    def sources(self) -> Dict[str, str]:
        for reader in self.index().values():
            return {n: f"shared pins: {s.split(': ', 1)[1]}"
                    for n, s in reader.selection.sources.items()}
        return {n: "shared pins" for n in self.stats}


class PinnedBackend:
    """Shared pins in front of a backend that `load` makes on first need."""

    def __init__(self, pins: SharedPins, load: Callable[[], Backend], mode: str) -> None:
        self._pins = pins
        self._load = load
        self._mode = mode            # the Reader's backend= ("auto" or "bpf")
        self.backend: Optional[Backend] = None  # the Reader's own, once loaded
        self._load_error: Optional[BaseException] = None
        self._routes: Dict[Tuple[str, bool], Tuple[Cgroup, Optional[PinReader], object]] = {}
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")

    @classmethod
    def for_reader(cls, stats: List[str], local: bool, where: Union[bool, Tuple[str, str]],
                   load: Callable[[], Backend],
                   mode: str) -> Optional["PinnedBackend"]:
        """A PinnedBackend if a pin in `where` (True: the default directories,
        or (pin directory, metadata directory)) matches now, else None."""
        directory, meta_dir = (SHARED_PIN_DIR, META_DIR) if isinstance(where, bool) else where
        pins = SharedPins(stats, local, directory, meta_dir)
        try:
            if not pins.index():
                return None
        except BpfUnavailable:  # no compiled part: no digest to match
            return None
        return cls(pins, load, mode)

    @property
    def name(self) -> str:
        if self.backend is None:
            return "pins"
        return "pins+" + self.backend.name

    @property
    def selection(self) -> Selection:
        if self.backend is not None:
            return self.backend.selection
        return Selection(self._pins.stats, self._pins.sources())

    @property
    def read_method(self) -> str:
        own = f"; elsewhere {self.backend.read_method}" if self.backend is not None else ""
        return "shared pin (open + read of the pinned link)" + own

    @property
    def loads_programs(self) -> bool:
        """Pins are read without a program: only the Reader's own backend,
        once loaded, may load one."""
        return self.backend is not None and self.backend.loads_programs

    @property
    def pins_used(self) -> Dict[str, str]:
        return dict(self._pins.used)

    def _own(self, why: str) -> Backend:
        """The backend for what no pin serves, loaded on first need."""
        if self.backend is None:
            if self._load_error is not None:
                raise self._load_error
            try:
                backend = self.backend = self._load()
            except BpfUnavailable as e:
                self._load_error = type(e)(f"{why}, and this process cannot load its own "
                                           f"program: {e}")
                raise self._load_error from None
            return backend
        return self.backend

    def _route(self, path: str, tree: bool) -> Tuple[Cgroup, Optional[PinReader]]:
        """(cgroup, pin or None) for path; cached for canonical paths."""
        key = (path, tree)
        try:
            route = self._routes.get(key)
        except TypeError:  # unhashable: resolve_cgroup says what is wrong
            route = None
        if route is not None:
            cg, pin, stamp = route
            if pin is not None or stamp == self._pins._meta_stamp():
                return cg, pin
            del self._routes[key]  # pins changed: look again
        cg = resolve_cgroup(path)
        stamp = self._pins._meta_stamp()
        pin = self._pins.index().get((cg.id, tree), _NO_PIN)
        if isinstance(path, str) and path == cg.path:  # canonical paths only
            self._routes[key] = (cg, pin, stamp)
        return cg, pin

    def _via_pin(self, path: str, tree: bool) -> Union[Record, Snapshot, None]:
        """The pin's Record/Snapshot, or None: the backend serves this."""
        for _ in range(3):
            cg, pin = self._route(path, tree)
            if pin is None:
                return None
            try:
                raw = pin.records()
            except PinGone:
                self._pins.forget(pin)
                self._routes = {k: v for k, v in self._routes.items() if v[1] is not pin}
                continue
            if raw and still_names(cg.path, cg.id):
                self._pins.used[pin.path] = ("tree " if tree else "cgroup ") + cg.relpath
                return pin.decode(cg, raw)
            self._routes.pop((path, tree), None)  # renamed or removed: resolve again
        return None

    def read(self, path: str) -> Record:
        with self._lock:
            rec = self._via_pin(path, False)
            if rec is not None:
                return cast(Record, rec)  # a cgroup's pin: a Record
            be = self._own(f"no shared pin serves {path}")
        return be.read(path)

    def read_many(self, paths: Sequence[str]) -> List[Optional[Record]]:
        """Each path through its pin where one serves it, the rest through the
        Reader's own backend in one read_many (batched there where it can)."""
        paths = path_list(paths)
        out: List[Optional[Record]] = [None] * len(paths)
        rest: List[int] = []
        with self._lock:
            for i, path in enumerate(paths):
                try:
                    rec = self._via_pin(path, False)
                except CgroupNotFound:
                    continue
                if rec is None:
                    rest.append(i)
                else:
                    out[i] = cast(Record, rec)  # a cgroup's pin: a Record
            if rest:
                be = self._own(f"no shared pin serves {paths[rest[0]]}")
        if rest:
            for i, rec in zip(rest, be.read_many([paths[i] for i in rest])):
                out[i] = rec
        return out

    def read_tree(self, path: str) -> Snapshot:
        with self._lock:
            snap: Union[Record, Snapshot, None]
            try:
                snap = self._via_pin(path, True)
            except PinTooSmall as e:
                snap = None
                try:
                    be = self._own(str(e))
                except BpfUnavailable:
                    be = None
                if be is None or not be.loads_programs:
                    raise PinTooSmall(e.errno, f"{e.strerror}; or read it as root, where the "
                                               f"Reader loads its own program") from None
                # this root's tree outgrew its pin: read it with our own program
                cg, _pin = self._route(path, True)
                self._routes[(path, True)] = (cg, _NO_PIN, self._pins._meta_stamp())
            if snap is not None:
                return cast(Snapshot, snap)  # a tree's pin: a Snapshot
            be = self._own(f"no shared pin serves the tree of {path}")
        return be.read_tree(path)

    def close(self) -> None:
        with self._lock:
            if self.backend is not None:
                self.backend.close()
            self._routes.clear()
