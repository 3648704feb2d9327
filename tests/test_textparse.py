"""The memory.stat text parser (pymemcg/memory_stat.py): grammar, v1/v2 mapping, round trips.

No kernel needed except for test_real_v1_root_memory_stat, which reads this
host's cgroup v1 root memory.stat.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pymemcg
from pymemcg import catalog
from pymemcg.memory_stat import parse_flat_keyed, parse_memory_stat, v1_to_names

U64 = st.integers(min_value=0, max_value=2**64 - 1)
FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# stats v2 memory.stat prints, in catalog order
V2_NAMES = [s.name for s in catalog.STATS.values() if s.v2_key is not None]
# v1 memory.stat keys that map to stat names, in catalog order
V1_MAPPED = list(catalog.V1_KEYS)
# keys real v2 memory.stat files print that are not in the catalog: dropped by the parser
V2_EXTRA_KEYS = ["slab", "thp_split_page", "thp_split_pmd", "thp_collapse_alloc_failed",
                 "workingset_refault", "pgscan", "pgsteal"]
# keys real v1 memory.stat files print that map to no stat name
V1_EXTRA_KEYS = ["hierarchical_memory_limit", "hierarchical_memsw_limit", "workingset_refault",
                 "workingset_activate", "workingset_restore", "workingset_nodereclaim"]

V1_ROOT_STAT = "/sys/fs/cgroup/memory/memory.stat"


def _assume_disjoint():
    # the fixtures above are only meaningful if the extras do not collide with real keys
    assert not set(V2_EXTRA_KEYS) & set(catalog.STATS)
    assert not set(V1_EXTRA_KEYS) & set(V1_MAPPED)
    assert not {"total_" + k for k in V1_EXTRA_KEYS} & set(V1_MAPPED)


_assume_disjoint()


# --------------------------------------------------------------------------
# parse_flat_keyed: concrete cases

def test_flat_keyed_basic_str_and_bytes():
    text = "cache 9211904\nrss 5054464\nrss_huge 0\n"
    want = {"cache": 9211904, "rss": 5054464, "rss_huge": 0}
    assert parse_flat_keyed(text) == want
    assert parse_flat_keyed(text.encode()) == want
    assert parse_flat_keyed(bytearray(text.encode())) == want
    assert parse_flat_keyed(memoryview(text.encode())) == want


def test_flat_keyed_empty_and_blank_lines():
    assert parse_flat_keyed("") == {}
    assert parse_flat_keyed(b"") == {}
    assert parse_flat_keyed("\n\n") == {}
    assert parse_flat_keyed("a 1\n\nb 2") == {"a": 1, "b": 2}  # no final newline needed


def test_flat_keyed_large_values_and_leading_zeros():
    assert parse_flat_keyed(f"a {2**64 - 1}\n") == {"a": 2**64 - 1}
    assert parse_flat_keyed("a 007\n") == {"a": 7}


def test_flat_keyed_last_duplicate_wins():
    assert parse_flat_keyed("a 1\na 2\n") == {"a": 2}


@pytest.mark.parametrize("text, lineno", [
    ("a 1\nb\n", 2),                    # no value
    ("a 1\nb 2\nc 3 4\n", 3),           # two values
    ("a  1\n", 1),                      # two spaces
    (" 1\n", 1),                        # empty key
    ("a 1 \n", 1),                      # trailing space
    ("a\t1\n", 1),                      # tab, not space
    ("a 1\nb -1\n", 2),                 # negative
    ("a +1\n", 1),                      # sign
    ("a 1.5\n", 1),                     # not an integer
    ("a 0x10\n", 1),                    # not decimal
    ("a 1_000\n", 1),                   # int() would take it; the grammar does not
    ("a \n", 1),                        # empty value
    ("x 1\ny 2\nz 3\nw four\n", 4),
    ("a 1\r\n", 1),                     # CRLF: '1\r' is not a number
    ("a \u00b2\n", 1),                  # str.isdigit() is true for superscript two
    ("a \u0661\n", 1),                  # ARABIC-INDIC DIGIT ONE: isdigit(), not ASCII
])
def test_flat_keyed_malformed_names_the_line(text, lineno):
    with pytest.raises(pymemcg.MalformedData) as ei:
        parse_flat_keyed(text, "memory.stat")
    assert isinstance(ei.value, pymemcg.Error)
    assert f"line {lineno}:" in str(ei.value)
    assert str(ei.value).startswith("memory.stat ")
    # the same through bytes, where ASCII
    if text.isascii():
        with pytest.raises(pymemcg.MalformedData, match=f"line {lineno}:"):
            parse_flat_keyed(text.encode(), "memory.stat")


def test_flat_keyed_malformed_message_names_the_file():
    with pytest.raises(pymemcg.MalformedData, match=r"^memory\.events line 3: "):
        parse_flat_keyed("low 0\nhigh 0\nmax\n", "memory.events")


@pytest.mark.parametrize("data, pos", [
    (b"a 1\n\xff 2\n", 4),
    (b"\x80", 0),
    ("caf\u00e9 1\n".encode("utf-8"), 3),   # valid UTF-8, not ASCII
])
def test_flat_keyed_non_ascii_bytes(data, pos):
    with pytest.raises(pymemcg.MalformedData, match=f"not ASCII text at byte {pos}"):
        parse_flat_keyed(data)


def test_flat_keyed_huge_digit_string_is_malformed_data():
    text = "a " + "1" * 5000 + "\n"
    # either a value or MalformedData is acceptable; any other exception is a bug
    try:
        parse_flat_keyed(text)
    except pymemcg.MalformedData:
        pass


# --------------------------------------------------------------------------
# parse_flat_keyed: against a reference grammar

_LINE = re.compile(r"([\x21-\x7e]+) ([0-9]{1,20})")


def reference_flat_keyed(text: str):
    """The documented grammar: blank lines skipped, else 'key value': a printable-ASCII key
    and a u64 in ASCII digits."""
    out = {}
    for line in text.split("\n"):
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if m is None or int(m.group(2)) >= 2**64:
            return None
        out[m.group(1)] = int(m.group(2))
    return out


# text drawn from the characters that matter to the grammar, so that both
# valid and nearly-valid inputs come up often
grammar_text = st.text(alphabet=st.sampled_from(list("ab_ 0123456789\n-+\t\r.\u00b2")),
                       max_size=80)


@FAST
@given(grammar_text)
def test_flat_keyed_matches_reference_grammar(text):
    want = reference_flat_keyed(text)
    if want is None:
        with pytest.raises(pymemcg.MalformedData):
            parse_flat_keyed(text)
    else:
        assert parse_flat_keyed(text) == want
        if text.isascii():
            assert parse_flat_keyed(text.encode("ascii")) == want


@FAST
@given(st.text())
def test_flat_keyed_arbitrary_text_parses_or_malformed(text):
    try:
        out = parse_flat_keyed(text)
    except pymemcg.MalformedData:
        return
    assert all(isinstance(k, str) and k and isinstance(v, int) and v >= 0
               for k, v in out.items())


@FAST
@given(st.binary())
def test_flat_keyed_arbitrary_bytes_parses_or_malformed(data):
    try:
        out = parse_flat_keyed(data)
    except pymemcg.MalformedData:
        return
    assert data.isascii()
    assert out == reference_flat_keyed(data.decode("ascii"))


@FAST
@given(st.one_of(st.text(), st.binary(), grammar_text), st.sampled_from([1, 2]), st.booleans())
def test_memory_stat_arbitrary_input_parses_or_malformed(text, version, local):
    try:
        out = parse_memory_stat(text, version, local)
    except pymemcg.MalformedData:
        return
    assert set(out) <= set(catalog.STATS)
    if version == 2 and local:
        assert out == {}


# --------------------------------------------------------------------------
# parse_memory_stat: concrete v1 / v2

V1_SAMPLE = """\
cache 100
rss 200
rss_huge 300
shmem 400
mapped_file 500
dirty 600
writeback 700
pgfault 800
hierarchical_memory_limit 9223372036854771712
total_cache 1100
total_rss 1200
total_rss_huge 1300
total_shmem 1400
total_mapped_file 1500
total_dirty 1600
total_writeback 1700
total_pgfault 1800
"""


def test_v1_hierarchical_uses_total_keys():
    out = parse_memory_stat(V1_SAMPLE, 1, local=False)
    assert out == {"file": 1100, "anon": 1200, "anon_thp": 1300, "shmem": 1400,
                   "file_mapped": 1500, "file_dirty": 1600, "file_writeback": 1700,
                   "pgfault": 1800}


def test_v1_local_uses_plain_keys():
    out = parse_memory_stat(V1_SAMPLE, 1, local=True)
    assert out == {"file": 100, "anon": 200, "anon_thp": 300, "shmem": 400,
                   "file_mapped": 500, "file_dirty": 600, "file_writeback": 700,
                   "pgfault": 800}


def test_v1_mapping_table():
    # the renames the docs promise
    for v1_key, name in [("cache", "file"), ("rss", "anon"), ("mapped_file", "file_mapped"),
                         ("dirty", "file_dirty"), ("writeback", "file_writeback"),
                         ("rss_huge", "anon_thp")]:
        assert catalog.V1_KEYS[v1_key] == name
        assert parse_memory_stat(f"{v1_key} 5\n", 1, local=True) == {name: 5}
        assert parse_memory_stat(f"total_{v1_key} 6\n", 1, local=False) == {name: 6}
        assert parse_memory_stat(f"{v1_key} 5\n", 1, local=False) == {}
        assert parse_memory_stat(f"total_{v1_key} 6\n", 1, local=True) == {}


def test_v1_default_is_hierarchical():
    assert parse_memory_stat(V1_SAMPLE, 1) == parse_memory_stat(V1_SAMPLE, 1, local=False)


def test_v1_malformed_raises():
    with pytest.raises(pymemcg.MalformedData, match="line 2:"):
        parse_memory_stat("cache 1\nrss x\n", 1)


def test_v2_filters_to_catalog():
    text = "anon 1\nfile 2\nslab 3\nthp_split_page 4\npgfault 5\n"
    assert parse_memory_stat(text, 2) == {"anon": 1, "file": 2, "pgfault": 5}
    assert parse_memory_stat(text.encode(), 2, local=False) == {"anon": 1, "file": 2,
                                                                "pgfault": 5}


def test_v2_local_is_empty():
    assert parse_memory_stat("anon 1\nfile 2\n", 2, local=True) == {}


def test_v2_local_still_validates():
    with pytest.raises(pymemcg.MalformedData, match="line 1:"):
        parse_memory_stat("anon -1\n", 2, local=True)


# --------------------------------------------------------------------------
# round trips

def render(pairs) -> str:
    return "".join(f"{k} {v}\n" for k, v in pairs)


@st.composite
def v2_stat_dicts(draw):
    names = draw(st.lists(st.sampled_from(V2_NAMES), unique=True))
    return {n: draw(U64) for n in names}


@FAST
@given(v2_stat_dicts(),
       st.dictionaries(st.sampled_from(V2_EXTRA_KEYS), U64),
       st.booleans())
def test_v2_round_trip(stats, extras, as_bytes):
    # catalog order, as the kernel prints; the extras at the end
    pairs = [(n, stats[n]) for n in V2_NAMES if n in stats] + list(extras.items())
    text = render(pairs)
    data = text.encode("ascii") if as_bytes else text
    assert parse_memory_stat(data, 2, local=False) == stats
    assert parse_memory_stat(data, 2, local=True) == {}
    assert parse_flat_keyed(data) == {**stats, **extras}


@st.composite
def v1_stat_dicts(draw):
    keys = draw(st.lists(st.sampled_from(V1_MAPPED), unique=True))
    return {k: draw(U64) for k in keys}


@FAST
@given(v1_stat_dicts(), v1_stat_dicts(),
       st.dictionaries(st.sampled_from(V1_EXTRA_KEYS), U64),
       st.booleans())
def test_v1_round_trip(local_raw, total_raw, extras, as_bytes):
    # plain keys first, then the v1-only extras, then the total_ keys (kernel order)
    pairs = [(k, local_raw[k]) for k in V1_MAPPED if k in local_raw]
    pairs += list(extras.items())
    pairs += [("total_" + k, total_raw[k]) for k in V1_MAPPED if k in total_raw]
    pairs += [("total_" + k, v) for k, v in extras.items()
              if not k.startswith("hierarchical_")]
    text = render(pairs)
    data = text.encode("ascii") if as_bytes else text

    want_local = {catalog.V1_KEYS[k]: v for k, v in local_raw.items()}
    want_total = {catalog.V1_KEYS[k]: v for k, v in total_raw.items()}
    assert parse_memory_stat(data, 1, local=True) == want_local
    assert parse_memory_stat(data, 1, local=False) == want_total
    # and the mapping step alone
    raw = parse_flat_keyed(data)
    assert v1_to_names(raw, True) == want_local
    assert v1_to_names(raw, False) == want_total


# --------------------------------------------------------------------------
# this host's real file

@pytest.mark.skipif(not os.path.exists(V1_ROOT_STAT), reason="no cgroup v1 memory hierarchy")
def test_real_v1_root_memory_stat():
    with open(V1_ROOT_STAT, "rb") as f:
        data = f.read()
    raw = parse_flat_keyed(data)
    assert "cache" in raw and "rss" in raw
    for local in (False, True):
        out = parse_memory_stat(data, 1, local=local)
        assert "file" in out and "anon" in out, (local, out)
        assert set(out) <= set(catalog.STATS)
        assert all(isinstance(v, int) and v >= 0 for v in out.values())
        # the same text as str
        assert parse_memory_stat(data.decode("ascii"), 1, local=local) == out
    local = parse_memory_stat(data, 1, local=True)
    total = parse_memory_stat(data, 1, local=False)
    assert local["file"] == raw["cache"] and total["file"] == raw["total_cache"]
    assert local["anon"] == raw["rss"] and total["anon"] == raw["total_rss"]


# --------------------------------------------------------------------------
# limits, protections, cgroup.stat, events: which file serves what

def test_text_sources_of_the_limits_and_counts():
    from pymemcg.memory_stat import text_availability as avail
    assert avail("soft_limit", 1, False) == (True, "memory.soft_limit_in_bytes")
    assert avail("memsw_limit", 1, False) == (True, "memory.memsw.limit_in_bytes")
    assert avail("memory_min", 2, False) == (True, "memory.min")
    assert avail("oom_group", 2, True) == (True, "memory.oom.group")  # one value: local too
    assert avail("memory_high", 1, False)[0] is False
    assert avail("nr_descendants", 2, True) == (True, "cgroup.stat")
    assert avail("nr_dying_descendants", 1, False) == \
        (False, "no cgroup v1 file (cgroup.stat is cgroup v2's)")
    assert avail("zswap_current", 2, False) == (True, "memory.zswap.current")
    assert avail("zswap_current", 2, True)[0] is False   # the subtree's value only
    assert avail("sock_throttled", 2, False) == (True, "memory.events")
    assert avail("sock_throttled", 2, True) == (True, "memory.events.local")


def test_local_swap_events_have_no_file():
    """The kernel counts a cgroup's own swap events (memory_events_local[],
    which BPF reads) but prints only the hierarchical memory.swap.events:
    local text reads must not serve those as the cgroup's own."""
    from pymemcg.memory_stat import text_availability as avail
    for name in ("swap_high_events", "swap_max_events", "swap_fail_events"):
        assert avail(name, 2, False) == (True, "memory.swap.events")
        ok, why = avail(name, 2, True)
        assert not ok and "memory.swap.events.local" in why


def test_text_backend_reads_local_swap_events_from_no_file(tmp_path):
    """A local text read of a v2 cgroup directory (files written here) serves
    memory.events.local and leaves the swap events unavailable, whatever the
    hierarchical memory.swap.events says; "max" reads as pymemcg.MAX."""
    from pymemcg.backends.text import TextBackend
    files = {"memory.stat": "anon 4096\n", "memory.events.local": "low 0\nhigh 3\nmax 1\n",
             "memory.events": "low 0\nhigh 9\nmax 4\n", "memory.swap.events": "high 0\nmax 7\nfail 2\n",
             "memory.max": "max\n", "memory.high": "1048576\n", "cgroup.stat":
             "nr_descendants 2\nnr_dying_descendants 1\nnr_subsys_memory 3\n",
             "memory.zswap.current": "8192\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    names = ["high", "max", "swap_max_events", "limit", "memory_high", "nr_descendants",
             "nr_dying_descendants", "zswap_current"]
    local = TextBackend(names, True, 2).values(str(tmp_path))
    assert local["high"] == 3 and local["max"] == 1 and "swap_max_events" not in local
    assert "zswap_current" not in local
    hier = TextBackend(names, False, 2).values(str(tmp_path))
    assert hier["high"] == 9 and hier["swap_max_events"] == 7 and hier["zswap_current"] == 8192
    from pymemcg.decode import RAW_MAX
    assert hier["limit"] == RAW_MAX and hier["memory_high"] == 1 << 20
    assert (hier["nr_descendants"], hier["nr_dying_descendants"]) == (2, 1)
