"""The wire format between the BPF programs and their readers.

Its one definition is bpf_src/memcg_record.h. The constants come from that
header through the compiled binding (cffi, API mode: the C compiler gives
the values and checks the declared structs), and the `struct` formats that
unpack records and trailers are built from the fields, offsets and sizes
cffi reports for struct pmc_record and struct pmc_trailer. A record's tuple
is what decode.Record indexes: the header's fields in order (the valid[]
bitmap as its words), then the values.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Dict, Iterator, Sequence, Tuple, Union

from . import decode
from .binding import load
from .errors import MalformedData, SelectionMismatch

_ffi, _lib = load()

FORMAT_VERSION: int = _lib.PMC_FORMAT_VERSION
MAX_STATS: int = _lib.PMC_MAX_STATS
SEQ_BUF_SIZE: int = _lib.PMC_SEQ_BUF_SIZE
TRAILER_MAGIC: int = _lib.PMC_TRAILER_MAGIC
SELECTION_BYTES: int = _lib.PMC_SELECTION_WORDS * 8
REC_NO_MEMCG: int = _lib.PMC_REC_NO_MEMCG
REC_NO_VMSTATS: int = _lib.PMC_REC_NO_VMSTATS
REC_GONE: int = _lib.PMC_REC_GONE
SPEC_SIGNED: int = _lib.PMC_SPEC_SIGNED
SPEC_MEMCG_ITEM: int = _lib.PMC_SPEC_MEMCG_ITEM
FNV_OFFSET: int = _lib.PMC_FNV_OFFSET
FNV_PRIME: int = _lib.PMC_FNV_PRIME

KIND_NONE: int = _lib.PMC_KIND_NONE
KIND_STATE: int = _lib.PMC_KIND_STATE
KIND_EVENT: int = _lib.PMC_KIND_EVENT
KIND_MEMEVENT: int = _lib.PMC_KIND_MEMEVENT
KIND_COUNTER: int = _lib.PMC_KIND_COUNTER
KFUNCS_NONE: int = _lib.PMC_KFUNCS_NONE
KFUNCS_MEMCG: int = _lib.PMC_KFUNCS_MEMCG
KFUNCS_RFC: int = _lib.PMC_KFUNCS_RFC
#: the page-counter fields a COUNTER spec's slot names: "MEMORY_USAGE" -> PMC_CTR_MEMORY_USAGE
COUNTERS: Dict[str, int] = {
    name[len("PMC_CTR_"):]: value
    for name, value in _ffi.typeof("enum pmc_counter").relements.items()}

_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _format(ctype: str, bytes_fields: Tuple[str, ...] = ()) -> str:
    """A little-endian, padding-exact `struct` format of a C struct; arrays of
    integers unpack as one item per element, fields in bytes_fields as one
    bytes object."""
    t = _ffi.typeof(ctype)
    out, at = ["<"], 0
    for name, field in t.fields:
        if field.offset > at:
            out.append(f"{field.offset - at}x")
        size = _ffi.sizeof(field.type)
        if field.type.kind == "array":
            item = field.type.item
            if item.kind != "primitive" or _ffi.sizeof(item) not in _CODES:
                raise TypeError(f"{ctype}.{name}: unsupported array of {item.cname}")
            out.append(f"{size}s" if name in bytes_fields
                       else f"{field.type.length}{_CODES[_ffi.sizeof(item)]}")
        elif field.type.kind == "primitive" and size in _CODES:
            out.append(_CODES[size])
        else:
            raise TypeError(f"{ctype}.{name}: unsupported field type {field.type.cname}")
        at = field.offset + size
    if _ffi.sizeof(t) > at:
        out.append(f"{_ffi.sizeof(t) - at}x")
    fmt = "".join(out)
    assert struct.calcsize(fmt) == _ffi.sizeof(t), (ctype, fmt)
    return fmt


#: struct pmc_record: (cgroup_id, parent_id, name_hash, level, flags, valid[0], valid[1])
HEADER = struct.Struct(_format("struct pmc_record"))
#: struct pmc_trailer: (selection digest, magic, session_id, visited)
TRAILER = struct.Struct(_format("struct pmc_trailer", ("selection",)))
#: struct pmc_fetch_want: (slot, pad, cgroup_id, path_hash), an entry of a batched fetch
FETCH_WANT = struct.Struct(_format("struct pmc_fetch_want"))
#: index of the first value in a record tuple
VALUES_AT = len(HEADER.unpack(bytes(HEADER.size)))


def record_struct(nr_stats: int) -> struct.Struct:
    """A record of nr_stats values: the header, then one u64 per value."""
    return struct.Struct(HEADER.format + f"{nr_stats}Q")

if (VALUES_AT, _lib.PMC_MAX_STATS) != (decode.VALUES_AT, decode.MAX_STATS):
    raise ImportError(f"struct pmc_record unpacks to {VALUES_AT} header items for "
                      f"{_lib.PMC_MAX_STATS} stats, decode.Record expects {decode.VALUES_AT} "
                      f"for {decode.MAX_STATS}: change both together")


def selection_digest(names: Sequence[str], local: bool, path: bool) -> bytes:
    """pmc_trailer.selection of a program loaded with this selection: what
    its records hold. path: the single-cgroup program (records carry path
    hashes) rather than the tree program (name hashes)."""
    parts = [f"pymemcg-selection-v{FORMAT_VERSION}", "path" if path else "tree",
             "local" if local else "hierarchical", *names]
    return hashlib.sha256("\0".join(parts).encode()).digest()


OWN_PROGRAM = ("this Reader loaded the program itself, so a pymemcg whose Python and "
               "compiled parts come from different builds; reinstall pymemcg")


#: pmc_trailer.visited when another session took the bookkeeping before this
#: one ended: its count is unknown, read again
VISITED_UNKNOWN = 2**64 - 1


def seq_budget(record_size: int) -> int:
    """Records a session writes before the rest go to the overflow map (the
    loader's pmc_prog.seq_budget: they and the trailer fill one seq buffer)."""
    return (SEQ_BUF_SIZE - TRAILER.size) // record_size


def parse_trailer(buf: Union[bytes, bytearray, memoryview], nbytes: int, record_size: int, selection: bytes,
                  remedy: str = OWN_PROGRAM) -> Tuple[int, int, int]:
    """(records in the buffer, session id, records the walk produced in all;
    VISITED_UNKNOWN: read again). The first nbytes of buf must be whole
    records and the trailer, with counts that agree: records past the
    session's budget are the only ones that may be missing from it. Anything
    else raises MalformedData. selection: what the caller decodes the
    records as (selection_digest); records of anything else raise
    SelectionMismatch, naming `remedy`."""
    if nbytes > len(buf):
        raise MalformedData(f"iterator returned {nbytes} bytes into a {len(buf)}-byte buffer: "
                            f"the count is corrupt; reinstall pymemcg")
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
    count = (nbytes - TRAILER.size) // record_size
    if visited != VISITED_UNKNOWN and visited != count and \
            not (visited > count == seq_budget(record_size)):
        raise MalformedData(f"iterator output holds {count} records but its trailer counts "
                            f"{visited} (a session holds up to {seq_budget(record_size)}): "
                            f"records are missing or the counts are corrupt; read again, and "
                            f"reinstall pymemcg if it persists")
    return count, session, visited


def iter_records(selection: "decode.Selection", buf: Union[bytes, bytearray, memoryview],
                 nbytes: int) -> Iterator["decode.RawRecord"]:
    """Raw record tuples (id, parent_id, name_hash, level, flags, valid_lo, valid_hi,
    *values) of the first nbytes of buf."""
    if nbytes % selection.record_size or not 0 <= nbytes <= len(buf):
        raise MalformedData(f"{nbytes} bytes are not whole {selection.record_size}-byte records "
                            f"of a {len(buf)}-byte buffer")
    records: Iterator[decode.RawRecord] = selection.record.iter_unpack(memoryview(buf)[:nbytes])
    return records


def encode_record(selection: "decode.Selection", cgroup_id: int, parent_id: int, level: int, flags: int,
                  valid: int, values: Sequence[int], name_hash: int = 0) -> bytes:
    """The bytes the BPF program writes for these values (tests, fixtures)."""
    packed: bytes = selection.record.pack(cgroup_id, parent_id, name_hash, level, flags,
                                       valid & (2**64 - 1), valid >> 64, *values)
    return packed


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
