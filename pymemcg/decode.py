"""Records and snapshots: what every backend returns.

A Record keeps the tuple of one cgroup as the BPF record unpacks it
(record_format.py, from bpf_src/memcg_record.h): (id, parent_id, name_hash,
level, flags, valid words, *values); the text backend builds the same tuple.
The hot path is one struct.unpack_from per record and nothing per value.
Pure Python: nothing here needs the compiled part.
"""

from __future__ import annotations

import operator
import sys
import struct
from typing import Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, cast, overload

# one record as unpacked: id, parent id, name hash, level, flags, valid words, values
RawRecord = Tuple[int, ...]

from ._record_h import MAX_STATS, REC_NO_MEMCG, REC_NO_PSI
from .catalog import TUNABLES
from .memory_stat import PAGE_COUNTER_MAX_BYTES
from .containers import CgroupIdentity, identify
from .errors import MalformedData, StatUnavailable, UnknownStat, quoted
from .record_format import (FLAGS_AT, HASH_AT, ID_AT, ID_WORD, LEVEL_AT, PARENT_AT, VALID_AT,
                            VALID_WORD, VALID_WORDS, VALUE_WORD, VALUES_AT, WORDS_ALIGNED,
                            record_struct)


class Max(float):
    """The value of a limit or protection that is not set: "max" in its cgroup
    v2 file (v1's files print PAGE_COUNTER_MAX in bytes for it). It is
    positive infinity, so it compares above every int and `usage / limit`
    is 0.0; str() is "max". pymemcg.MAX is its one instance."""

    __slots__ = ()

    def __new__(cls) -> "Max":
        return super().__new__(cls, "inf")

    def __repr__(self) -> str:
        return "pymemcg.MAX"

    def __str__(self) -> str:
        return "max"

    def __reduce__(self) -> str:
        return "MAX"


MAX = Max()

#: a stat's value: an int (bytes or a count), or MAX (a float: infinity)
#: for a limit or protection not set
Value = Union[int, float]


#: PAGE_COUNTER_MAX pages in bytes: what a record holds for "max" (BPF reads
#: the kernel's page count times the page size; the text backend parses
#: "max" to it), and what a v1 limit file prints for no limit
RAW_MAX = PAGE_COUNTER_MAX_BYTES


def unlimited(value: int) -> Value:
    """A limit's or protection's value as a Record gives it: MAX for the
    kernel's PAGE_COUNTER_MAX, else the value."""
    return MAX if value == RAW_MAX else value


def json_value(value: Optional[Value]) -> Union[None, int, str]:
    """A value as JSON carries it: MAX as the string "max" (JSON has no
    infinity), None as null, an int as itself."""
    return "max" if value is MAX else cast(Optional[int], value)


def raw_record(cgroup_id: int, parent_id: int, name_hash: int, level: int, flags: int,
               valid: int, values: Sequence[int]) -> RawRecord:
    """The tuple a BPF record of these fields unpacks to (valid: bit i set,
    values[i] was read)."""
    head = [0] * VALUES_AT
    head[ID_AT], head[PARENT_AT], head[HASH_AT] = cgroup_id, parent_id, name_hash
    head[LEVEL_AT], head[FLAGS_AT] = level, flags
    for w in range(VALID_WORDS):
        head[VALID_AT + w] = (valid >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
    return (*head, *values)


_record_id = operator.itemgetter(ID_AT)


def _valid_bits(t: RawRecord) -> int:
    """A record tuple's valid bitmap as one int: bit i set, value i was read."""
    bits = 0
    for w in range(VALID_WORDS):
        bits |= t[VALID_AT + w] << (64 * w)
    return bits


class Selection:
    """The selected stat names, in record order, and how each was resolved."""

    __slots__ = ("names", "index", "_record", "sources", "units", "tunable_at")

    def __init__(self, names: Sequence[str], sources: Optional[Mapping[str, str]] = None,
                 units: Optional[Mapping[str, str]] = None) -> None:
        if len(names) > MAX_STATS:
            raise MalformedData(f"{len(names)} stats selected: at most {MAX_STATS} fit a record; "
                                f"select fewer")
        self.names: Tuple[str, ...] = tuple(names)
        self.index: Dict[str, int] = {n: i for i, n in enumerate(self.names)}
        # positions of limits and protections, whose PAGE_COUNTER_MAX is MAX
        self.tunable_at: FrozenSet[int] = frozenset(
            i for i, n in enumerate(self.names) if n in TUNABLES)
        self._record: Optional[struct.Struct] = None
        self.sources: Dict[str, str] = dict(sources or {})
        self.units: Dict[str, str] = dict(units or {})

    def unknown(self, name: object) -> UnknownStat:
        """The error for a stat name outside this selection."""
        return UnknownStat(f"{quoted(name)} is not in this reader's selection "
                           f"{list(self.names)}; add it to stats=")

    def position(self, name: str) -> int:
        """The index of a selected stat in the record; UnknownStat for any
        other name."""
        try:
            return self.index[name]
        except KeyError:
            raise self.unknown(name) from None

    @property
    def record(self) -> struct.Struct:
        """The struct.Struct of one BPF record of this selection."""
        record = self._record
        if record is None:
            record = self._record = record_struct(len(self.names))
        return record

    @property
    def record_size(self) -> int:
        """Bytes of one BPF record of this selection."""
        size: int = self.record.size
        return size


class PackedRecords(Sequence[RawRecord]):
    """The records of one walk as the kernel wrote them, in one bytes object.

    A snapshot's columns (ids, parent ids, name hashes, one stat) are read
    straight out of the bytes as u64 words, with no tuple or int object per
    record in between; a record's tuple is unpacked only when it is asked
    for. Only where the record is whole little-endian u64 words on a
    little-endian host (supported()); elsewhere readers keep tuples.
    """

    __slots__ = ("data", "words", "stride", "_unpack_from", "_iter_unpack", "_size", "_n")

    def __init__(self, selection: Selection, data: bytes) -> None:
        record = selection.record
        self.data = data
        self._size = record.size
        self._n = len(data) // record.size
        if self._n * record.size != len(data):
            raise MalformedData(f"{len(data)} bytes of records are not whole "
                                f"{record.size}-byte records")
        self.stride = record.size // 8
        self.words = memoryview(data).cast("Q")
        self._unpack_from = record.unpack_from
        self._iter_unpack = record.iter_unpack

    @staticmethod
    def supported(selection: Selection) -> bool:
        """Whether this selection's records can be read as u64 words here."""
        return sys.byteorder == "little" and WORDS_ALIGNED

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> RawRecord: ...

    @overload
    def __getitem__(self, i: slice) -> List[RawRecord]: ...

    def __getitem__(self, i: Union[int, slice]) -> Union[RawRecord, List[RawRecord]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("record index out of range")
        t: RawRecord = self._unpack_from(self.data, i * self._size)
        return t

    def __iter__(self) -> Iterator[RawRecord]:
        it: Iterator[RawRecord] = self._iter_unpack(self.data)
        return it

    def word_column(self, word: int) -> List[int]:
        """Word `word` of every record, in walk order."""
        column: List[int] = self.words[word::self.stride].tolist()
        return column

    def word_bytes(self, word: int) -> bytes:
        """word_column() as the bytes it is made of (for comparing shapes)."""
        return self.words[word::self.stride].tobytes()

    def word_equals(self, word: int, column: bytes) -> bool:
        """Whether word_bytes(word) would equal column, compared in place
        (no copy of the column made first)."""
        return len(column) == 8 * self._n and \
            self.words[word::self.stride] == memoryview(column).cast("Q")

    def uniform(self, word: int) -> bool:
        """Whether every record has the same value in word `word`."""
        col = self.word_bytes(word)
        return col == col[:8] * self._n


def _unlimited_as_max(values: Sequence[Optional[int]]) -> List[Optional[Value]]:
    """A limit's values with the kernel's "no limit" as MAX. A tree's limits
    are mostly all unset or all set: one C-level count decides those, and
    only a mix is tested value by value."""
    unlimited = values.count(RAW_MAX)
    if unlimited == len(values):
        return [MAX] * unlimited
    if not unlimited:
        return list(values)
    return [MAX if v == RAW_MAX else v for v in values]


# a walk's records: tuples, or the kernel's bytes
RawRecords = Union[List[RawRecord], PackedRecords]


#: why a record with REC_NO_PSI has no pressure values
NO_PSI_WHY = ("this cgroup keeps no pressure: its cgroup.pressure is 0 (the kernel hides "
              "memory.pressure then), or PSI is off")
NO_PSI_ROOT_WHY = ("the root cgroup's pressure is the system's (psi_system, "
                   "/proc/pressure/memory), and this kernel's kallsyms does not list "
                   "psi_system (no CONFIG_KALLSYMS_ALL, or PYMEMCG_KALLSYMS=0), or PSI is off")


class Record:
    """One cgroup's stats: record["anon"] in bytes, record["pgfault"] a count.

    A stat that could not be read for this cgroup raises StatUnavailable on
    [] and gives None from get(); it is never reported as 0. The record keeps
    the tuple struct unpacked, (id, parent_id, name_hash, level, flags,
    *valid words, *values), so that making one costs a single object.
    """

    __slots__ = ("_t", "_selection", "path")

    def __init__(self, selection: Selection, raw: RawRecord, path: Optional[str]) -> None:
        self._selection = selection
        self._t: RawRecord = raw
        self.path = path

    @property
    def id(self) -> int:
        """kernfs id of the cgroup: st_ino of its directory."""
        return self._t[ID_AT]

    @property
    def parent_id(self) -> int:
        return self._t[PARENT_AT]

    @property
    def name_hash(self) -> int:
        return self._t[HASH_AT]

    @property
    def level(self) -> int:
        """Depth below the hierarchy root (0 for the root)."""
        return self._t[LEVEL_AT]

    @property
    def flags(self) -> int:
        return self._t[FLAGS_AT]

    @property
    def valid(self) -> int:
        """Bit i set: the i-th selected stat was read."""
        return _valid_bits(self._t)

    def __getitem__(self, name: str) -> Value:
        try:
            i = self._selection.index[name]
        except KeyError:
            raise self._selection.unknown(name) from None
        if not (self._t[VALID_AT + (i >> 6)] >> (i & 63)) & 1:
            why = self._selection.sources.get(name, 'not read')
            if self._t[FLAGS_AT] & REC_NO_PSI and name.startswith("pressure_"):
                why = NO_PSI_ROOT_WHY if self._t[LEVEL_AT] == 0 else NO_PSI_WHY
            raise StatUnavailable(f"{name} is unavailable for {self.path or self.id}: {why}")
        v = self._t[i + VALUES_AT]
        if v == RAW_MAX and i in self._selection.tunable_at:
            return MAX
        return v

    def get(self, name: str, default: Optional[Value] = None) -> Optional[Value]:
        i = self._selection.index.get(name)
        if i is None or not (self._t[VALID_AT + (i >> 6)] >> (i & 63)) & 1:
            return default
        v = self._t[i + VALUES_AT]
        if v == RAW_MAX and i in self._selection.tunable_at:
            return MAX
        return v

    def __contains__(self, name: str) -> bool:
        i = self._selection.index.get(name)
        return i is not None and bool((self._t[VALID_AT + (i >> 6)] >> (i & 63)) & 1)

    def keys(self) -> Tuple[str, ...]:
        return self._selection.names

    def as_dict(self) -> Dict[str, Optional[Value]]:
        """Every selected stat; None where unavailable."""
        valid = self.valid
        out: Dict[str, Optional[Value]] = {n: (v if (valid >> i) & 1 else None)
               for i, (n, v) in enumerate(zip(self._selection.names, self._t[VALUES_AT:]))}
        for i in self._selection.tunable_at:
            if out[self._selection.names[i]] == RAW_MAX:
                out[self._selection.names[i]] = MAX
        return out

    def numa(self, item: str) -> Dict[int, Value]:
        """A memory.numa_stat item per node, {node: value}, in the file's
        unit (cgroup v2: bytes, or a count; v1: pages), for the nodes the
        reader was made with (Reader(numa=[item])). StatUnavailable where a
        node's value could not be read, or the host's nodes are too many;
        UnknownStat where the reader did not select the item."""
        from . import numa
        prefix = item + ":N"
        names = [n for n in self._selection.names if n.startswith(prefix)]
        if not names:
            if isinstance(item, str) and any(item in numa.items(v) for v in (1, 2)):
                why = numa.nodes_why(numa.memory_nodes())
                if why:
                    raise StatUnavailable(f"numa({item!r}) is unavailable: {why}")
            raise UnknownStat(f"numa({quoted(item)}): not in this reader's selection; make the "
                              f"Reader with numa=[{item!r}] (or numa=True)")
        return {int(n[len(prefix):]): self[n] for n in names}

    def source(self, name: str) -> str:
        """How this stat was resolved on this kernel (table, btf-enum, ...)."""
        return self._selection.sources.get(name, "")

    @property
    def container(self) -> CgroupIdentity:
        """Who this cgroup is, from its path (pymemcg.containers.identify): pod
        UID, container id, QoS class, runtime, systemd unit; all None where
        the path says nothing known, or is None (a cgroup removed before its
        name was read). Computed on access (pure, cached by path)."""
        return identify(self.path)

    @property
    def has_memcg(self) -> bool:
        return not self._t[FLAGS_AT] & REC_NO_MEMCG

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

    Records are made on first access: a snapshot keeps the records as read
    (the BPF backend: the kernel's bytes, see PackedRecords; the text
    backend: tuples) and the paths, so reading a column or a few cgroups out
    of a large tree costs no object per cgroup.
    """

    def __init__(self, root: str, selection: Selection, raw: RawRecords,
                 paths: List[Optional[str]], index: Optional[Dict[str, int]] = None) -> None:
        self.root = root
        self.selection = selection
        self._raw = raw
        self._paths = paths
        self._objs: Optional[List[Optional[Record]]] = None
        # index: {path: position}, shared with other snapshots of the same tree
        self._index = index if index is not None else \
            {p: i for i, p in enumerate(paths) if p is not None}
        self._ids: Optional[Dict[int, int]] = None

    @classmethod
    def from_records(cls, root: str, records: List[Record]) -> "Snapshot":
        selection = records[0]._selection if records else Selection(())
        snap = cls(root, selection, [r._t for r in records], [r.path for r in records])
        snap._objs = list(records)
        return snap

    def _record(self, i: int) -> Record:
        if self._objs is None:
            self._objs = [None] * len(self._raw)
        rec = self._objs[i]
        if rec is None:
            rec = self._objs[i] = Record(self.selection, self._raw[i], self._paths[i])
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
            self._ids = {cid: i for i, cid in enumerate(self.ids())}
        return self._record(self._ids[cgroup_id])

    def ids(self) -> List[int]:
        """Cgroup ids (st_ino of their directories) in walk order, aligned with column()."""
        raw = self._raw
        if raw.__class__ is PackedRecords:
            return raw.word_column(ID_WORD)
        ids: List[int] = list(map(_record_id, raw))
        return ids

    def column(self, name: str) -> List[Optional[Value]]:
        """One stat for every cgroup, in walk order (None where unavailable);
        UnknownStat for a name outside the selection, as Record[name] raises."""
        return self._value_column(self.selection.position(name), {})

    def _value_column(self, i: int, uniform: Dict[int, bool]) -> List[Optional[Value]]:
        """column() of the stat at position i; `uniform` caches, per valid
        word, whether every record has the same valid bits (PackedRecords)."""
        if i in self.selection.tunable_at:
            return _unlimited_as_max(self._column(i, uniform))
        return cast(List[Optional[Value]], self._column(i, uniform))

    def _column(self, i: int, uniform: Optional[Dict[int, bool]] = None
                ) -> List[Optional[int]]:
        """column() of the stat at position i, as the records hold it."""
        raw = self._raw
        if raw.__class__ is PackedRecords:
            valid_word, value_word = VALID_WORD + (i >> 6), VALUE_WORD + i
            same = uniform.get(valid_word) if uniform is not None else None
            if same is None:
                same = raw.uniform(valid_word)
                if uniform is not None:
                    uniform[valid_word] = same
            if same:  # the usual case: one test for all
                if not raw or (raw.words[valid_word] >> (i & 63)) & 1:
                    # every value present: the ints as they are (list is invariant)
                    return cast(List[Optional[int]], raw.word_column(value_word))
                return [None] * len(raw)
            bit = i & 63
            return [v if (w >> bit) & 1 else None
                    for v, w in zip(raw.word_column(value_word), raw.word_column(valid_word))]
        word, bit, at = VALID_AT + (i >> 6), i & 63, i + VALUES_AT
        return [t[at] if (t[word] >> bit) & 1 else None for t in raw]

    def columns(self, names: Sequence[str]) -> Dict[str, Sequence[Optional[Value]]]:
        """column() of each name, made at once: where every record has the same
        stats available (the usual case) the columns are one transposition
        of the records, with no test per value."""
        raw = self._raw
        index = self.selection.index
        for n in names:
            self.selection.position(n)  # UnknownStat before any work, as column() raises
        if not raw:
            return {n: [] for n in names}
        if raw.__class__ is PackedRecords:
            uniform: Dict[int, bool] = {}
            return {n: self._value_column(index[n], uniform) for n in names}
        first = raw[0]
        cols = list(zip(*raw))
        if any(cols[w].count(first[w]) != len(raw)
               for w in range(VALID_AT, VALID_AT + VALID_WORDS)):
            return {n: self.column(n) for n in names}
        valid = _valid_bits(first)
        none = [None] * len(raw)
        tunable_at = self.selection.tunable_at
        return {n: (cols[index[n] + VALUES_AT] if index[n] not in tunable_at else
                    _unlimited_as_max(cols[index[n] + VALUES_AT]))
                if (valid >> index[n]) & 1 else none
                for n in names}

    @property
    def paths(self) -> List[Optional[str]]:
        """Paths in walk order, aligned with column()."""
        return list(self._paths)

    @property
    def shared_paths(self) -> List[Optional[str]]:
        """paths without the copy: the same list object as the last snapshot's
        where the BPF backend found the tree's shape unchanged, so that
        exporters can keep what they derived from it. Do not change it."""
        return self._paths

    def __repr__(self) -> str:
        return f"Snapshot(root={self.root!r}, {len(self._raw)} cgroups)"
