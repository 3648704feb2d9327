"""The name and path hashes the BPF programs put in records, in Python.

The same FNV-1a as bpf_src/memcg_fill.bpf.h (name_hash, path_hash), with the
constants of bpf_src/memcg_record.h: a reader compares them with a record's
name_hash to tell that the record is of the cgroup, and the path, it means.
Pure Python: the text backend names cgroups with them too.
"""

from __future__ import annotations

import os
import struct

from ._record_h import FNV_OFFSET, FNV_PRIME

_U64 = 0xFFFFFFFFFFFFFFFF


def name_hash(name: str) -> int:
    """What the tree program reports for a cgroup named `name`: FNV-1a over
    the NUL-terminated name in little-endian u64 words, the last zero-padded."""
    data = os.fsencode(name) + b"\0"
    data += b"\0" * (-len(data) % 8)
    h = FNV_OFFSET
    for (w,) in struct.iter_unpack("<Q", data):
        h = ((h ^ w) * FNV_PRIME) & _U64
    return h


def path_hash(relpath: str) -> int:
    """What the path program reports for a cgroup at relpath ("/a/b") below
    the hierarchy root: FNV-1a over the names' hashes, leaf first."""
    h = FNV_OFFSET
    for part in reversed([p for p in relpath.split("/") if p]):
        h = ((h ^ name_hash(part)) * FNV_PRIME) & _U64
    return h
