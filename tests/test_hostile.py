"""Bad input: fuzzing what tests/test_textparse.py and
tests/test_decode.py do not cover, and hostile paths for Reader.read and
Reader.read_tree on both backends. Each gives a pymemcg.Error subclass or a
correct result, and leaves nothing behind."""

from __future__ import annotations

import gc
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pymemcg
from pymemcg.cgroupfs import memory_mount
from pymemcg.decode import Selection
from pymemcg._record_h import TRAILER_MAGIC
from pymemcg.record_format import TRAILER
from pymemcg.wire import VISITED_UNKNOWN, iter_records, parse_trailer, seq_budget
from pymemcg.memory_stat import parse_flat_keyed, parse_memory_stat

from conftest import my_links, open_fds

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUFFERS = st.sampled_from([bytes, bytearray, memoryview])
STATS = ["usage", "limit", "anon"]
SEL = bytes(32)  # the selection the fuzzed trailers are checked against


# --------------------------------------------------------------------------
# fuzzing: only what the existing suites lack

@FAST
@given(st.binary(max_size=400), BUFFERS)
def test_flat_keyed_buffer_types_agree_with_bytes(data, kind):
    # test_textparse covers str and bytes; bytearray and memoryview are accepted too
    try:
        want = parse_flat_keyed(data)
    except pymemcg.MalformedData:
        with pytest.raises(pymemcg.MalformedData):
            parse_flat_keyed(kind(data))
        return
    assert parse_flat_keyed(kind(data)) == want


@FAST
@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                       st.integers(0, 2**64 - 1), max_size=12),
       st.binary(max_size=40), st.integers(0, 400), st.sampled_from([1, 2]), st.booleans())
def test_memory_stat_with_bytes_spliced_in(stats, junk, at, version, local):
    # valid text with arbitrary bytes spliced in: a result or MalformedData, and a
    # result only if the text still parses as 'key value' lines
    text = "".join(f"{k} {v}\n" for k, v in stats.items()).encode()
    at = min(at, len(text))
    data = text[:at] + junk + text[at:]
    try:
        out = parse_memory_stat(data, version, local)
    except pymemcg.MalformedData:
        return
    raw = parse_flat_keyed(data)
    assert all(0 <= v < 2**64 for v in raw.values())
    assert isinstance(out, dict) and all(isinstance(v, int) for v in out.values())


@pytest.mark.parametrize("bad", [None, 12, 1.5, ["anon 1"], object()])
def test_flat_keyed_non_text_types(bad):
    # not bytes and not str: reported as MalformedData would be nicer; today Python's own
    # error (the caller passed a non-text). Asserted so a change is noticed.
    with pytest.raises((pymemcg.MalformedData, AttributeError, TypeError)):
        parse_flat_keyed(bad)


@FAST
@given(st.lists(st.sampled_from(["anon", "file", "usage", "pgfault", "limit", "shmem"]),
                unique=True, max_size=6),
       st.binary(max_size=1200), st.data(), BUFFERS)
def test_trailer_and_records_any_nbytes(names, data, draw, kind):
    """Arbitrary bytes and any nbytes up to the buffer's length (the reader's reused
    buffer): MalformedData, or exactly what the bytes say."""
    selection = Selection(names)
    rs = selection.record_size
    nbytes = draw.draw(st.integers(0, len(data)), label="nbytes")
    buf = kind(data)
    whole = nbytes >= TRAILER.size and (nbytes - TRAILER.size) % rs == 0
    try:
        count, session, visited = parse_trailer(buf, nbytes, rs, SEL)
    except pymemcg.MalformedData:
        if whole:  # then the trailer, or its count of the records held, is wrong
            sel, magic, _, v = TRAILER.unpack_from(data, nbytes - TRAILER.size)
            held = (nbytes - TRAILER.size) // rs
            assert (sel, magic) != (SEL, TRAILER_MAGIC) or \
                v not in (held, VISITED_UNKNOWN) and not (v > held == seq_budget(rs))
        return
    sel, magic, s, v = TRAILER.unpack_from(data, nbytes - TRAILER.size)
    assert (sel, magic, s, v) == (SEL, TRAILER_MAGIC, session, visited)
    assert count == (nbytes - TRAILER.size) // rs
    recs = list(iter_records(selection, buf, count * rs))
    assert [tuple(r) for r in recs] == [selection.record.unpack_from(data, i * rs)
                                        for i in range(count)]


@FAST
@given(st.binary(max_size=600), st.integers(0, 600), BUFFERS)
def test_iter_records_any_nbytes(data, nbytes, kind):
    selection = Selection(["anon", "file"])
    nbytes = min(nbytes, len(data))
    try:
        recs = list(iter_records(selection, kind(data), nbytes))
    except pymemcg.MalformedData:
        assert nbytes % selection.record_size
        return
    assert len(recs) == nbytes // selection.record_size


# --------------------------------------------------------------------------
# hostile paths



@pytest.fixture(params=["bpf", "text"])
def reader(request, bpf_ok, cgroups):
    """A Reader of each backend; afterwards no fd, pin or cwd change is left."""
    fds, links, cwd = open_fds(), my_links(), os.getcwd()
    r = pymemcg.Reader(stats=STATS, backend=request.param)
    try:
        yield r
    finally:
        r.close()
        os.chdir(cwd)
        gc.collect()
    assert my_links() <= links, f"links left behind: {my_links() - links}"
    assert open_fds() <= fds, f"fds left behind: {open_fds() - fds}"


def _both(r, path):
    """read and read_tree of path: each a Record/Snapshot or a pymemcg.Error."""
    out = []
    for call in (r.read, r.read_tree):
        try:
            out.append(call(path))
        except pymemcg.Error as e:
            out.append(e)
    return out


def _rel(path: str) -> str:
    return "/" + os.path.relpath(os.path.realpath(path), memory_mount().mountpoint)


@pytest.fixture
def tmp_links(tmp_path):
    yield tmp_path   # pytest's tmp_path is under /tmp; removed by pytest


def test_symlink_out_of_the_tree_is_not_a_cgroup(reader, tmp_links):
    link = tmp_links / "to-etc"
    link.symlink_to("/etc")
    for res in _both(reader, str(link)):
        assert isinstance(res, pymemcg.NotACgroup), res
    # also a symlink placed inside a path to a cgroup ("/tmp/x/.." style tricks)
    for res in _both(reader, str(link) + "/.."):
        assert isinstance(res, pymemcg.NotACgroup), res


def test_symlink_to_a_cgroup_is_followed(reader, cgroups, tmp_links):
    target = cgroups.make("t")
    cgroups.make("t/child")
    link = tmp_links / "to-cgroup"
    link.symlink_to(target)
    rec, snap = _both(reader, str(link))
    assert rec.id == os.stat(target).st_ino and rec.path == _rel(target)
    assert isinstance(snap, pymemcg.Snapshot)
    assert sorted(snap) == [_rel(target), _rel(target) + "/child"]


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_broken_symlinks(reader, tmp_links, kind):
    link = tmp_links / kind
    link.symlink_to(tmp_links / "nowhere" if kind == "dangling" else link)
    for res in _both(reader, str(link)):
        assert isinstance(res, (pymemcg.CgroupNotFound, pymemcg.NotACgroup)), res




@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_retargeted_symlink_reads_the_new_cgroup(bpf_ok, cgroups, tmp_links, backend):
    a, b = cgroups.make("a"), cgroups.make("b")
    link = tmp_links / "moving"
    link.symlink_to(a)
    with pymemcg.Reader(stats=STATS, backend=backend) as r:
        assert r.read(str(link)).id == os.stat(a).st_ino
        link.unlink()
        link.symlink_to(b)
        assert r.read_tree(str(link)).records[0].id == os.stat(b).st_ino
        assert r.read(str(link)).id == os.stat(b).st_ino




@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_relative_paths_follow_the_cwd(bpf_ok, cgroups, backend):
    a, b = cgroups.make("a"), cgroups.make("b")
    cgroups.make("a/sub")
    cwd = os.getcwd()
    try:
        with pymemcg.Reader(stats=STATS, backend=backend) as r:
            os.chdir(a)
            assert r.read(".").id == os.stat(a).st_ino
            assert r.read(".").path == _rel(a)
            assert r.read("sub").id == os.stat(os.path.join(a, "sub")).st_ino
            assert r.read("..").id == os.stat(cgroups.base).st_ino
            assert sorted(r.read_tree(".")) == [_rel(a), _rel(a) + "/sub"]
            os.chdir(b)
            assert r.read_tree(".").records[0].id == os.stat(b).st_ino
            assert r.read(".").id == os.stat(b).st_ino
    finally:
        os.chdir(cwd)


def test_relative_path_outside_the_tree(reader, tmp_path):
    os.chdir(tmp_path)
    for res in _both(reader, "."):
        assert isinstance(res, pymemcg.NotACgroup), res
    for res in _both(reader, "no-such-dir"):
        assert isinstance(res, pymemcg.CgroupNotFound), res


def test_too_long_paths(reader, cgroups):
    base = cgroups.base
    for path in ("/" + "x" * 5000,                           # > PATH_MAX, nothing there
                 base + "/" + "n" * 300,                     # one name > NAME_MAX
                 base + ("/" + "d" * 200) * 25):             # > PATH_MAX under a cgroup
        for res in _both(reader, path):
            assert isinstance(res, (pymemcg.NotACgroup, pymemcg.CgroupNotFound)), res




@pytest.mark.parametrize("backend", ["bpf", "text"])
def test_long_path_that_resolves_to_a_live_cgroup(bpf_ok, cgroups, backend):
    target = cgroups.make("t")
    path = target + "/." * 2100                              # 4200+ bytes, names target
    assert len(path) > os.pathconf("/", "PC_PATH_MAX")
    with pymemcg.Reader(stats=STATS, backend=backend) as r:
        results = _both(r, path)
    ino = os.stat(target).st_ino
    for res in results:
        ok_error = isinstance(res, pymemcg.NotACgroup)  # "name too long" would be fine too
        ok_result = (getattr(res, "id", None) == ino or
                     (isinstance(res, pymemcg.Snapshot) and res.records[0].id == ino))
        assert ok_error or ok_result, res


@pytest.mark.parametrize("path", ["/sys/fs/cgroup/memory\0/x", b"/sys/fs/cgroup/memory\0",
                                  "\0"])
def test_nul_bytes(reader, path):
    for res in _both(reader, path):
        assert isinstance(res, pymemcg.NotACgroup), res


def test_non_cgroup_directories_and_files(reader, cgroups, tmp_path):
    f = tmp_path / "file"
    f.write_text("anon 1\n")
    paths = ["/", "/tmp", str(tmp_path), str(f), "/etc", "/etc/passwd", "/sys/fs/cgroup",
             "/sys/fs/bpf", "/proc", "/proc/self", "/proc/self/status", "/dev", "/dev/null",
             "/dev/zero", os.path.join(cgroups.base, "memory.stat"),
             os.path.join(cgroups.base, "cgroup.procs"),
             os.path.join(memory_mount().mountpoint, "memory.usage_in_bytes")]
    for p in paths:
        for res in _both(reader, p):
            assert isinstance(res, pymemcg.NotACgroup), (p, res)


def test_other_hierarchies(reader):
    others = [m.mountpoint for m in pymemcg.cgroupfs.cgroup_mounts() if not m.has_memory]
    for p in others[:3]:
        for res in _both(reader, p):
            assert isinstance(res, pymemcg.NoMemoryController), (p, res)


def test_proc_fd_link_to_a_cgroup(reader, cgroups):
    # /proc/self/fd/N of an open cgroup directory: a magic link, followed to the cgroup
    target = cgroups.make("viafd")
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rec, snap = _both(reader, f"/proc/self/fd/{fd}")
        assert rec.id == os.stat(target).st_ino and rec.path == _rel(target)
        assert snap.records[0].id == rec.id
    finally:
        os.close(fd)


def test_bytes_and_pathlike_paths(reader, cgroups, tmp_path):
    import pathlib
    target = cgroups.make("bytes")
    cgroups.make("bytes/kid")
    ino = os.stat(target).st_ino
    for p in (os.fsencode(target), pathlib.Path(target), target + "/", target + "//",
              target + "/kid/.."):
        rec, snap = _both(reader, p)
        assert rec.id == ino and rec.path == _rel(target), (p, rec)
        assert sorted(snap) == [_rel(target), _rel(target) + "/kid"], (p, snap)
    # a name that is not UTF-8, in a place that is not a cgroup, and one that does not exist
    odd = os.path.join(os.fsencode(str(tmp_path)), b"\xff\xfe")
    os.mkdir(odd)
    for res in _both(reader, odd):
        assert isinstance(res, pymemcg.NotACgroup), res
    for res in _both(reader, os.fsencode(target) + b"/\xff"):
        assert isinstance(res, pymemcg.CgroupNotFound), res


@pytest.mark.parametrize("bad", [None, 1.5, object(), ("x",)])
def test_not_a_path(reader, bad):
    for res in _both(reader, bad):
        assert isinstance(res, pymemcg.NotACgroup), res




@pytest.mark.parametrize("backend", ["bpf", "text"])
@pytest.mark.parametrize("bad", [["x"], {"p": 1}])
def test_unhashable_not_a_path(bpf_ok, backend, bad):
    with pymemcg.Reader(stats=STATS, backend=backend) as r:
        for res in _both(r, bad):
            assert isinstance(res, pymemcg.NotACgroup), res
