"""The record format's layouts for Python, with no compiled part.

bpf_src/memcg_record.h is the format's one definition. At build time
csrc/record_header.py makes two things of it: the binding's cdef (which the
C compiler checks against the header) and pymemcg/_record_h.py, the header's
constants, enums and struct layouts as plain Python. This module turns those
layouts into `struct` formats and says where each field sits in a record's
tuple and among its u64 words; decode.Record and the text backend use them,
the BPF side too. check_compiled() tells whether a compiled part was built
from the same header.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, Mapping, Sequence, Tuple

from ._record_h import DEFINES, ENUMS, MAX_STATS, SELECTION_WORDS, SEQ_BUF_SIZE, STRUCTS

# a struct of the header: (sizeof, ((name, C type, array length or 0, offset, item bytes), ...))
Layout = Tuple[int, Tuple[Tuple[str, str, int, int, int], ...]]

_CODES = {4: "I", 8: "Q"}   # the header's scalar types, unsigned, by size


def struct_format(name: str, bytes_fields: Sequence[str] = (),
                  structs: Mapping[str, Layout] = STRUCTS) -> str:
    """A little-endian, padding-exact `struct` format of struct `name` of the
    header: arrays unpack as one item per element, fields in bytes_fields
    as one bytes object. structs: the layouts to take it from."""
    size, fields = structs[name]
    out, at = ["<"], 0
    for field, ctype, length, offset, item in fields:
        if item not in _CODES or ctype.startswith("struct "):
            raise TypeError(f"struct {name}.{field}: {ctype} does not unpack to integers")
        if offset > at:
            out.append(f"{offset - at}x")
        count = max(length, 1)
        if field in bytes_fields:
            out.append(f"{count * item}s")
        else:
            out.append(f"{length}{_CODES[item]}" if length else _CODES[item])
        at = offset + count * item
    if size > at:
        out.append(f"{size - at}x")
    fmt = "".join(out)
    if struct.calcsize(fmt) != size:
        raise TypeError(f"struct {name}: {fmt!r} is {struct.calcsize(fmt)} bytes, not {size}")
    return fmt


def tuple_positions(name: str, structs: Mapping[str, Layout] = STRUCTS) -> Dict[str, int]:
    """Where each field's first item is in the tuple struct_format(name) unpacks."""
    at, positions = 0, {}
    for field, _ctype, length, _offset, _item in structs[name][1]:
        positions[field] = at
        at += max(length, 1)
    return positions


#: struct pmc_record: (cgroup_id, parent_id, name_hash, level, flags, *valid words)
HEADER = struct.Struct(struct_format("pmc_record"))
#: struct pmc_trailer: (selection digest, magic, session_id, visited)
TRAILER = struct.Struct(struct_format("pmc_trailer", ("selection",)))
#: struct pmc_fetch_want: (cgroup_id, path_hash), an entry of a batched fetch
FETCH_WANT = struct.Struct(struct_format("pmc_fetch_want"))
SELECTION_BYTES = SELECTION_WORDS * 8

_AT = tuple_positions("pmc_record")
#: a record's tuple: the header's fields in order (valid[] as its words), then the values
ID_AT, PARENT_AT, HASH_AT, LEVEL_AT, FLAGS_AT, VALID_AT = (
    _AT["cgroup_id"], _AT["parent_id"], _AT["name_hash"], _AT["level"], _AT["flags"], _AT["valid"])
#: u64 words of pmc_record.valid: bit i of the bitmap says whether value i was read
VALID_WORDS = next(length for field, _c, length, _o, _i in STRUCTS["pmc_record"][1]
                   if field == "valid")
#: index of the first value in a record tuple
VALUES_AT = len(HEADER.unpack(bytes(HEADER.size)))
if VALID_WORDS * 64 != MAX_STATS:
    raise ImportError(f"pmc_record.valid has {VALID_WORDS} words for PMC_MAX_STATS "
                      f"{MAX_STATS}: bpf_src/memcg_record.h is inconsistent")

_OFFSET = {field: offset for field, _c, _l, offset, _i in STRUCTS["pmc_record"][1]}
#: the same record as u64 words (decode.PackedRecords): id, parent id, name
#: hash, the valid words, then one word per value
ID_WORD, PARENT_WORD, HASH_WORD, VALID_WORD = (
    _OFFSET["cgroup_id"] // 8, _OFFSET["parent_id"] // 8, _OFFSET["name_hash"] // 8,
    _OFFSET["valid"] // 8)
VALUE_WORD = HEADER.size // 8
#: whether those fields are u64 (at 8-byte offsets: the C layout), and a record
#: whole u64 words
WORDS_ALIGNED = HEADER.size % 8 == 0 and all(
    ctype == "unsigned long long" for field, ctype, _l, _o, _i in STRUCTS["pmc_record"][1]
    if field in ("cgroup_id", "parent_id", "name_hash", "valid"))

#: bytes a reader's buffer holds to get a whole session in one read(): more
#: than the kernel's seq buffer (a read stops early only when the buffer is
#: at least that size); csrc/pmc_shim.c's pmc_read_session
SESSION_BUF_SIZE = SEQ_BUF_SIZE + 4096

#: the page-counter fields a COUNTER spec's slot names: "MEMORY_USAGE" -> PMC_CTR_MEMORY_USAGE
COUNTERS: Dict[str, int] = {name[len("PMC_CTR_"):]: value
                            for name, value in ENUMS["pmc_counter"].items()}
#: the scalar fields a FIELD spec's slot names: "SOFT_LIMIT" -> PMC_FIELD_SOFT_LIMIT
FIELDS: Dict[str, int] = {name[len("PMC_FIELD_"):]: value
                          for name, value in ENUMS["pmc_field"].items()}


def record_struct(nr_stats: int) -> struct.Struct:
    """A record of nr_stats values: the header, then one u64 per value."""
    return struct.Struct(HEADER.format + f"{nr_stats}Q")


def check_compiled(ffi: Any, lib: Any) -> str | None:
    """None if the compiled part (cffi ffi and lib) was built from the header
    this module was made from; else what differs."""
    for name, value in DEFINES.items():
        if getattr(lib, name, None) != value:
            return f"{name} is {getattr(lib, name, None)}, here {value}"
    for enum, items in ENUMS.items():
        if dict(ffi.typeof(f"enum {enum}").relements) != items:
            return f"enum {enum} differs"
    for name, (size, fields) in STRUCTS.items():
        ctype = f"struct {name}"
        if ffi.sizeof(ctype) != size or [(f, ffi.offsetof(ctype, f)) for f, *_ in fields] != \
                [(f, offset) for f, _c, _l, offset, _i in fields]:
            return f"struct {name} differs"
    return None
