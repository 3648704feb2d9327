"""What an iterator session returns: records, then a trailer; and the
selection digest that ties the records to the names they are decoded as.

The format's one definition is bpf_src/memcg_record.h; its constants come
from pymemcg/_record_h.py and its struct formats from
pymemcg/record_format.py, both made from the header at build time. A
record's tuple is what decode.Record indexes: the header's fields in order
(the valid[] bitmap as its words), then the values.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Sequence, Tuple, Union

from . import decode
from ._record_h import FORMAT_VERSION, SEQ_BUF_SIZE, TRAILER_MAGIC
from .errors import MalformedData, SelectionMismatch
from .record_format import TRAILER


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
    packed: bytes = selection.record.pack(
        *decode.raw_record(cgroup_id, parent_id, name_hash, level, flags, valid, values))
    return packed


def encode_trailer(session_id: int, visited: int, selection: bytes = bytes(32)) -> bytes:
    return TRAILER.pack(selection, TRAILER_MAGIC, session_id, visited)
