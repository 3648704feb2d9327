"""Decoding iterator output (bpf_src/memcg_record.h) into records.

The hot path is one struct.unpack_from per record and nothing per value:
values stay in the tuple the C code of `struct` built.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .errors import MalformedData, SelectionMismatch, StatUnavailable, UnknownStat

FORMAT_VERSION = 3
HEADER = struct.Struct("<QQQIIQQ")        # struct pmc_record
TRAILER = struct.Struct("<32sQQQ")        # struct pmc_trailer: selection, magic, session, visited
TRAILER_MAGIC = 0x31474D434D4D50          # PMC_TRAILER_MAGIC
REC_NO_MEMCG = 1 << 0
REC_NO_VMSTATS = 1 << 1
REC_GONE = 1 << 2              # fetch: empty slot, or the cgroup was removed
MAX_STATS = 128
VALUES_AT = 7                             # index of the first value in a record tuple
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


class Layout:
    """The selected stat names, in record order, and how each was resolved."""

    __slots__ = ("names", "index", "record", "record_size", "sources", "units")

    def __init__(self, names: Sequence[str], sources: Optional[Mapping[str, str]] = None,
                 units: Optional[Mapping[str, str]] = None) -> None:
        if len(names) > MAX_STATS:
            raise MalformedData(f"{len(names)} stats selected: at most {MAX_STATS} fit a record; "
                                f"select fewer")
        self.names: Tuple[str, ...] = tuple(names)
        self.index: Dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self.record = struct.Struct(f"<QQQIIQQ{len(self.names)}Q")
        self.record_size = self.record.size
        self.sources: Dict[str, str] = dict(sources or {})
        self.units: Dict[str, str] = dict(units or {})


class Record:
    """One cgroup's stats: record["anon"] in bytes, record["pgfault"] a count.

    A stat that could not be read for this cgroup raises StatUnavailable on
    [] and gives None from get(); it is never reported as 0. The record keeps
    the tuple struct unpacked, (id, parent_id, name_hash, level, flags,
    valid_lo, valid_hi, *values), so that making one costs a single object.
    """

    __slots__ = ("_t", "_layout", "path")

    def __init__(self, layout: Layout, raw: tuple, path: Optional[str]) -> None:
        self._layout = layout
        self._t = raw
        self.path = path

    @property
    def id(self) -> int:
        """kernfs id of the cgroup: st_ino of its directory."""
        return self._t[0]

    @property
    def parent_id(self) -> int:
        return self._t[1]

    @property
    def name_hash(self) -> int:
        return self._t[2]

    @property
    def level(self) -> int:
        """Depth below the hierarchy root (0 for the root)."""
        return self._t[3]

    @property
    def flags(self) -> int:
        return self._t[4]

    @property
    def valid(self) -> int:
        """Bit i set: the i-th selected stat was read."""
        return self._t[5] | self._t[6] << 64

    def __getitem__(self, name: str) -> int:
        try:
            i = self._layout.index[name]
        except KeyError:
            raise UnknownStat(f"{name!r} is not in this reader's selection "
                              f"{list(self._layout.names)}; add it to stats=") from None
        if not (self._t[5 + (i >> 6)] >> (i & 63)) & 1:
            raise StatUnavailable(f"{name} is unavailable for {self.path or self.id}: "
                                  f"{self._layout.sources.get(name, 'not read')}")
        return self._t[i + VALUES_AT]

    def get(self, name: str, default: Optional[int] = None) -> Optional[int]:
        i = self._layout.index.get(name)
        if i is None or not (self._t[5 + (i >> 6)] >> (i & 63)) & 1:
            return default
        return self._t[i + VALUES_AT]

    def __contains__(self, name: str) -> bool:
        i = self._layout.index.get(name)
        return i is not None and bool((self._t[5 + (i >> 6)] >> (i & 63)) & 1)

    def keys(self) -> Tuple[str, ...]:
        return self._layout.names

    def as_dict(self) -> Dict[str, Optional[int]]:
        """Every selected stat; None where unavailable."""
        valid = self.valid
        return {n: (v if (valid >> i) & 1 else None)
                for i, (n, v) in enumerate(zip(self._layout.names, self._t[VALUES_AT:]))}

    def source(self, name: str) -> str:
        """How this stat was resolved on this kernel (table, btf-enum, ...)."""
        return self._layout.sources.get(name, "")

    @property
    def has_memcg(self) -> bool:
        return not self._t[4] & REC_NO_MEMCG

    def __repr__(self) -> str:
        return f"Record(path={self.path!r}, id={self.id}, level={self.level}, {self.as_dict()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.id, self.parent_id, self.level, self.path, self.as_dict()) == \
            (other.id, other.parent_id, other.level, other.path, other.as_dict())

    __hash__ = None  # type: ignore[assignment]


class Snapshot(Mapping[str, Record]):
    """A tree read in one walk: records keyed by path, findable by id.

    Records are made on first access: a snapshot keeps the tuples that
    struct unpacked and the paths, so reading a column or a few cgroups out
    of a large tree costs no object per cgroup.
    """

    def __init__(self, root: str, layout: Layout, raw: List[tuple],
                 paths: List[Optional[str]], index: Optional[Dict[str, int]] = None) -> None:
        self.root = root
        self.layout = layout
        self._raw = raw
        self._paths = paths
        self._objs: List[Optional[Record]] = [None] * len(raw)
        # index: {path: position}, shared with other snapshots of the same tree
        self._index = index if index is not None else \
            {p: i for i, p in enumerate(paths) if p is not None}
        self._ids: Optional[Dict[int, int]] = None

    @classmethod
    def from_records(cls, root: str, records: List[Record]) -> "Snapshot":
        layout = records[0]._layout if records else Layout(())
        snap = cls(root, layout, [r._t for r in records], [r.path for r in records])
        snap._objs = list(records)
        return snap

    def _record(self, i: int) -> Record:
        rec = self._objs[i]
        if rec is None:
            rec = self._objs[i] = Record(self.layout, self._raw[i], self._paths[i])
        return rec

    @property
    def records(self) -> List[Record]:
        """Every cgroup of the walk, in walk order (the root first)."""
        return [self._record(i) for i in range(len(self._raw))]

    def __getitem__(self, path: str) -> Record:
        return self._record(self._index[path])

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        """Cgroups in the walk (a cgroup removed before its name was read
        has path None: it counts here but is reachable only by id)."""
        return len(self._raw)

    def by_id(self, cgroup_id: int) -> Record:
        if self._ids is None:
            self._ids = {t[0]: i for i, t in enumerate(self._raw)}
        return self._record(self._ids[cgroup_id])

    def column(self, name: str) -> List[Optional[int]]:
        """One stat for every cgroup, in walk order (None where unavailable)."""
        i = self.layout.index[name]
        word, bit, at = 5 + (i >> 6), i & 63, i + VALUES_AT
        return [t[at] if (t[word] >> bit) & 1 else None for t in self._raw]

    @property
    def paths(self) -> List[Optional[str]]:
        """Paths in walk order, aligned with column()."""
        return list(self._paths)

    def __repr__(self) -> str:
        return f"Snapshot(root={self.root!r}, {len(self._raw)} cgroups)"


def selection_digest(names: Sequence[str], local: bool, path: bool) -> bytes:
    """pmc_trailer.selection of a program loaded with this selection: what
    its records hold. path: the single-cgroup program (records carry path
    hashes) rather than the tree program (name hashes)."""
    parts = [f"pymemcg-selection-v{FORMAT_VERSION}", "path" if path else "tree",
             "local" if local else "hierarchical", *names]
    return hashlib.sha256("\0".join(parts).encode()).digest()


OWN_PROGRAM = ("this Reader loaded the program itself, so a pymemcg whose Python and "
               "compiled parts come from different builds; reinstall pymemcg")


def parse_trailer(buf, nbytes: int, record_size: int, selection: bytes,
                  remedy: str = OWN_PROGRAM) -> Tuple[int, int, int]:
    """(records in the buffer, session id, records the walk produced in all).
    selection: what the caller decodes the records as (selection_digest);
    records of anything else raise SelectionMismatch, naming `remedy`."""
    if nbytes < TRAILER.size or (nbytes - TRAILER.size) % record_size:
        raise MalformedData(f"iterator returned {nbytes} bytes, not whole {record_size}-byte "
                            f"records and a trailer: the program and the reader disagree on the "
                            f"format; reinstall pymemcg")
    held, magic, session, visited = TRAILER.unpack_from(buf, nbytes - TRAILER.size)
    if magic != TRAILER_MAGIC:
        raise MalformedData(f"iterator output ends without the trailer (magic {magic:#x}): "
                            f"the walk did not complete or the format differs")
    if held != selection:
        raise SelectionMismatch(f"the program's records hold another selection than they "
                                f"would be decoded as (its selection digest "
                                f"{held[:8].hex()}, expected {selection[:8].hex()}), so stats "
                                f"would be reported under each other's names: {remedy}")
    return (nbytes - TRAILER.size) // record_size, session, visited


def iter_records(layout: Layout, buf, nbytes: int) -> Iterator[tuple]:
    """Raw record tuples (id, parent_id, name_hash, level, flags, valid_lo, valid_hi,
    *values)."""
    if nbytes % layout.record_size:
        raise MalformedData(f"{nbytes} bytes are not whole {layout.record_size}-byte records")
    return layout.record.iter_unpack(memoryview(buf)[:nbytes])


def encode_record(layout: Layout, cgroup_id: int, parent_id: int, level: int, flags: int,
                  valid: int, values: Sequence[int], name_hash: int = 0) -> bytes:
    """The bytes the BPF program writes for these values (tests, fixtures)."""
    return layout.record.pack(cgroup_id, parent_id, name_hash, level, flags,
                              valid & (2**64 - 1), valid >> 64, *values)


def path_hash(relpath: str) -> int:
    """What the path program reports for a cgroup at relpath ("/a/b")."""
    h = FNV_OFFSET
    for part in reversed([p for p in relpath.split("/") if p]):
        h = ((h ^ name_hash(part)) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def name_hash(name: str) -> int:
    """pmc_name_hash of memcg_record.h: FNV-1a over the NUL-terminated name in
    little-endian u64 words, the last zero-padded."""
    data = os.fsencode(name) + b"\0"
    data += b"\0" * (-len(data) % 8)
    h = FNV_OFFSET
    for (w,) in struct.iter_unpack("<Q", data):
        h = ((h ^ w) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def encode_trailer(session_id: int, visited: int, selection: bytes = bytes(32)) -> bytes:
    return TRAILER.pack(selection, TRAILER_MAGIC, session_id, visited)
