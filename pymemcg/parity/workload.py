"""The probe's workload: the child process that charges the probe cgroups.

    python .../pymemcg/parity/workload.py CONFIG

Probe.open runs it by its path (probe.WORKLOAD_PROGRAM). CONFIG is JSON:
{"jobs": [...], "cache_dir": a directory on a real filesystem (not tmpfs),
"timeout": seconds the workers may take to charge}. A job is {"name",
"cgroup": its directory, and what to charge, bytes: "anon", "thp" (huge
pages), "cache" with "mapped" of it mapped, "shmem", "dirty", or "hog" with
"hog_cache" (clean page cache first), which the OOM killer is to end}.

It ignores SIGINT (Ctrl-C reaches the caller, which cleans up), forks one
worker per job (each dies with it: PR_SET_PDEATHSIG), prints one JSON line,
{"workers": {name: pid}, "errors": {name: why}}, once every worker has
charged or died, and on end of stdin (the caller closed it, or died) kills
its workers and exits. It imports only the standard library: one small
interpreter start, and nothing of pymemcg in the memory the workers share.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import select
import signal
import sys
import tempfile
import threading
import time
from typing import IO, Any, Dict, List, NoReturn, Optional, Tuple

PAGE = mmap.PAGESIZE
CHUNK = b"\xa5" * 65536
PR_SET_PDEATHSIG = 1

Job = Dict[str, Any]


def anon(size: int, huge: bool = False) -> mmap.mmap:
    """`size` bytes of anonymous memory, every page touched."""
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    # small pages: one fault a page, whatever THP is set to; huge: THP where
    # the kernel has it (a region of 2 MiB aligned pages at least)
    m.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    for i in range(0, size, PAGE):
        m[i] = 1
    return m


def cached(size: int, cache_dir: str) -> IO[bytes]:
    """A clean page-cache file of `size` bytes (unlinked from the start)."""
    f = tempfile.TemporaryFile(dir=cache_dir)
    fill(f.fileno(), size)
    os.fsync(f.fileno())
    os.pread(f.fileno(), size, 0)
    return f


def fill(fd: int, size: int) -> None:
    """Write `size` bytes to `fd`."""
    for _ in range(size // len(CHUNK)):
        os.write(fd, CHUNK)
    os.write(fd, CHUNK[:size % len(CHUNK)])


def charge(job: Job, cache_dir: str) -> List[object]:
    """Charge what `job` asks for to this process's cgroup; returns what
    holds the memory (it stays charged while the list lives)."""
    # a thread's kernel stack is charged where it is made: here (the
    # process's own was charged to the driver's cgroup, at fork)
    thread = threading.Thread(target=threading.Event().wait, daemon=True)
    keep: List[object] = [thread]
    thread.start()
    if job.get("anon"):
        keep.append(anon(job["anon"]))
    if job.get("thp"):
        keep.append(anon(job["thp"], huge=True))
    if job.get("cache"):
        f = cached(job["cache"], cache_dir)
        m = mmap.mmap(f.fileno(), job["mapped"], mmap.MAP_SHARED, mmap.PROT_READ)
        for i in range(0, job["mapped"], PAGE):
            m[i]  # a read fault maps the page
        keep += [f, m]
    if job.get("shmem"):
        fd = os.memfd_create("pymemcg-verify")
        fill(fd, job["shmem"])
        keep.append(fd)
    if job.get("dirty"):
        d = tempfile.TemporaryFile(dir=cache_dir)
        fill(d.fileno(), job["dirty"])
        keep.append(d)
    if job.get("hog"):
        # clean page cache first, for reclaim to scan and evict before the
        # anonymous memory (which has no swap to go to) brings the OOM kill
        keep.append(cached(job["hog_cache"], cache_dir))
        anon(job["hog"])  # the cgroup's limit is far lower: the OOM killer ends this
    return keep


# --- NUMA ---
#: set_mempolicy(2)'s number (glibc has no wrapper) and MPOL_INTERLEAVE
SYS_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237}
MPOL_INTERLEAVE = 3


def spread_over_nodes(libc: ctypes.CDLL) -> None:
    """Where more than one node has memory, interleave this process's
    allocations (anonymous memory and the page cache it reads in) over all
    of them, so that memory.numa_stat has a value to compare on each node."""
    try:
        with open("/sys/devices/system/node/has_memory") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return
    nodes: List[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        nodes.extend(range(int(lo), int(hi or lo) + 1))
    if len(nodes) < 2:
        return
    mask = sum(1 << n for n in nodes)
    words = (ctypes.c_ulong * (max(nodes) // 64 + 1))(
        *[(mask >> (64 * i)) & (2**64 - 1) for i in range(max(nodes) // 64 + 1)])
    nr = SYS_SET_MEMPOLICY[os.uname().machine]
    if libc.syscall(nr, MPOL_INTERLEAVE, words, ctypes.c_ulong(max(nodes) + 2)) != 0:
        raise OSError(ctypes.get_errno(), "set_mempolicy(MPOL_INTERLEAVE) over nodes "
                      f"{text}: {os.strerror(ctypes.get_errno())}")


def hold(keep: List[object]) -> NoReturn:
    """Sleep until killed, keeping `keep` (the memory charged) alive."""
    while True:
        signal.pause()


def worker(job: Job, cache_dir: str, driver: int, libc: ctypes.CDLL) -> Tuple[int, int]:
    """Fork a worker that moves itself into job["cgroup"] and charges it;
    returns its pid and the read end of a pipe on which it writes "ready" or
    "error: ..." (`driver`: this process's pid)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        return pid, r
    try:
        os.close(r)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != driver:
            os._exit(1)
        with open(os.path.join(job["cgroup"], "cgroup.procs"), "w") as f:
            f.write("0")  # this process, before it allocates anything
        spread_over_nodes(libc)
        keep = charge(job, cache_dir)
        os.write(w, b"ready")
        os.close(w)
        hold(keep)
    except BaseException as e:
        try:
            os.write(w, ("error: " + repr(e)).encode())
        finally:
            os._exit(1)


def main(argv: List[str]) -> None:
    """Charge the jobs of argv[0] (CONFIG), report, hold until end of stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = json.loads(argv[0])
    libc = ctypes.CDLL(None, use_errno=True)
    me = os.getpid()

    pids: Dict[str, int] = {}
    pipes: Dict[str, int] = {}
    report: Dict[str, Dict[str, Any]] = {"workers": {}, "errors": {}}
    for job in cfg["jobs"]:
        pid, r = worker(job, cfg["cache_dir"], me, libc)
        pids[job["name"]], pipes[job["name"]] = pid, r
        report["workers"][job["name"]] = pid
    deadline = time.monotonic() + cfg["timeout"]
    for name, r in pipes.items():
        data = b""
        while time.monotonic() < deadline:
            if select.select([r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                data += chunk
        os.close(r)
        if data != b"ready":
            # end of file comes as the worker exits, a moment before it is reapable
            status: Optional[int] = None
            while status is None and time.monotonic() < deadline + 5:
                done, st = os.waitpid(pids[name], os.WNOHANG)
                if done:
                    status = st
                else:
                    time.sleep(0.01)
            if status is None:
                os.kill(pids[name], signal.SIGKILL)
                os.waitpid(pids[name], 0)
                why = "did not finish in time"
            elif os.WIFSIGNALED(status):
                why = "killed by signal %d" % os.WTERMSIG(status)
            else:
                why = "exited with status %d" % os.WEXITSTATUS(status)
            del pids[name]
            report["errors"][name] = "; ".join(
                filter(None, [data.decode(errors="replace"), why]))
    print(json.dumps(report), flush=True)
    sys.stdin.read()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for pid in pids.values():
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main(sys.argv[1:])
