"""The iterator wire format (pymemcg/record_format.py and wire.py, from
bpf_src/memcg_record.h) and its decoding (pymemcg/decode.py): encode ->
decode round trips and bad buffers. No kernel, no BPF: the compiled part's
view of the header checks the Python one.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pymemcg
from pymemcg import catalog
from pymemcg.decode import MAX_STATS, Selection, PackedRecords, Record, Snapshot
from pymemcg._record_h import REC_NO_MEMCG, REC_NO_VMSTATS, TRAILER_MAGIC
from pymemcg.record_format import HEADER, TRAILER
from pymemcg.wire import (VISITED_UNKNOWN, encode_record, encode_trailer, iter_records,
                          parse_trailer, selection_digest)

# The record carries MAX_STATS valid bits in MAX_STATS / 64 u64 words (128 and two words at
# the time of writing); these tests follow decode.MAX_STATS rather than hard-coding it.

U64 = st.integers(min_value=0, max_value=2**64 - 1)
U32 = st.integers(min_value=0, max_value=2**32 - 1)
SEL = bytes(32)  # the selection encode_trailer writes unless told

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ALL_NAMES = sorted(catalog.STATS)
MAX_SELECTABLE = min(MAX_STATS, len(ALL_NAMES))
# names that are not stats: Selection takes any names, so these fill selections past the catalog
FAKE_NAMES = [f"fake_{i}" for i in range(MAX_STATS + 64)]


def _sample(n_seed):
    n, seed = n_seed
    return random.Random(seed).sample(ALL_NAMES, n)


# distinct catalog names in any order: small selections, and large ones that use the second
# valid word (bits 64..). A size and a seed rather than a list of draws keeps generation cheap.
selections = (st.tuples(st.integers(1, 64), st.integers(0, 2**32 - 1))
              | st.tuples(st.integers(min(65, MAX_SELECTABLE), MAX_SELECTABLE),
                          st.integers(0, 2**32 - 1))).map(_sample)


@st.composite
def records_for(draw, n, min_size=0, max_size=8, unique_ids=False):
    """Raw record tuples (id, parent_id, level, flags, valid, values) for n stats."""
    # keep a case small enough for hypothesis's buffer: fewer records when they are wide
    max_size = max(min_size, 2, min(max_size, 256 // n))
    ids = draw(st.lists(U64, min_size=min_size, max_size=max_size, unique=unique_ids))
    out = []
    for cid in ids:
        # the values come from one byte string: drawing up to MAX_STATS integers one by one
        # per record would make the module slow; edge values are mixed in by index
        blob = draw(st.binary(min_size=8 * n, max_size=8 * n))
        values = list(struct.unpack(f"<{n}Q", blob))
        for i, edge in draw(st.lists(st.tuples(st.integers(0, n - 1),
                                               st.sampled_from([0, 1, 2**63, 2**64 - 1])),
                                     max_size=3)):
            values[i] = edge
        out.append((cid, draw(U64), draw(U32), draw(U32),
                    draw(st.integers(0, 2**n - 1)), tuple(values)))
    return out


@st.composite
def encoded(draw, min_records=0, unique_ids=False):
    names = draw(selections)
    selection = Selection(names, {n: "test" for n in names})
    recs = draw(records_for(len(names), min_size=min_records, unique_ids=unique_ids))
    # a walk's count as the program writes it: the records held, or "unknown" (another
    # session took the bookkeeping: read again); cases are far below the session's budget
    session, visited = draw(U64), draw(st.sampled_from([len(recs), VISITED_UNKNOWN]))
    body = b"".join(encode_record(selection, *r[:5], r[5]) for r in recs)
    return selection, recs, session, visited, body + encode_trailer(session, visited)


def decode_all(selection, buf, nbytes, paths=None):
    count, session, visited = parse_trailer(buf, nbytes, selection.record_size, SEL)
    raws = list(iter_records(selection, buf, count * selection.record_size))
    assert len(raws) == count
    if paths is None:
        paths = [f"/cg{i}" for i in range(count)]
    return [Record(selection, t, p) for t, p in zip(raws, paths)], session, visited


def check_record(rec: Record, selection: Selection, want, path):
    cid, parent, level, flags, valid, values = want
    assert (rec.id, rec.parent_id, rec.level, rec.flags, rec.valid) == \
        (cid, parent, level, flags, valid)
    assert rec.path == path
    assert rec.has_memcg == (not flags & REC_NO_MEMCG)
    assert rec.keys() == tuple(selection.names)
    as_dict = rec.as_dict()
    assert list(as_dict) == list(selection.names)
    for i, name in enumerate(selection.names):
        assert rec.source(name) == "test"
        if (valid >> i) & 1:
            assert rec[name] == values[i]
            assert rec.get(name) == values[i]
            assert rec.get(name, -1) == values[i]
            assert name in rec
            assert as_dict[name] == values[i]
        else:
            with pytest.raises(pymemcg.StatUnavailable) as ei:
                rec[name]
            assert isinstance(ei.value, pymemcg.Error) and isinstance(ei.value, KeyError)
            assert name in str(ei.value)
            assert rec.get(name) is None
            assert rec.get(name, -1) == -1
            assert name not in rec
            assert as_dict[name] is None
    # a known stat outside the selection (if any), and names nobody knows
    outside = [n for n in ALL_NAMES if n not in selection.index][:1]
    for unknown in outside + ["no_such_stat", ""]:
        with pytest.raises(pymemcg.UnknownStat) as ei:
            rec[unknown]
        assert isinstance(ei.value, pymemcg.Error) and isinstance(ei.value, KeyError)
        assert rec.get(unknown) is None
        assert rec.get(unknown, 7) == 7
        assert unknown not in rec


# --------------------------------------------------------------------------
# the format itself

def raw_tuple(cid, parent, level, flags, valid, values):
    """The tuple struct unpacks a record into, built by hand (header order of memcg_record.h)."""
    return (cid, parent, 0, level, flags, valid & (2**64 - 1), valid >> 64, *values)


def test_formats_follow_the_c_header():
    """What record_format.py's struct formats pack, C reads field by field as the same
    values (struct pmc_record and pmc_trailer of bpf_src/memcg_record.h,
    through cffi): every field at the compiler's offset and size."""
    from pymemcg.binding import load
    ffi, lib = load()
    buf = bytearray(HEADER.pack(1, 2, 3, 4, 5, 6, 7))
    rec = ffi.cast("struct pmc_record *", ffi.from_buffer(buf))
    assert (rec.cgroup_id, rec.parent_id, rec.name_hash, rec.level, rec.flags,
            rec.valid[0], rec.valid[1]) == (1, 2, 3, 4, 5, 6, 7)
    assert HEADER.size == ffi.sizeof("struct pmc_record")
    selection = bytes(range(1, 33))
    buf = bytearray(TRAILER.pack(selection, TRAILER_MAGIC, 8, 9))
    t = ffi.cast("struct pmc_trailer *", ffi.from_buffer(buf))
    assert ffi.buffer(t.selection)[:] == selection
    assert (t.magic, t.session_id, t.visited) == (TRAILER_MAGIC, 8, 9)
    assert TRAILER.size == ffi.sizeof("struct pmc_trailer")
    assert MAX_STATS == lib.PMC_MAX_STATS
    names = ALL_NAMES + FAKE_NAMES
    for n in (0, 1, 14, 64, 65, MAX_STATS):
        assert Selection(names[:n]).record_size == ffi.sizeof("struct pmc_record") + 8 * n
    assert TRAILER_MAGIC == int.from_bytes(b"PMMCMG1", "little")  # bytes in memory order


def test_encode_is_little_endian():
    selection = Selection(["anon", "file"])
    raw = encode_record(selection, 1, 2, 3, REC_NO_VMSTATS, 0b10, [5, 6], name_hash=4)
    assert raw == struct.pack("<QQQII" + "Q" * (MAX_STATS // 64) + "QQ", 1, 2, 4, 3,
                              REC_NO_VMSTATS, 0b10, *[0] * (MAX_STATS // 64 - 1), 5, 6)
    assert encode_trailer(9, 10) == struct.pack("<32sQQQ", SEL, TRAILER_MAGIC, 9, 10)
    digest = bytes(range(32))
    assert encode_trailer(9, 10, digest) == digest + struct.pack("<QQQ", TRAILER_MAGIC, 9, 10)


def test_selection_index_and_sources():
    selection = Selection(["file", "anon"], {"anon": "table"})
    assert selection.names == ("file", "anon")
    assert selection.index == {"file": 0, "anon": 1}
    rec = Record(selection, raw_tuple(1, 0, 0, 0, 0b11, [10, 20]), "/")
    assert rec["file"] == 10 and rec["anon"] == 20
    assert rec.source("anon") == "table" and rec.source("file") == ""


def test_too_many_names():
    names = ALL_NAMES + FAKE_NAMES
    with pytest.raises(pymemcg.MalformedData, match=f"{MAX_STATS + 1} stats selected"):
        Selection(names[:MAX_STATS + 1])
    with pytest.raises(pymemcg.MalformedData):
        Selection(names)
    Selection(names[:MAX_STATS])  # exactly MAX_STATS fit


@settings(max_examples=25, deadline=None)
@given(st.integers(MAX_STATS + 1, MAX_STATS + 64), st.randoms(use_true_random=False))
def test_too_many_names_hypothesis(n, rnd):
    names = (ALL_NAMES + FAKE_NAMES)[:n]
    rnd.shuffle(names)
    with pytest.raises(pymemcg.MalformedData):
        Selection(names)


def test_full_width_record_round_trips():
    # MAX_STATS names: every valid bit, including the top one of the last word
    names = (ALL_NAMES + FAKE_NAMES)[:MAX_STATS]
    selection = Selection(names)
    valid = (1 << (MAX_STATS - 1)) | (1 << 64) | (1 << 63) | 1
    values = list(range(100, 100 + MAX_STATS))
    buf = encode_record(selection, 7, 3, 2, 0, valid, values) + encode_trailer(1, 1)
    count, _, _ = parse_trailer(buf, len(buf), selection.record_size, SEL)
    (t,) = iter_records(selection, buf, count * selection.record_size)
    rec = Record(selection, t, "/x")
    assert rec.valid == valid
    for i, n in enumerate(names):
        assert rec.get(n) == (values[i] if (valid >> i) & 1 else None)
    assert rec[names[-1]] == values[-1] and rec[names[64]] == values[64]
    with pytest.raises(pymemcg.StatUnavailable):
        rec[names[65]]


def test_unavailable_message_names_the_source():
    selection = Selection(["anon", "file"], {"file": "unavailable: not in v2 memory.stat"})
    rec = Record(selection, raw_tuple(5, 1, 1, 0, 0b01, [1, 2]), "/a")
    with pytest.raises(pymemcg.StatUnavailable, match="file is unavailable for /a: "
                                                      "unavailable: not in v2 memory.stat"):
        rec["file"]
    with pytest.raises(pymemcg.UnknownStat, match="'pgfault' is not in this reader's selection"):
        rec["pgfault"]


@pytest.mark.parametrize("packed", [False, True], ids=["tuples", "packed"])
def test_a_column_outside_the_selection_is_unknown_stat(packed):
    # as Record["nope"] raises: UnknownStat (a KeyError too) naming the remedy
    selection = Selection(["anon", "file"])
    data = encode_record(selection, 1, 0, 0, 0, 0b11, [1, 2])
    raw = PackedRecords(selection, data) if packed else [selection.record.unpack(data)]
    snap = Snapshot("/", selection, raw, ["/"])
    for call in (lambda: snap.column("nope"), lambda: snap.columns(["anon", "nope"]),
                 lambda: snap.records[0]["nope"]):
        with pytest.raises(pymemcg.UnknownStat, match="'nope' is not in this reader's "
                                                      "selection.*add it to stats="):
            call()
    assert snap.column("file") == [2] and list(snap.columns(["anon"])["anon"]) == [1]


def test_valid_bits_past_the_selection_are_ignored():
    selection = Selection(["anon"])
    rec = Record(selection, raw_tuple(1, 0, 0, 0, 2**MAX_STATS - 1, [3]), None)
    assert rec.as_dict() == {"anon": 3}
    assert rec["anon"] == 3
    assert "file" not in rec


# --------------------------------------------------------------------------
# round trips

@FAST
@given(encoded())
def test_round_trip(case):
    selection, recs, session, visited, buf = case
    assert len(buf) == len(recs) * selection.record_size + TRAILER.size
    out, s, v = decode_all(selection, buf, len(buf))
    assert (s, v) == (session, visited)
    assert len(out) == len(recs)
    for i, (rec, want) in enumerate(zip(out, recs)):
        check_record(rec, selection, want, f"/cg{i}")


@FAST
@given(encoded(), st.binary(max_size=200), st.sampled_from([bytes, bytearray, memoryview]))
def test_round_trip_in_a_larger_buffer(case, junk, kind):
    # the reader decodes the first n bytes of a reused buffer: what follows must not matter
    selection, recs, session, visited, buf = case
    big = kind(buf + junk)
    out, s, v = decode_all(selection, big, len(buf))
    assert (s, v) == (session, visited)
    assert len(out) == len(recs)
    for i, (rec, want) in enumerate(zip(out, recs)):
        check_record(rec, selection, want, f"/cg{i}")


@FAST
@given(encoded(unique_ids=True))
def test_snapshot(case):
    selection, recs, session, visited, buf = case
    paths = ["/"] + [f"/g{i}" for i in range(1, len(recs))]
    out, _, _ = decode_all(selection, buf, len(buf), paths)
    snap = Snapshot.from_records("/", out)
    lazy = Snapshot("/", selection, [r._t for r in out], [r.path for r in out])
    assert lazy.records == out and list(lazy) == list(snap)
    for i, name in enumerate(selection.names):
        assert lazy.column(name) == [r.get(name) for r in out]
    assert snap.root == "/"
    assert len(snap) == len(recs)
    assert list(snap) == paths[:len(recs)]
    assert snap.records == out
    for path, rec, want in zip(paths, out, recs):
        assert snap[path] is rec
        assert path in snap
        assert snap.by_id(want[0]) is rec
        check_record(snap[path], selection, want, path)
    with pytest.raises(KeyError):
        snap["/no/such/group"]
    missing = next(i for i in range(len(recs) + 1) if i not in {w[0] for w in recs})
    with pytest.raises(KeyError):
        snap.by_id(missing)
    assert dict(snap.items()) == dict(zip(paths, out))


@FAST
@given(encoded(unique_ids=True), st.booleans())
def test_packed_snapshot_reads_as_the_tuples_do(case, uniform):
    # the BPF backend's snapshots read columns straight out of the kernel's
    # bytes: every view of them must match the unpacked tuples, whether or
    # not all records have the same valid bits (uniform forces that they do)
    selection, recs, session, visited, buf = case
    assert PackedRecords.supported(selection)
    rs = selection.record_size
    tuples = [selection.record.unpack_from(buf, i * rs) for i in range(len(recs))]
    if uniform and tuples:
        tuples = [t[:5] + tuples[0][5:7] + t[7:] for t in tuples]
    data = b"".join(selection.record.pack(*t) for t in tuples)
    packed = PackedRecords(selection, data)
    assert len(packed) == len(tuples) and list(packed) == tuples
    assert [packed[i] for i in range(-len(tuples), len(tuples))] == tuples + tuples
    assert packed[1:] == tuples[1:]
    with pytest.raises(IndexError):
        packed[len(tuples)]
    paths = ["/"] + [f"/g{i}" for i in range(1, len(tuples))]
    want = Snapshot("/", selection, tuples, paths)
    got = Snapshot("/", selection, packed, paths)
    assert got.records == want.records and list(got) == list(want)
    assert got.ids() == [t[0] for t in tuples]
    assert got.columns(selection.names) == {n: list(c) for n, c in
                                         want.columns(selection.names).items()}
    for name in selection.names:
        assert got.column(name) == want.column(name)
    for t in tuples:
        assert got.by_id(t[0]) == want.by_id(t[0])
    # a column compared in place against its bytes: equal, and unequal once
    # any record's word differs or the count does
    for word in range(3):
        column = packed.word_bytes(word)
        assert packed.word_equals(word, column)
        assert not packed.word_equals(word, column + bytes(8))
        if tuples:
            changed = bytearray(column)
            changed[-8] ^= 1
            assert not packed.word_equals(word, bytes(changed))
    with pytest.raises(pymemcg.MalformedData):
        PackedRecords(selection, data + b"x")


@FAST
@given(encoded(min_records=1))
def test_record_equality(case):
    selection, recs, _, _, buf = case
    a, _, _ = decode_all(selection, buf, len(buf))
    b, _, _ = decode_all(selection, bytearray(buf), len(buf))
    elsewhere, _, _ = decode_all(selection, buf, len(buf), ["/elsewhere"] * len(a))
    for x, y, z in zip(a, b, elsewhere):
        assert x == y           # same bytes, same path: equal, whatever the buffer type
        assert x != z           # same bytes, another path
        assert x.__eq__(object()) is NotImplemented
    with pytest.raises(TypeError):
        hash(a[0])


# --------------------------------------------------------------------------
# bad buffers: MalformedData or a consistent answer, never anything else

def decode_or_malformed(selection, buf, nbytes):
    """Decode and touch every field; None if MalformedData, else the records."""
    try:
        count, session, visited = parse_trailer(buf, nbytes, selection.record_size, SEL)
    except pymemcg.MalformedData:
        return None
    assert count * selection.record_size + TRAILER.size == nbytes
    assert 0 <= session < 2**64 and 0 <= visited < 2**64
    raws = list(iter_records(selection, buf, count * selection.record_size))
    assert len(raws) == count
    out = []
    for t in raws:
        rec = Record(selection, t, None)
        rec.as_dict()
        repr(rec)
        for name in selection.names:
            try:
                rec[name]
            except pymemcg.StatUnavailable:
                pass
        out.append(rec)
    return out


@FAST
@given(encoded(), st.data())
def test_truncated(case, data):
    selection, recs, session, visited, buf = case
    cut = data.draw(st.integers(1, len(buf)), label="cut")
    short = buf[:-cut]
    out = decode_or_malformed(selection, short, len(short))
    if cut % selection.record_size:
        assert out is None  # sizes no longer add up
    # a cut of whole records moves the trailer window into record data: only a value that
    # happens to equal the magic could pass, and then the answer is still self-consistent


@FAST
@given(encoded(), st.data())
def test_truncated_nbytes_of_a_whole_buffer(case, data):
    # the reader's pattern: a full buffer, fewer bytes reported
    selection, recs, session, visited, buf = case
    n = data.draw(st.integers(0, len(buf) - 1), label="nbytes")
    decode_or_malformed(selection, buf, n)


@FAST
@given(encoded(), U64)
def test_wrong_magic(case, magic):
    assume(magic != TRAILER_MAGIC)
    selection, recs, session, visited, buf = case
    bad = buf[:-TRAILER.size] + TRAILER.pack(SEL, magic, session, visited)
    with pytest.raises(pymemcg.MalformedData, match="without the trailer"):
        parse_trailer(bad, len(bad), selection.record_size, SEL)


@FAST
@given(encoded(), st.integers(0, 39), st.integers(1, 255))
def test_corrupt_selection_or_magic_byte(case, byte, xor):
    # bytes 0-31 of the trailer are the selection, 32-39 the magic: records of
    # another selection are never decoded as this one
    selection, recs, session, visited, buf = case
    bad = bytearray(buf)
    bad[len(buf) - TRAILER.size + byte] ^= xor
    error = pymemcg.SelectionMismatch if byte < 32 else pymemcg.MalformedData
    with pytest.raises(error, match="do it this way" if byte < 32 else None):
        parse_trailer(bad, len(bad), selection.record_size, SEL, "do it this way")


@FAST
@given(encoded(), st.binary(min_size=1, max_size=64))
def test_extra_bytes_after_the_trailer(case, extra):
    selection, recs, session, visited, buf = case
    longer = buf + extra
    out = decode_or_malformed(selection, longer, len(longer))
    if len(extra) % selection.record_size:
        assert out is None


@FAST
@given(selections, st.binary(max_size=2048))
def test_random_bytes(names, data):
    selection = Selection(names)
    decode_or_malformed(selection, data, len(data))


@FAST
@given(selections, st.data())
def test_random_bytes_with_a_trailer(names, data):
    # random record bytes, of a valid size, behind a real trailer: always decodes
    selection = Selection(names)
    count = data.draw(st.integers(0, 6), label="count")
    body = data.draw(st.binary(min_size=count * selection.record_size,
                               max_size=count * selection.record_size), label="body")
    buf = body + encode_trailer(1, count)
    out = decode_or_malformed(selection, buf, len(buf))
    assert out is not None and len(out) == count


@FAST
@given(selections, st.integers(0, 4), st.integers(1, 400))
def test_iter_records_partial(names, whole, extra):
    selection = Selection(names)
    assume(extra % selection.record_size)
    n = whole * selection.record_size + extra
    with pytest.raises(pymemcg.MalformedData, match="not whole"):
        iter_records(selection, bytes(n), n)


@pytest.mark.parametrize("nbytes", [0, 1, TRAILER.size - 1])
def test_shorter_than_a_trailer(nbytes):
    selection = Selection(["anon"])
    with pytest.raises(pymemcg.MalformedData, match="not whole"):
        parse_trailer(bytes(64), nbytes, selection.record_size, SEL)


def test_trailer_only_is_zero_records():
    selection = Selection(["anon", "file"])
    buf = encode_trailer(42, 0)
    assert parse_trailer(buf, len(buf), selection.record_size, SEL) == (0, 42, 0)
    assert list(iter_records(selection, buf, 0)) == []


def test_selection_digest_covers_order_local_and_program():
    base = selection_digest(["anon", "file", "usage"], False, False)
    assert len(base) == 32
    assert base == selection_digest(("anon", "file", "usage"), False, False)
    others = [selection_digest(["usage", "file", "anon"], False, False),
              selection_digest(["anon", "file", "usage"], True, False),
              selection_digest(["anon", "file", "usage"], False, True),
              selection_digest(["anon", "file"], False, False),
              selection_digest(["anon", "fileusage"], False, False)]
    assert len({base, *others}) == 1 + len(others)


# --------------------------------------------------------------------------
# limits and protections: the kernel's PAGE_COUNTER_MAX reads as pymemcg.MAX

@pytest.mark.parametrize("packed", [False, True], ids=["tuples", "packed"])
def test_a_limit_not_set_reads_as_max(packed):
    from pymemcg.decode import RAW_MAX
    names = ["limit", "memory_high", "anon", "soft_limit"]
    selection = Selection(names)
    rows = [[RAW_MAX, 64 << 20, RAW_MAX, RAW_MAX],   # anon is no limit: its value stays
            [1 << 30, RAW_MAX, 5, 32 << 20]]
    data = b"".join(encode_record(selection, i + 1, 0, 0, 0, 0b1111, row)
                    for i, row in enumerate(rows))
    raw = PackedRecords(selection, data) if packed else \
        [selection.record.unpack_from(data, i * selection.record_size) for i in range(2)]
    snap = Snapshot("/", selection, raw, ["/", "/a"])
    first, second = snap.records
    assert first["limit"] is pymemcg.MAX and first.get("limit") is pymemcg.MAX
    assert first["anon"] == RAW_MAX and isinstance(first["anon"], int)
    assert first.as_dict() == {"limit": pymemcg.MAX, "memory_high": 64 << 20, "anon": RAW_MAX,
                               "soft_limit": pymemcg.MAX}
    assert second["memory_high"] is pymemcg.MAX and second["limit"] == 1 << 30
    assert snap.column("limit") == [pymemcg.MAX, 1 << 30]
    assert snap.column("anon") == [RAW_MAX, 5]
    cols = snap.columns(names)
    assert list(cols["memory_high"]) == [64 << 20, pymemcg.MAX]
    assert list(cols["soft_limit"]) == [pymemcg.MAX, 32 << 20]
    assert list(cols["anon"]) == [RAW_MAX, 5]
    # a limit not set stays unavailable where it was not read, never MAX
    rec = Record(selection, raw_tuple(1, 0, 0, 0, 0b1110, rows[0]), "/")
    assert rec.get("limit") is None and "limit" not in rec


@pytest.mark.parametrize("packed", [False, True], ids=["tuples", "packed"])
@pytest.mark.parametrize("limits,valid,want", [
    (("max", "max", "max"), 0b111, ("max", "max", "max")),     # no cgroup has a limit
    ((1 << 30, 2 << 30, 4096), 0b111, (1 << 30, 2 << 30, 4096)),
    (("max", 1 << 30, "max"), 0b111, ("max", 1 << 30, "max")),
    (("max", "max", "max"), 0b101, ("max", None, "max")),       # one unread: None, not MAX
])
def test_a_limit_column_whole_or_mixed(packed, limits, valid, want):
    from pymemcg.decode import RAW_MAX
    selection = Selection(["limit", "anon"])
    rows = [[RAW_MAX if v == "max" else v, 7] for v in limits]
    data = b"".join(encode_record(selection, i + 1, 0, 0, 0,
                                  0b11 if (valid >> i) & 1 else 0b10, row)
                    for i, row in enumerate(rows))
    raw = PackedRecords(selection, data) if packed else \
        [selection.record.unpack_from(data, i * selection.record_size) for i in range(3)]
    snap = Snapshot("/", selection, raw, ["/", "/a", "/b"])
    expected = [pymemcg.MAX if w == "max" else w for w in want]
    for column in (snap.column("limit"), list(snap.columns(["anon", "limit"])["limit"])):
        assert column == expected
        assert [v is pymemcg.MAX for v in column] == [w == "max" for w in want]
    assert snap.column("anon") == [7, 7, 7]


def test_max_compares_above_every_int_and_prints_as_max():
    from pymemcg.decode import RAW_MAX, json_value
    assert pymemcg.MAX > 2**64 and pymemcg.MAX > RAW_MAX and not pymemcg.MAX < 0
    assert pymemcg.MAX == float("inf") and (4096 / pymemcg.MAX) == 0.0
    assert str(pymemcg.MAX) == "max" and repr(pymemcg.MAX) == "pymemcg.MAX"
    assert json_value(pymemcg.MAX) == "max" and json_value(7) == 7 and json_value(None) is None
    import copy
    import pickle
    assert pickle.loads(pickle.dumps(pymemcg.MAX)) is pymemcg.MAX
    assert copy.deepcopy(pymemcg.MAX) is pymemcg.MAX
    # which stats are limits or protections
    assert catalog.TUNABLES == {"limit", "swap_limit", "memsw_limit", "memory_min", "memory_low",
                                "memory_high", "swap_high", "zswap_max", "soft_limit"}


def test_the_catalog_fits_one_record():
    """Every stat in one selection (`--stats all`, verify's readers) fits the
    record's PMC_MAX_STATS values."""
    assert len(catalog.STATS) <= MAX_STATS
    Selection(list(catalog.STATS))
