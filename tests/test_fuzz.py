"""Fuzzing what reaches pymemcg from outside the process: a session's records
and trailer, --listen, --stats, --web-config files and shared-pin metadata.
Each input gives its exact result or a pymemcg.Error subclass that names
the problem: never another exception, never numbers from corrupted bytes.

A record's values carry no checksum (the kernel writes them), so what the
decoder can and must catch is everything else: a cut or lengthened buffer,
a byte count that disagrees with the buffer, a trailer of another
selection, a wrong magic, counts that contradict the records held.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
from typing import Optional

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import pymemcg
from pymemcg import catalog, pins
from pymemcg.cli import main
from pymemcg.decode import MAX_STATS, Selection, PackedRecords
from pymemcg.prometheus import ListenError, make_server, parse_listen
from pymemcg.web_config import TLS_KEYS
from pymemcg._record_h import TRAILER_MAGIC
from pymemcg.record_format import TRAILER
from pymemcg.wire import VISITED_UNKNOWN, iter_records, parse_trailer, selection_digest, seq_budget

from conftest import require_module

# modest: the whole module runs in well under 30 s on 2 shared CPUs. The
# function-scoped fixtures (a pin, a tmp directory) are shared by a test's
# examples on purpose.
FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
U64 = st.integers(0, 2**64 - 1)
# record sizes from one stat to a full record: the session's budget runs from 30 to 584
NAMES = [f"s{i}" for i in range(MAX_STATS)]


# --------------------------------------------------------------------------
# the session decoder: parse_trailer + the records it vouches for

def decode(selection: Selection, buf, nbytes: int, expected: bytes):
    """What a reader takes from the first nbytes of a session's buffer:
    (record tuples, session id, records the walk produced)."""
    count, session, visited = parse_trailer(buf, nbytes, selection.record_size, expected)
    size = count * selection.record_size
    tuples = [tuple(t) for t in iter_records(selection, buf, size)]
    # the BPF backend keeps a tree's records as the bytes: the same tuples
    assert list(PackedRecords(selection, bytes(memoryview(buf)[:size]))) == tuples
    return tuples, session, visited


@st.composite
def sessions(draw):
    """(selection, selection digest, session bytes, what they decode to): a few
    records, or a full session whose walk spilled more into the overflow map."""
    selection = Selection(NAMES[:draw(st.integers(1, MAX_STATS), label="stats")])
    expected = selection_digest(selection.names, draw(st.booleans()), draw(st.booleans()))
    rs, budget = selection.record_size, seq_budget(selection.record_size)
    full = draw(st.booleans(), label="full")
    count = budget if full else draw(st.integers(0, 5), label="count")
    # record bytes from a seed: a full session is up to 32 KiB
    body = random.Random(draw(U64, label="seed")).randbytes(count * rs)
    visited = draw(st.sampled_from([count, VISITED_UNKNOWN]) if not full else
                   st.sampled_from([count, VISITED_UNKNOWN]) | st.integers(count + 1, 2**63))
    session = draw(U64)
    buf = body + TRAILER.pack(expected, TRAILER_MAGIC, session, visited)
    want = [selection.record.unpack_from(body, i * rs) for i in range(count)]
    return selection, expected, buf, (want, session, visited)


def consistent(visited: int, count: int, rs: int) -> bool:
    """A trailer count that the records held agree with."""
    return visited in (count, VISITED_UNKNOWN) or visited > count == seq_budget(rs)


@FUZZ
@given(sessions(), st.binary(max_size=64))
def test_a_session_decodes_exactly(case, junk):
    selection, expected, buf, want = case
    assert decode(selection, buf, len(buf), expected) == want
    # in a larger, reused buffer: what follows the session does not matter
    assert decode(selection, bytearray(buf + junk), len(buf), expected) == want


@FUZZ
@given(sessions(), st.data())
def test_a_damaged_session_is_malformed_never_other_numbers(case, data):
    selection, expected, buf, (records, session, visited) = case
    rs, t = selection.record_size, len(buf) - TRAILER.size   # t: where the trailer starts
    how = data.draw(st.sampled_from(["cut", "longer", "nbytes", "trailer byte", "visited",
                                     "selection"]), label="how")
    nbytes = len(buf)
    expect = pymemcg.MalformedData
    if how == "cut":
        buf = buf[:-data.draw(st.integers(1, len(buf)), label="cut")]
        nbytes = len(buf)
    elif how == "longer":
        buf += random.Random(data.draw(U64)).randbytes(data.draw(st.integers(1, 3 * rs)))
        nbytes = len(buf)
    elif how == "nbytes":   # the byte count disagrees with the buffer
        nbytes = data.draw(st.integers(-8, len(buf) + 3 * rs).filter(lambda n: n != len(buf)))
    elif how == "trailer byte":
        at = data.draw(st.integers(0, TRAILER.size - 1), label="at")
        buf = bytearray(buf)
        buf[t + at] ^= data.draw(st.integers(1, 255), label="xor")
        if at < 32:
            expect = pymemcg.SelectionMismatch
        elif at >= 40:      # the session id, then visited: counts are checked, ids are not
            expect = None
    elif how == "visited":
        buf = buf[:-8] + data.draw(U64, label="visited").to_bytes(8, "little")
        expect = None
    else:   # another selection's records: other stats, order or program
        other = data.draw(st.permutations(selection.names), label="order")
        local, path = data.draw(st.booleans()), data.draw(st.booleans())
        digest = selection_digest(other, local, path)
        if digest == expected:
            return
        buf = buf[:t] + digest + buf[t + 32:]
        expect = pymemcg.SelectionMismatch
    try:
        got = decode(selection, buf, nbytes, expected)
    except pymemcg.MalformedData as e:
        event(f"{how}: {type(e).__name__}")
        assert expect is None or isinstance(e, expect), (how, e)
        if expect is None:      # a changed count: refused only when the records contradict it
            assert not consistent(int.from_bytes(bytes(buf[-8:]), "little"), len(records), rs)
        return
    event(f"{how}: decoded")
    assert expect is None, f"{how}: decoded {len(got[0])} records instead of raising"
    assert got[0] == records    # never other records than the session's
    assert consistent(got[2], len(got[0]), rs)


@FUZZ
@given(st.integers(1, MAX_STATS), st.binary(max_size=4096), st.integers(-64, 4200))
def test_any_bytes_are_malformed(n, data, nbytes):
    # bytes that are not a session of this selection, at any claimed length
    selection = Selection(NAMES[:n])
    with pytest.raises(pymemcg.MalformedData):
        decode(selection, data, nbytes, selection_digest(selection.names, False, False))


# --------------------------------------------------------------------------
# --listen

PORTS = st.integers(-5, 70000).map(str) | st.text("0123456789²³٣߁+- ", max_size=7)
HOSTS = (st.sampled_from(["", "127.0.0.1", "[::1]", "::1", "::", "0.0.0.0", "localhost",
                          "[", "]", "[::1", "1.2.3.4.5", "fe80::1%lo", "a" * 64, "ü" * 64])
         | st.text(max_size=70))


@FUZZ
@given(st.text(max_size=40) | st.builds("{}:{}".format, HOSTS, PORTS))
@example(":²")
@example("a\0b:1")
@example("\udc80:9756")
def test_listen_addresses(text):
    try:
        host, port = parse_listen(text)
    except ListenError as e:
        event("refused")
        assert str(e).startswith("--listen ") and len(str(e)) < 400
        return
    digits = text.rpartition(":")[2]
    assert digits.isascii() and digits.isdigit() and type(port) is int and \
        port == int(digits) <= 65535
    # what the server binds takes it: no NUL, a name each label of which encodes
    assert "\0" not in host
    host.encode("idna")
    try:    # numeric addresses only: no name lookups from the tests
        socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                           flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE)
    except OSError:
        return
    try:    # port 0: never take a port another test may be serving on
        server = make_server(None, host, 0)
    except ListenError:
        return
    server.server_close()


# --------------------------------------------------------------------------
# --stats, through the command line (text backend: the selection is checked
# before anything is read, and a text read costs little)

STAT_WORDS = (st.sampled_from(sorted(catalog.STATS)) | st.sampled_from(["all", "", " ", "ALL"])
              | st.text(st.characters(blacklist_characters="\0"), max_size=12))


@st.composite
def stat_lists(draw):
    words = draw(st.lists(STAT_WORDS, max_size=12))
    if draw(st.booleans()):     # repeats
        words += draw(st.lists(st.sampled_from(words), max_size=200)) if words else []
    return draw(st.sampled_from([",", ", ", " ,", ",,"])).join(words)


@pytest.fixture
def empty_cgroup(cgroups):
    return cgroups.make("fuzz-stats")


@settings(FUZZ, max_examples=150)
@given(stat_lists(), st.booleans())
@example(",".join(list(catalog.STATS) * 40), False)
def test_stats_lists(empty_cgroup, text, local):
    out, err = io.StringIO(), io.StringIO()
    args = ["snapshot", empty_cgroup, "--backend", "text", "--format", "json", f"--stats={text}"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args + (["--local"] if local else []))
    event(f"exit {rc}")
    if rc == 0:
        doc = json.loads(out.getvalue())
        names = [w.strip() for w in text.split(",") if w.strip()]
        if names != ["all"]:
            assert list(doc["stats"]) == names
        return
    assert rc == 2 and out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pymemcg: ") and len(lines[0]) < 2000, \
        err.getvalue()[:300]


# --------------------------------------------------------------------------
# --web-config files

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3),
                      max_leaves=8)


@pytest.fixture
def web_files(tmp_path):
    """A certificate and key, a cheap bcrypt hash, and where to write the file."""
    require_module("yaml")
    bcrypt = require_module("bcrypt")
    from test_web_config import make_cert
    cert, key = make_cert(str(tmp_path))
    return {"cert": cert, "key": key, "path": str(tmp_path / "web-config.yml"),
            "hash": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()}


@st.composite
def web_configs(draw, files):
    """A web-config document: known keys with good, near and any values."""
    near = st.sampled_from([files["cert"], files["key"], "TLS12", "TLS13", "TLS14", "tls12",
                            "NoClientCert", "RequireAndVerifyClientCert", "RequestClientCert",
                            files["hash"], "$2b$04$short", "", "/nonexistent", "a\0b",
                            "\udc80"])
    value = near | VALUES
    tls = st.dictionaries(st.sampled_from(sorted(TLS_KEYS)) | st.text(max_size=8), value,
                          max_size=7)
    users = st.dictionaries(st.text(max_size=10) | st.sampled_from([None, 1, "\udc80", "a:b"]),
                            value, max_size=3)
    doc = draw(st.fixed_dictionaries({}, optional={"tls_server_config": tls | value,
                                                   "basic_auth_users": users | value}))
    if draw(st.booleans()):
        doc.update(draw(st.dictionaries(st.text(max_size=8) | st.integers(), value, max_size=2)))
    return doc


@FUZZ
@given(st.data())
def test_web_config_files(web_files, data):
    import yaml
    from pymemcg.web_config import WebConfig, WebConfigError, load
    kind = data.draw(st.sampled_from(["document", "text", "bytes"]), label="kind")
    doc = None
    if kind == "document":
        doc = data.draw(web_configs(web_files), label="doc")
        raw = yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    elif kind == "text":
        raw = data.draw(st.text(max_size=200), label="text").encode("utf-8", "surrogatepass")
    else:
        raw = data.draw(st.binary(max_size=200), label="bytes")
    with open(web_files["path"], "wb") as f:
        f.write(raw)
    try:
        config = load(web_files["path"])
    except WebConfigError as e:
        event("refused")
        assert str(e) and len(str(e)) < 2000
        return
    event("loaded")
    assert isinstance(config, WebConfig)
    if isinstance(doc, dict):
        assert set(doc) <= {"tls_server_config", "basic_auth_users"}
        assert (config.tls is None) == (doc.get("tls_server_config") is None)
        assert set(config.users) == set(doc.get("basic_auth_users") or {})


@pytest.mark.parametrize("text", ["[" * 5000, "- " * 3000 + "x", "{a: " * 3000 + "1" + "}" * 3000,
                                  "&a [*a]"], ids=["open", "block", "flow", "alias"])
def test_web_config_pathological_files(web_files, text):
    from pymemcg.web_config import WebConfigError, load
    with open(web_files["path"], "w") as f:
        f.write(text)
    with pytest.raises(WebConfigError):
        load(web_files["path"])


# --------------------------------------------------------------------------
# shared-pin metadata

PIN_STATS = ["anon", "file", "usage"]


@st.composite
def metadata(draw, good: dict):
    """The metadata pin() wrote, with one to three keys dropped or changed to
    near or arbitrary values; or any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    doc = dict(good)
    near = {
        "format": st.sampled_from([good["format"] + 1, good["format"] - 1,
                                   str(good["format"]), float(good["format"]), True]),
        "object": st.sampled_from(["", good["object"][:-1], 5]),
        "root": st.sampled_from([good["root"] + "/", good["root"] + "/a", "/", "relative",
                                 good["root"] + "\0", "/nonexistent", ""]),
        "cgroup_id": st.sampled_from([good["cgroup_id"] + 1, -1, 2**64, str(good["cgroup_id"]),
                                      float(good["cgroup_id"]), True, None]),
        "tree": st.sampled_from([not good["tree"], 1, "true", None]),
        "stats": st.permutations(good["stats"]) | st.lists(st.sampled_from(
            sorted(catalog.STATS)) | st.integers(), max_size=4) | st.just(["anon"] * 200),
        "local": st.sampled_from([not good["local"], 0, "false", None]),
        "sources": st.sampled_from([{}, [], {"anon": 1}, "x", None]),
        "flush": st.sampled_from([True, 1, "no"]),
    }
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(near) + ["extra"]), label="key")
        how = draw(st.sampled_from(["drop", "near", "any"]), label="how")
        if how == "drop":
            doc.pop(key, None)
        elif how == "near" and key in near:
            doc[key] = draw(near[key])
        else:
            doc[key] = draw(VALUES)
    return doc


def write_meta(meta_file: str, doc: object, raw: Optional[bytes] = None) -> None:
    """Metadata as pin() leaves it: root's, mode 0644."""
    if os.path.lexists(meta_file):
        os.unlink(meta_file)
    fd = os.open(meta_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(raw if raw is not None else json.dumps(doc).encode("utf-8", "surrogatepass"))


def check_listings(directory: str, meta_dir: str) -> None:
    """What lists and matches pins takes any metadata: an orphan, not an error."""
    infos = pins.pins(directory, meta_dir)
    assert infos and all(isinstance(i, pins.PinInfo) for i in infos)
    from pymemcg.backends.pinned import SharedPins
    assert isinstance(SharedPins(PIN_STATS, False, directory, meta_dir).index(), dict)


GOOD_DOC = {"format": 3, "object": "0" * 64, "root": "/sys/fs/cgroup/memory", "cgroup_id": 1,
            "tree": True, "stats": PIN_STATS, "local": False, "sources": {}}


@pytest.fixture
def plain_pin(tmp_path):
    """A pin that is a plain file (no BPF): only its metadata's handling is
    fuzzed. (pin directory, metadata directory, pin path)"""
    directory, meta_dir = tmp_path / "pins", tmp_path / "meta"
    for d in (directory, meta_dir):
        d.mkdir(mode=0o755)
    path = directory / "p"
    path.write_bytes(b"")
    return str(directory), str(meta_dir), str(path)


def check_metadata(directory: str, meta_dir: str, path: str) -> None:
    try:
        pins._read_meta(path, meta_dir)
        reader = pins.PinReader(path, meta_dir)
    except pymemcg.Error:
        pass
    else:
        with pytest.raises(pymemcg.Error):
            reader.read()   # a plain file's "session" is empty: no trailer
    check_listings(directory, meta_dir)


@FUZZ
@given(st.binary(max_size=200) | metadata(GOOD_DOC))
def test_pin_metadata_files(plain_pin, doc):
    directory, meta_dir, path = plain_pin
    if isinstance(doc, bytes):
        write_meta(os.path.join(meta_dir, "p.json"), None, doc)
    else:
        write_meta(os.path.join(meta_dir, "p.json"), doc)
    check_metadata(directory, meta_dir, path)


def test_pin_metadata_nested_too_deep(plain_pin):
    directory, meta_dir, path = plain_pin
    write_meta(os.path.join(meta_dir, "p.json"), None, b"[" * 100000)
    with pytest.raises(pins.PinMismatch, match="not pin metadata"):
        pins._read_meta(path, meta_dir)
    check_metadata(directory, meta_dir, path)


@pytest.fixture
def real_pin(bpf_ok, cgroups, pin_dirs):
    """A tree pin of a small subtree, and what pin() wrote about it."""
    bpffs, meta = pin_dirs
    root = cgroups.make("pinned")
    cgroups.make("pinned/a")
    info = pins.pin(root, "fuzz", PIN_STATS, directory=bpffs, meta_dir=meta)
    with open(os.path.join(meta, "fuzz.json")) as f:
        good = json.load(f)
    try:
        yield info, good
    finally:
        write_meta(info.meta, good)  # unpin removes only metadata that names its pin
        pins.unpin(info.path, meta)


@settings(FUZZ, max_examples=150)
@given(st.data())
def test_pin_metadata_of_a_real_pin(real_pin, data):
    """Metadata that misdescribes the pinned program never reads: the
    records are decoded only as the selection the program itself reports."""
    info, good = real_pin
    doc = data.draw(metadata(good), label="doc")
    write_meta(info.meta, doc)
    try:
        got = pins.PinReader(info.path, os.path.dirname(info.meta)).read()
    except pymemcg.Error as e:
        event(type(e).__name__)
    else:
        event("read")
        assert [doc.get(k) for k in ("stats", "local", "tree", "cgroup_id")] == \
            [good[k] for k in ("stats", "local", "tree", "cgroup_id")], doc
        assert isinstance(got, pymemcg.Snapshot) and got.selection.names == tuple(good["stats"])
        assert len(got) == 2
    check_listings(os.path.dirname(info.path), os.path.dirname(info.meta))
