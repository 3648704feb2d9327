"""Cgroup names are bytes: every output carries any name losslessly, as valid
UTF-8, one text per name (pymemcg.names).

The rule is checked over arbitrary bytes (hypothesis), through
prometheus_client's text parser, then on real cgroups whose names hold
bytes that are not UTF-8, quotes, backslashes, control characters and pairs
that a naive rule would merge: the exporter, OpenTelemetry attributes and
`pymemcg snapshot` / `watch` / `top` must give each back. A real Prometheus
reads them in tests/test_prometheus_server.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import urllib.parse

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pymemcg
from pymemcg.errors import MalformedName
from pymemcg.exposition import label_pairs
from pymemcg.names import escape, unescape, unescape_path

from conftest import require_module

prometheus_client = require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from test_prometheus import rel, scrape_both  # noqa: E402
from pymemcg.prometheus import MemcgCollector  # noqa: E402

ENV = {**os.environ, "PYMEMCG_REQUIRE_BPF": "1"}

# what a directory name can hold: any byte but "/" and NUL
NAME_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# --- the rule ---

@settings(max_examples=1000, deadline=None)
@given(NAME_BYTES)
@example(b"a\xff")
@example(b"a%FF")
@example(b"a\\xff")
@example(b"\xed\xa0\x80")        # an encoded surrogate is not UTF-8
@example(b"\xc2\x9b[31m")        # a C1 control (CSI) in valid UTF-8
@example("a\u2028b\u2029c".encode())  # line and paragraph separators
def test_escape_round_trips_every_name(name):
    text = escape(name)
    assert unescape(text) == name
    assert escape(os.fsdecode(name)) == text          # the str API's form, the same text
    assert unescape_path(text) == os.fsdecode(name)
    text.encode("utf-8")                              # valid UTF-8: no surrogate
    assert not CONTROL.search(text), text
    assert text.splitlines() == [text]                # no line break of any kind
    # any percent-decoder reads it back
    assert urllib.parse.unquote_to_bytes(text) == name


@settings(max_examples=500, deadline=None)
@given(NAME_BYTES, NAME_BYTES)
@example(b"a\xff", b"a%FF")
@example(b"a%FF", b"a%25FF")
@example(b"a\xff", b"a\\xff")
def test_distinct_names_never_share_a_text(a, b):
    if a != b:
        assert escape(a) != escape(b)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(
    lambda s: not CONTROL.search(s) and "%" not in s and not re.search("[\ud800-\udfff]", s)))
@example("back\\slash")
@example('q"uote')
@example("system-fsck@dev-disk-by\\x2duuid-0f3e.service")
def test_printable_utf8_without_percent_is_its_own_text(name):
    assert escape(name) == name
    assert escape(name.encode()) == name


@pytest.mark.parametrize("text", ["%", "a%4", "%41", "%ff", "%C3%BC", "tab\t", "nl\n",
                                  "\udcff", "%2", "%%"])
def test_unescape_refuses_text_the_rule_does_not_write(text):
    assert issubclass(MalformedName, pymemcg.Error) and pymemcg.MalformedName is MalformedName
    with pytest.raises(MalformedName, match="as pymemcg writes it"):
        unescape(text)


def test_a_surrogate_no_file_name_gives_is_refused():
    with pytest.raises(MalformedName, match="surrogate"):
        escape("a\ud800")


@settings(max_examples=200, deadline=None)
@given(st.lists(NAME_BYTES, min_size=1, max_size=4, unique=True))
@example([b"new\nline", b'q"uote', b"back\\slash", b"bad\xff", b"%"])
def test_label_values_read_back_through_the_text_parser(names):
    # newlines and quotes included (cgroupfs refuses "\n" at mkdir; the rule
    # and the exposition must not depend on that)
    text = "# HELP m x\n# TYPE m gauge\n" + "".join(
        f'm{{{label_pairs(["cgroup"], ["/" + escape(n)])}}} {i}\n' for i, n in enumerate(names))
    fam, = text_string_to_metric_families(text)
    assert [unescape(s.labels["cgroup"]) for s in fam.samples] == [b"/" + n for n in names]
    assert [s.value for s in fam.samples] == list(range(len(names)))


# --- real cgroups with such names ---

#: names under one parent that is itself not UTF-8; collisions of naive rules
#: paired: b"a\xff" / b"a\\xff" (backslash-hex), b"a\xff" / b"a%FF" (bare percent)
ODD = [b"bad\xffname", b"\xc3\x28", b"a\xff", b"a%FF", b"a%25FF", b"a\\xff", b'q"uote',
       b"back\\slash", b"cr\rname", b"esc\x1b[31mred", b"tab\tname", b"csi\xc2\x9b2J",
       b"\xe2\x80\xae", b"%"]


@pytest.fixture
def odd_names(cgroups):
    """({raw name: absolute path (a str, surrogateescape)}, the odd parent):
    cgroups under base/<not UTF-8>/. A newline is added where the kernel
    takes one (Linux refuses it at mkdir and rename since 5.x: EINVAL)."""
    parent = cgroups.make(os.fsdecode(b"odd\xfe"))
    made = {}
    for name in ODD + [b"new\nline"]:
        path = os.path.join(parent, os.fsdecode(name))
        try:
            os.mkdir(path)
        except OSError as e:
            if name == b"new\nline" and e.errno == 22:
                continue
            raise
        made[name] = path
    return made, parent


def raw_rel(path: str) -> bytes:
    return os.fsencode(rel(path))


def test_export_carries_every_name(bpf_ok, cgroups, odd_names):
    made, parent = odd_names
    with MemcgCollector(cgroups.base, ["anon", "pgfault"], backend="bpf",
                        min_interval=60) as collector:
        got, _ = scrape_both(collector)   # the text writer and prometheus_client agree
    want = {raw_rel(p) for p in [cgroups.base, parent, *made.values()]}
    for family, label in (("memcg_anon", "cgroup"), ("memcg_pgfault_total", "cgroup"),
                          ("container_memory_rss", "id")):
        values = [dict(k)[label] for name, k in got if name == family]
        assert len(values) == len(set(values)) == len(want), (family, values)
        assert {unescape(v) for v in values} == want, family
    # a name that is printable UTF-8 without "%" is its own label (cAdvisor's)
    labels = {dict(k)["cgroup"] for name, k in got if name == "memcg_anon"}
    assert escape(rel(made[b"back\\slash"])).endswith("/back\\slash")
    assert escape(rel(made[b"back\\slash"])) in labels


def test_otel_attributes_carry_every_name(bpf_ok, cgroups, odd_names):
    require_module("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from pymemcg.otel import MemcgInstrumentor
    made, parent = odd_names
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    inst = MemcgInstrumentor(cgroups.base, ["usage"], backend="bpf")
    inst.instrument(meter_provider=provider)
    try:
        data = reader.get_metrics_data()
    finally:
        inst.uninstrument()
        provider.shutdown()
    paths = [dict(dp.attributes)["cgroup.path"] for rm in data.resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics if m.name == "memcg.usage"
             for dp in m.data.data_points]
    for p in paths:
        p.encode("utf-8")          # what OTLP's protobuf strings must be
    want = {raw_rel(p) for p in [cgroups.base, parent, *made.values()]}
    assert len(paths) == len(set(paths)) == len(want)
    assert {unescape(p) for p in paths} == want


def run_cli(*args: str) -> str:
    """stdout of `pymemcg ARGS`, which must be valid UTF-8. PYTHONIOENCODING
    makes stdout strict, as it is in any UTF-8 locale but C.UTF-8."""
    r = subprocess.run([sys.executable, "-m", "pymemcg", *args], capture_output=True,
                       env={**ENV, "PYTHONIOENCODING": "utf-8"}, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode("utf-8")


def no_surrogates(obj) -> None:
    """Every string in parsed JSON is valid Unicode (a "\\udcff" escape is not)."""
    if isinstance(obj, str):
        obj.encode("utf-8")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            no_surrogates(k)
            no_surrogates(v)
    elif isinstance(obj, list):
        for v in obj:
            no_surrogates(v)


def check_paths(texts, made: dict, parent: str, base: str) -> None:
    want = {raw_rel(p) for p in [base, parent, *made.values()]}
    assert len(texts) == len(set(texts)) == len(want), texts
    assert {unescape(t) for t in texts} == want


def test_snapshot_formats_carry_every_name(bpf_ok, cgroups, odd_names):
    made, parent = odd_names
    base = cgroups.base
    data = json.loads(run_cli("snapshot", "--format", "json", "--stats", "anon", base))
    no_surrogates(data)
    check_paths([c["path"] for c in data["cgroups"]], made, parent, base)
    by_path = {c["path"]: c for c in data["cgroups"]}
    for name, path in made.items():    # found by the text, with the cgroup's own id
        assert by_path[escape(rel(path))]["id"] == os.stat(path).st_ino, name
    rows = list(csv.reader(io.StringIO(run_cli("snapshot", "--format", "csv", "--stats", "anon",
                                               base))))
    check_paths([row[2] for row in rows[1:]], made, parent, base)
    table = run_cli("snapshot", "--stats", "anon", base).splitlines()[2:]
    assert not CONTROL.search("".join(table))
    check_paths([re.split(r"\s{2,}", line.strip())[0] for line in table], made, parent, base)


def test_watch_and_top_carry_every_name(bpf_ok, cgroups, odd_names):
    made, parent = odd_names
    base = cgroups.base
    # per snapshot: the root too (per cgroup writes the same record objects)
    snap, = [json.loads(line) for line in
             run_cli("watch", "--count", "1", "--per", "snapshot", "--stats", "anon",
                     parent).splitlines()]
    no_surrogates(snap)
    assert unescape(snap["root"]) == os.fsencode(parent)
    assert {unescape(c["path"]) for c in snap["cgroups"]} == \
        {raw_rel(p) for p in [parent, *made.values()]}
    frame = run_cli("top", "--batch", "--iterations", "1", "--stats", "anon", base)
    assert not CONTROL.search(frame.replace("\n", ""))
    rows = [line for line in frame.splitlines()[3:] if line.strip()]
    check_paths([line.rsplit("  ", 1)[1] for line in rows], made, parent, base)


def test_a_path_read_back_from_its_text_names_the_cgroup(bpf_ok, odd_names):
    made, _ = odd_names
    with pymemcg.Reader(stats=["anon"], backend="bpf") as reader:
        for name, path in made.items():
            text = escape(path)
            assert reader.read(unescape_path(text)).id == os.stat(path).st_ino, name
