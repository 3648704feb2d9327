"""Fixtures on the real kernel: temporary memory cgroups and workloads in them.

Every cgroup is made under this process's own memory cgroup and removed at
teardown, with the processes the test started killed first.

BPF tests need root and a kernel that runs the program. Without
PYMEMCG_REQUIRE_BPF they are skipped where BPF cannot run (a developer's
unprivileged shell); with it (CI sets it) they fail instead.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import pytest

import pymemcg
from pymemcg.cgroupfs import memory_mount, own_memory_cgroup
from pymemcg.reader import REQUIRE_BPF_ENV

MiB = 1 << 20


def bpf_required() -> bool:
    return os.environ.get(REQUIRE_BPF_ENV, "") not in ("", "0")


@pytest.fixture(scope="session")
def bpf_ok():
    """Fails (CI) or skips (elsewhere) when the BPF backend cannot run here."""
    try:
        with pymemcg.Reader(stats=["usage"], backend="bpf") as r:
            r.read(own_memory_cgroup())
    except pymemcg.BpfUnavailable as e:
        if bpf_required():
            pytest.fail(f"BPF backend unavailable but {REQUIRE_BPF_ENV} is set: {e}")
        pytest.skip(f"BPF backend unavailable here: {e}")
    return True


@pytest.fixture(scope="session")
def cgroup_version() -> int:
    mount = memory_mount()
    assert mount is not None, "this host has no memory cgroup hierarchy"
    return mount.version


def _rmtree_cgroup(path: str) -> None:
    """rmdir a cgroup subtree bottom-up (cgroup dirs hold only kernel files)."""
    for dirpath, dirnames, _ in sorted(os.walk(path, topdown=False), key=lambda t: -len(t[0])):
        for attempt in range(50):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)  # tasks still exiting
        else:
            raise RuntimeError(f"could not remove test cgroup {dirpath}")


def _enable_memory(parent: str) -> None:
    """cgroup v2: children get the memory controller only if the parent
    lists it in cgroup.subtree_control."""
    control = os.path.join(parent, "cgroup.subtree_control")
    if os.path.exists(control):
        with open(control) as f:
            if "memory" in f.read().split():
                return
        with open(control, "w") as f:
            f.write("+memory")


class CgroupFactory:
    def __init__(self) -> None:
        own = own_memory_cgroup()
        assert own is not None
        self.base = os.path.join(own, f"pymemcg-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.v2 = memory_mount().version == 2
        if self.v2:
            _enable_memory(own)
        os.mkdir(self.base)
        self.procs: list[subprocess.Popen] = []

    def make(self, relpath: str) -> str:
        path = os.path.join(self.base, relpath)
        if self.v2:
            parts = relpath.strip("/").split("/")
            cur = self.base
            for part in parts:
                _enable_memory(cur)
                cur = os.path.join(cur, part)
                if not os.path.isdir(cur):
                    os.mkdir(cur)
            return path
        os.makedirs(path)
        return path

    def spawn(self, cgroup: str, script: str) -> subprocess.Popen:
        """Run python `script` inside `cgroup`; waits for it to print 'ready'."""
        def enter():
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                                preexec_fn=enter, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        self.procs.append(proc)
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"workload did not start: {line!r}"
        return proc

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
            shm = f"/dev/shm/pymemcg-test-{p.pid}"
            if os.path.exists(shm):
                os.unlink(shm)
        if os.path.exists(self.base):
            _rmtree_cgroup(self.base)


@pytest.fixture
def cgroups():
    factory = CgroupFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


# A workload that charges known memory of each kind, then sleeps until stdin
# closes: anonymous (touched small pages: MADV_NOHUGEPAGE, so that each page
# is one fault even where THP is "always"), page cache (a file written and
# fsynced, then read back), and shmem (a file on /dev/shm).
WORKLOAD = """
import mmap, os, sys, tempfile
anon = mmap.mmap(-1, {anon}, flags=mmap.MAP_PRIVATE)  # shared would be shmem
anon.madvise(mmap.MADV_NOHUGEPAGE)
for i in range(0, len(anon), 4096):
    anon[i] = 1
fd, name = tempfile.mkstemp(dir={cache_dir!r})
os.write(fd, b"x" * {cache}); os.fsync(fd)
os.pread(fd, {cache}, 0)
os.unlink(name)
shm = "/dev/shm/pymemcg-test-%d" % os.getpid()
with open(shm, "wb") as f:
    f.write(b"y" * {shmem})
print("ready", flush=True)
sys.stdin.read()
os.unlink(shm)
"""


def workload(anon: int = 24 * MiB, cache: int = 16 * MiB, shmem: int = 8 * MiB,
             cache_dir: str = "/var/tmp") -> str:
    return WORKLOAD.format(anon=anon, cache=cache, shmem=shmem, cache_dir=cache_dir)


def in_child(fn, timeout: int = 20, prepare=None):
    """fn() in a forked child (after prepare(), if given): ('ok', value),
    ('raised', class name, message, is a pymemcg.Error), ('hung',) or
    ('died', status). The child leaves with os._exit (no atexit, no
    finalizers) and is reaped here."""
    import signal
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(timeout)
            try:
                if prepare is not None:
                    prepare()
                result = ("ok", fn())
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                result = ("raised", type(e).__name__, str(e), isinstance(e, pymemcg.Error))
            os.write(wfd, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        return ("hung",) if os.WIFSIGNALED(status) else ("died", status)
    return pickle.loads(data)


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def as_nobody(fn):
    """Run fn() in a forked child with uid/gid nobody and no capabilities."""
    return in_child(fn, prepare=_become_nobody)


def open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def links_of(pid="self") -> set:
    """The fds of a process that are BPF links (a Reader's own links are fds
    only: nothing is pinned)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf_link":
                out.add(fd)
        except OSError:
            pass
    return out


def my_links() -> set:
    return links_of()


@pytest.fixture
def no_leaks(bpf_ok):
    """Fails the test if it leaves links or other fds of this process behind."""
    import gc
    fds, links = open_fds(), my_links()
    yield
    gc.collect()
    assert my_links() <= links, f"links left behind: {my_links() - links}"
    assert open_fds() <= fds, f"fds left behind: {open_fds() - fds}"


@pytest.fixture
def pin_dirs():
    """A private bpffs instance and a metadata directory, both traversable by
    nobody, removed afterwards (the host's /sys/fs/bpf is left alone)."""
    base = tempfile.mkdtemp(prefix="pymemcg-pins-", dir="/tmp")
    os.chmod(base, 0o755)
    bpffs, meta = os.path.join(base, "bpf"), os.path.join(base, "meta")
    os.mkdir(bpffs)
    subprocess.run(["mount", "-t", "bpf", "-o", "mode=0755", "bpf", bpffs], check=True)
    try:
        yield bpffs, meta
    finally:
        subprocess.run(["umount", bpffs], check=True)
        for name in os.listdir(meta) if os.path.isdir(meta) else []:
            os.unlink(os.path.join(meta, name))
        for d in (meta, bpffs, base):
            if os.path.isdir(d):
                os.rmdir(d)


def sigint_default() -> None:
    """preexec_fn for a child that must stop on SIGINT: a shell starts
    background jobs (CI may run this way) with SIGINT ignored, and Python
    keeps an inherited SIG_IGN instead of raising KeyboardInterrupt."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def require_module(name: str):
    """pytest.importorskip, except where PYMEMCG_REQUIRE_BPF is set (CI, which
    installs the test extra): there a missing module fails the test file."""
    if bpf_required():
        import importlib
        return importlib.import_module(name)
    return pytest.importorskip(name)
