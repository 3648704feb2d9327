"""`pymemcg verify`: prove on this host that the BPF backend's values are exact.

    result = pymemcg.verify()
    print(result.counts)     # {"served": 88, "exact": 30, "mismatch": 0, "not compared": 58, ...}
    result.ok                # no stat mismatched

What it does, in a few seconds:

1. Loads the BPF backend for every stat it serves on this kernel, hierarchical
   and local (`Reader(stats=..., backend="bpf")`), before it touches anything:
   a host where BPF cannot run fails here, with nothing made.
2. Makes a probe cgroup under the caller's own memory cgroup (or `parent`):
   `probe/work` (anonymous memory in small and huge pages, fsynced and mapped
   page cache, shmem, a dirty file, a thread), `probe/mid/leaf` (a smaller
   charge one level deeper) and `probe/oom` (a small limit, clean page cache
   for reclaim to take, and a process the OOM killer kills). One child
   Python process charges them all: it forks one worker per cgroup, and each
   worker moves itself into its cgroup before it allocates.
3. Waits for the probe to go quiet and for the kernel's periodic stats flush
   (reading memory.stat flushes too, when enough updates are pending).
4. For every cgroup of the probe, hierarchical and local, through single reads
   (`Reader.read`) and one tree walk (`Reader.read_tree`), reads the kernel's
   own files, the BPF values, and the files again. A stat whose file value
   did not move across the BPF read is decided there: exact, or a mismatch.
   One that moved is read again, a few times; one that never held still is
   reported as a mismatch, with the values seen.
5. Removes everything it made: processes, cgroups, pins; also on an error or
   Ctrl-C.

Stats that the BPF backend serves but no kernel file prints on this host
(cgroup v1's memory.stat prints about 20 keys; v2's prints no local values)
are "not compared", each with the reason, and never counted as exact. Sizes
are bytes and events counts, as memory.stat prints them.

`pymemcg.verify` is the function; this module, whose name it shadows in the
package, is `importlib.import_module("pymemcg.verify")`.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import catalog
from .catalog import COUNTER, MEMEVENT
from .cgroupfs import memory_mount, own_memory_cgroup, resolve_cgroup
from .errors import BpfUnavailable, Error, VerifyUnavailable
from .memory_stat import (EVENTS_KEYS, SWAP_EVENTS_KEYS, V1_COUNTER_FILES, V2_COUNTER_FILES,
                          parse_flat_keyed, parse_number)

if TYPE_CHECKING:
    from .reader import Reader

EXACT = "exact"
MISMATCH = "mismatch"
NOT_COMPARED = "not compared"

MiB = 1 << 20
PROBE_PREFIX = "pymemcg-verify-"

#: the probe's cgroups, relative to the probe, parents first; leaves have no children
PROBE_CGROUPS = (".", "work", "mid", "mid/leaf", "oom")
LEAVES = ("work", "mid/leaf", "oom")

# v1: the kmem page counter is charged in the same call as MEMCG_KMEM
# (memcg_account_kmem), so it is the kernel's own print of "kernel" there
V1_KMEM_FILE = "memory.kmem.usage_in_bytes"
V1_OOM_FILE = "memory.oom_control"
#: the kernel folds per-CPU stat updates in at least this often (seconds)
FLUSH_PERIOD_S = 2.0


@dataclass(frozen=True)
class Workload:
    """What the probe charges (bytes). `hog` is touched in `oom`, whose limit
    is `oom_limit`: the OOM killer ends it."""

    anon: int = 16 * MiB
    thp: int = 4 * MiB           # anonymous, MADV_HUGEPAGE
    cache: int = 8 * MiB         # written, fsynced, read back
    mapped: int = 2 * MiB        # of that cache, mapped and touched
    shmem: int = 4 * MiB         # a memfd
    dirty: int = 2 * MiB         # written, not synced
    leaf_anon: int = 4 * MiB     # probe/mid/leaf
    leaf_shmem: int = 1 * MiB
    oom_limit: int = 16 * MiB
    oom_cache: int = 8 * MiB     # clean page cache in oom, for reclaim to take
    hog: int = 96 * MiB


@dataclass
class Check:
    """One comparison: a stat of one cgroup, read one way."""

    cgroup: str            # relative to the probe ("." is the probe)
    local: bool
    method: str            # "read" or "read_tree"
    against: str           # the file and key, e.g. "memory.stat total_rss"
    bpf: Optional[int]
    file: Optional[int]
    outcome: str           # EXACT or MISMATCH
    why: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {"cgroup": self.cgroup, "local": self.local, "method": self.method,
                "against": self.against, "bpf": self.bpf, "file": self.file,
                "outcome": self.outcome, **({"why": self.why} if self.why else {})}


@dataclass
class StatResult:
    """One served stat: its outcome over every check made of it.

    exact: every check equal (at least one made); mismatch: any check
    differed; not compared: no kernel file prints it here (`why` says so).
    `bpf`/`file` are the first mismatch's values, else those of the check
    with the largest value (the most telling one).
    """

    name: str
    outcome: str
    bpf: Optional[int]
    file: Optional[int]
    why: str
    against: List[str] = field(default_factory=list)
    checks: List[Check] = field(default_factory=list)

    @property
    def nonzero(self) -> bool:
        """Whether some exact check compared a value other than 0."""
        return any(c.outcome == EXACT and c.file for c in self.checks)

    def as_dict(self, checks: bool = True) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "outcome": self.outcome, "bpf": self.bpf, "file": self.file,
               "why": self.why, "against": self.against, "nonzero": self.nonzero,
               "comparisons": len(self.checks)}
        if checks:
            out["checks"] = [c.as_dict() for c in self.checks]
        return out


@dataclass
class Result:
    """What verify() found. `ok` is False when any stat mismatched."""

    kernel: str
    cgroup_version: int
    backend: str             # "bpf (core)", "bpf (kfunc, local: core)"
    read_method: str
    probe: str               # the probe's path (removed by now)
    stats: List[StatResult]
    workload: Dict[str, Any]
    duration_s: float

    @property
    def ok(self) -> bool:
        return not any(s.outcome == MISMATCH for s in self.stats)

    @property
    def counts(self) -> Dict[str, int]:
        """served, exact, mismatch, not compared, exact_nonzero, comparisons."""
        out = {"served": len(self.stats), EXACT: 0, MISMATCH: 0, NOT_COMPARED: 0}
        for s in self.stats:
            out[s.outcome] += 1
        out["exact_nonzero"] = sum(1 for s in self.stats if s.outcome == EXACT and s.nonzero)
        out["comparisons"] = sum(len(s.checks) for s in self.stats)
        return out

    def as_dict(self, checks: bool = True) -> Dict[str, Any]:
        return {"kernel": self.kernel, "cgroup_version": self.cgroup_version,
                "backend": self.backend, "read_method": self.read_method,
                "ok": self.ok, "counts": self.counts, "duration_s": self.duration_s,
                "probe": self.probe, "workload": self.workload,
                "stats": [s.as_dict(checks) for s in self.stats]}


# --- the kernel's own files ---

FileValues = Dict[str, Tuple[int, str]]    # stat name -> (value, "file key")


def _files_for(version: int) -> Tuple[str, ...]:
    counters = V1_COUNTER_FILES if version == 1 else V2_COUNTER_FILES
    extra = (V1_KMEM_FILE, V1_OOM_FILE) if version == 1 else \
        ("memory.events", "memory.events.local", "memory.swap.events")
    return ("memory.stat",) + tuple(counters.values()) + extra


def read_files(path: str, version: int) -> Dict[str, Optional[str]]:
    """The text of every file verify compares, by file name (None if absent)."""
    out: Dict[str, Optional[str]] = {}
    for name in _files_for(version):
        try:
            with open(os.path.join(path, name), "rb", buffering=0) as f:
                out[name] = f.read().decode("ascii")
        except FileNotFoundError:
            out[name] = None
    return out


def file_values(files: Mapping[str, Optional[str]], version: int, local: bool,
                leaf: bool) -> Tuple[FileValues, Dict[str, str]]:
    """What the kernel's files say, by stat name, and why a stat has no value.

    local values come from files that print them (v1 memory.stat's plain
    keys, v2 memory.events.local) and, at a leaf, from the hierarchical files:
    a cgroup without children is its whole subtree.
    """
    values: FileValues = {}
    why: Dict[str, str] = {}
    hier = not local or leaf
    note = " (a leaf: its own values are its subtree's)" if local and leaf else ""
    stat_keys = parse_flat_keyed(files.get("memory.stat") or "")

    for s in catalog.STATS.values():
        if s.kind == COUNTER:
            fname = (V1_COUNTER_FILES if version == 1 else V2_COUNTER_FILES).get(s.name)
            if fname is None:
                why[s.name] = f"no cgroup v{version} file has it"
            elif files.get(fname) is None:
                why[s.name] = f"this kernel has no {fname}"
            else:
                # a page counter has one value: local=True reads the same counter
                # `or ""`: not None, the branch above says
                values[s.name] = (parse_number(files[fname] or "", fname), fname)
            continue
        if s.kind == MEMEVENT:
            _memevent(s.name, files, version, local, leaf, note, values, why)
            continue
        if version == 1:
            if s.name == "kernel":
                if not hier:
                    why[s.name] = (f"cgroup v1 prints no local value of it ({V1_KMEM_FILE} "
                                   f"is hierarchical; compared at the leaves)")
                elif files.get(V1_KMEM_FILE) is None:
                    why[s.name] = f"this kernel has no {V1_KMEM_FILE}"
                else:
                    values[s.name] = (parse_number(files[V1_KMEM_FILE] or "", V1_KMEM_FILE),
                                      V1_KMEM_FILE + note)
                continue
            if s.v1_key is None:
                other = f" (v2's memory.stat prints it as {s.v2_key})" if s.v2_key else ""
                why[s.name] = f"cgroup v1's memory.stat has no key for it{other}"
                continue
            key = s.v1_key if local else "total_" + s.v1_key
        else:
            if s.v2_key is None:
                other = f" (only v1's memory.stat prints it, as {s.v1_key})" if s.v1_key else ""
                why[s.name] = f"cgroup v2's memory.stat has no key for it{other}"
                continue
            if not hier:
                why[s.name] = ("cgroup v2's memory.stat prints hierarchical values only "
                               "(local ones compared at the leaves)")
                continue
            key = s.v2_key
        if key not in stat_keys:
            why[s.name] = f"this kernel's memory.stat does not print {key}"
        else:
            values[s.name] = (stat_keys[key], f"memory.stat {key}" + (note if version == 2
                                                                        else ""))
    return values, why


def _memevent(name: str, files: Mapping[str, Optional[str]], version: int, local: bool,
              leaf: bool, note: str, values: FileValues, why: Dict[str, str]) -> None:
    """A memory.events counter: v2 memory.events(.local) and memory.swap.events;
    v1 prints only oom_kill, in memory.oom_control."""
    if version == 1:
        if name != "oom_kill":
            why[name] = "cgroup v1 has no memory.events (it prints only oom_kill, in " \
                        "memory.oom_control)"
        elif local and not leaf:
            why[name] = f"cgroup v1 prints no local value of it beside {V1_OOM_FILE}'s " \
                        f"(compared at the leaves)"
        elif files.get(V1_OOM_FILE) is None:
            why[name] = f"this kernel has no {V1_OOM_FILE}"
        else:
            raw = parse_flat_keyed(files[V1_OOM_FILE] or "", V1_OOM_FILE)
            if "oom_kill" in raw:
                values[name] = (raw["oom_kill"], f"{V1_OOM_FILE} oom_kill{note}")
            else:
                why[name] = f"this kernel's {V1_OOM_FILE} does not print oom_kill"
        return
    for fname, keys in (("memory.events.local" if local else "memory.events", EVENTS_KEYS),
                        ("memory.swap.events", SWAP_EVENTS_KEYS)):
        key = next((k for k, n in keys.items() if n == name), None)
        if key is None:
            continue
        if fname == "memory.swap.events" and local and not leaf:
            why[name] = "cgroup v2 has no memory.swap.events.local (compared at the leaves)"
        elif files.get(fname) is None:
            why[name] = f"this kernel has no {fname}"
        else:
            raw = parse_flat_keyed(files[fname] or "", fname)
            if key in raw:
                values[name] = (raw[key], f"{fname} {key}"
                                + (note if fname == "memory.swap.events" else ""))
            else:
                why[name] = f"this kernel's {fname} does not print {key}"
        return
    why[name] = "no cgroup v2 file prints it"


def compare(bpf: Mapping[str, Optional[int]], before: FileValues, after: FileValues,
            names: Sequence[str]) -> Dict[str, Tuple[str, Optional[int], Optional[int], str]]:
    """Decide each of `names` from one bracketed read: files, BPF, files.

    Returns name -> (outcome, bpf value, file value, why) for every name whose
    file value held still across the BPF read (the same before and after):
    EXACT when BPF read that value, MISMATCH otherwise. Names whose file value
    moved are left out: the caller reads them again.
    """
    out: Dict[str, Tuple[str, Optional[int], Optional[int], str]] = {}
    for name in names:
        if name not in before or name not in after:
            continue
        (was, _), (now, _) = before[name], after[name]
        if was != now:
            continue
        got = bpf.get(name)
        if got == now:
            out[name] = (EXACT, got, now, "")
        elif got is None:
            out[name] = (MISMATCH, None, now, "BPF returned no value for it")
        else:
            out[name] = (MISMATCH, got, now, f"BPF read {got}, the file says {now} "
                                             f"(difference {got - now:+d})")
    return out


# --- the probe ---

def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# The child that charges the probe. It ignores SIGINT (Ctrl-C reaches the
# caller, which cleans up), forks one worker per cgroup (each dies with it:
# PR_SET_PDEATHSIG), prints one JSON line once every worker has charged or
# died, and on end of stdin (the caller closed it, or died) kills its workers
# and exits. Only the standard library, one interpreter start.
_DRIVER = r'''
import ctypes, json, mmap, os, select, signal, sys, tempfile, threading, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
PAGE = mmap.PAGESIZE
CHUNK = b"\xa5" * 65536
me = os.getpid()

def anon(size, huge=False):
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    # small pages: one fault a page, whatever THP is set to; huge: THP where
    # the kernel has it (a region of 2 MiB aligned pages at least)
    m.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    for i in range(0, size, PAGE):
        m[i] = 1
    return m

def cached(size):
    """A clean page-cache file of `size` bytes (unlinked from the start)."""
    f = tempfile.TemporaryFile(dir=cfg["cache_dir"])
    fill(f.fileno(), size)
    os.fsync(f.fileno())
    os.pread(f.fileno(), size, 0)
    return f

def fill(fd, size):
    for _ in range(size // len(CHUNK)):
        os.write(fd, CHUNK)
    os.write(fd, CHUNK[:size % len(CHUNK)])

def charge(job):
    # a thread's kernel stack is charged where it is made: here (the
    # process's own was charged to the driver's cgroup, at fork)
    keep = [threading.Thread(target=threading.Event().wait, daemon=True)]
    keep[0].start()
    if job.get("anon"):
        keep.append(anon(job["anon"]))
    if job.get("thp"):
        keep.append(anon(job["thp"], huge=True))
    if job.get("cache"):
        f = cached(job["cache"])
        m = mmap.mmap(f.fileno(), job["mapped"], mmap.MAP_SHARED, mmap.PROT_READ)
        for i in range(0, job["mapped"], PAGE):
            m[i]
        keep += [f, m]
    if job.get("shmem"):
        fd = os.memfd_create("pymemcg-verify")
        fill(fd, job["shmem"])
        keep.append(fd)
    if job.get("dirty"):
        f = tempfile.TemporaryFile(dir=cfg["cache_dir"])
        fill(f.fileno(), job["dirty"])
        keep.append(f)
    if job.get("hog"):
        # clean page cache first, for reclaim to scan and evict before the
        # anonymous memory (which has no swap to go to) brings the OOM kill
        keep.append(cached(job["hog_cache"]))
        anon(job["hog"])  # the cgroup's limit is far lower: the OOM killer ends this
    return keep

def worker(job):
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        return pid, r
    try:
        os.close(r)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != me:
            os._exit(1)
        with open(os.path.join(job["cgroup"], "cgroup.procs"), "w") as f:
            f.write("0")  # this process, before it allocates anything
        keep = charge(job)
        os.write(w, b"ready")
        os.close(w)
        while True:
            signal.pause()
    except BaseException as e:
        try:
            os.write(w, ("error: " + repr(e)).encode())
        finally:
            os._exit(1)

pids, pipes, report = {}, {}, {"workers": {}, "errors": {}}
for job in cfg["jobs"]:
    pid, r = worker(job)
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
        status = None
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
        report["errors"][name] = "; ".join(filter(None, [data.decode(errors="replace"), why]))
print(json.dumps(report), flush=True)
sys.stdin.read()
for pid in pids.values():
    os.kill(pid, signal.SIGKILL)
for pid in pids.values():
    os.waitpid(pid, 0)
'''


class _Probe:
    """The probe cgroups and the driver process; `close()` removes both."""

    def __init__(self, parent: str, version: int, workload: Workload, cache_dir: str,
                 timeout: float) -> None:
        self.parent = parent
        self.version = version
        self.path = os.path.join(parent, f"{PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        self.made: List[str] = []
        self.driver: Optional[subprocess.Popen[bytes]] = None
        self.report: Dict[str, Any] = {}
        self.worker_pids: List[int] = []
        self.workload = workload
        self.cache_dir = cache_dir
        self.timeout = timeout

    def cgroup(self, rel: str) -> str:
        return self.path if rel == "." else os.path.join(self.path, rel)

    def open(self) -> None:
        """Make the cgroups, set the OOM cgroup's limit, start the workload."""
        if self.version == 2:
            with open(os.path.join(self.parent, "cgroup.subtree_control")) as f:
                if "memory" not in f.read().split():
                    raise VerifyUnavailable(
                        f"{self.parent} does not give its children the memory controller "
                        f"(memory is not in its cgroup.subtree_control), so a probe cgroup "
                        f"there has no memory.stat: pass parent= (--parent) a cgroup that "
                        f"lists memory in cgroup.subtree_control, such as the parent of "
                        f"your own cgroup")
        for rel in PROBE_CGROUPS:
            path = self.cgroup(rel)
            try:
                os.mkdir(path)
            except OSError as e:
                raise VerifyUnavailable(f"cannot create the probe cgroup {path} "
                                        f"({e.strerror}): run as root, on a writable "
                                        f"cgroup hierarchy") from None
            self.made.append(path)
            if self.version == 2 and rel in (".", "mid"):
                _write(os.path.join(path, "cgroup.subtree_control"), "+memory")
        oom = self.cgroup("oom")
        limit = str(self.workload.oom_limit)
        if self.version == 1:
            _write(os.path.join(oom, "memory.limit_in_bytes"), limit)
            if os.path.exists(os.path.join(oom, "memory.memsw.limit_in_bytes")):
                # memsw is charged first, and on newer kernels (6.18 here) its
                # counter keeps no failcnt: a higher memsw limit lets memory's
                # own limit, and failcnt, be the one hit, and still bounds
                # what can escape to swap
                _write(os.path.join(oom, "memory.memsw.limit_in_bytes"),
                       str(2 * self.workload.oom_limit))
        else:
            _write(os.path.join(oom, "memory.max"), limit)
            if os.path.exists(os.path.join(oom, "memory.swap.max")):
                _write(os.path.join(oom, "memory.swap.max"), "0")
        w = self.workload
        jobs = [
            {"name": "work", "cgroup": self.cgroup("work"), "anon": w.anon, "thp": w.thp,
             "cache": w.cache, "mapped": w.mapped, "shmem": w.shmem, "dirty": w.dirty},
            {"name": "mid/leaf", "cgroup": self.cgroup("mid/leaf"), "anon": w.leaf_anon,
             "shmem": w.leaf_shmem},
            {"name": "oom", "cgroup": oom, "hog": w.hog, "hog_cache": w.oom_cache},
        ]
        cfg = {"jobs": jobs, "cache_dir": self.cache_dir, "timeout": self.timeout}
        driver = self.driver = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, json.dumps(cfg)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            close_fds=True)
        assert driver.stdout is not None and driver.stderr is not None  # PIPE
        ready, _, _ = select.select([driver.stdout], [], [], self.timeout + 30)
        line = driver.stdout.readline() if ready else b""
        try:
            report = json.loads(line)
        except ValueError:
            err = b""
            if driver.poll() is not None:
                err = driver.stderr.read()
            raise VerifyUnavailable(
                f"the probe's workload did not start ({sys.executable}): "
                f"{(err.decode(errors='replace').strip() or 'no report').splitlines()[-1]}; "
                f"check that {self.cache_dir} is writable (cache_dir=)") from None
        self.report = report
        self.worker_pids = list(report["workers"].values())
        errors = dict(report.get("errors", {}))
        oom_ok = errors.pop("oom", None) == f"killed by signal {signal.SIGKILL.value}"
        if errors:
            raise VerifyUnavailable(f"the probe's workload failed: {errors}; check that "
                                    f"{self.cache_dir} is writable (cache_dir=)")
        self.report["oom_killed"] = oom_ok

    def close(self) -> None:
        """End the driver (its workers die with it), then remove the cgroups,
        deepest first. A Ctrl-C (or SIGTERM) in here does not stop the
        cleanup: it is raised again once the cleanup is done."""
        interrupted: Optional[BaseException] = None
        for step in (self._stop_driver, self._remove_cgroups):
            for _ in range(10):
                try:
                    step()
                    break
                except Error:
                    raise
                except BaseException as e:  # Ctrl-C, SIGTERM: finish cleaning first
                    interrupted = e
        if interrupted is not None:
            raise interrupted

    def _stop_driver(self) -> None:
        proc = self.driver
        if proc is None:
            return
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()       # its workers get SIGKILL through PR_SET_PDEATHSIG
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f and not f.closed:
                f.close()
        self.driver = None

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        while self.made:
            path = self.made[-1]
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise Error(f"could not remove the probe cgroup {path} ({e.strerror}): "
                                f"remove it with rmdir once its processes are gone") from None
                self._kill_ours(path)
                time.sleep(0.05)   # tasks still exiting
                continue
            self.made.pop()

    def _kill_ours(self, path: str) -> None:
        """SIGKILL processes still in a probe cgroup, if they are our workers."""
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        for pid in pids:
            if pid in self.worker_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# --- the comparison ---

def _bpf_backend(reader: Reader, local_reader: Optional[Reader]) -> str:
    kinds = []
    for r in (reader, local_reader):
        be = getattr(r._be(), "kernel_backend", None) if r is not None else None
        if be:
            kinds.append(be if r is reader else f"local: {be}")
    if len(kinds) == 2 and kinds[1] == f"local: {kinds[0]}":
        kinds.pop()
    return f"bpf ({', '.join(kinds)})" if kinds else "bpf"


def _served(reader: Reader) -> List[str]:
    return [n for n, src in reader.sources.items() if src.startswith("bpf/")]


def _open_readers() -> Tuple[Reader, Reader]:
    """(hierarchical Reader, local Reader): every catalog stat, BPF only."""
    from .reader import Reader
    names = list(catalog.STATS)
    try:
        hier = Reader(stats=names, backend="bpf", shared_pins=False)
    except BpfUnavailable as e:
        raise VerifyUnavailable(f"the BPF backend cannot run here, so there is nothing to "
                                f"verify: {e}") from None
    try:
        local = Reader(stats=names, local=True, backend="bpf", shared_pins=False)
    except BaseException:
        hier.close()
        raise
    return hier, local


def _settle(probe: _Probe, version: int, min_wait: float, max_wait: float) -> float:
    """Wait until the probe's files hold still, and at least min_wait seconds
    (the kernel flushes stats every 2 s). Returns the seconds waited."""
    t0 = time.monotonic()
    last = None
    while True:
        now = [read_files(probe.cgroup(rel), version) for rel in PROBE_CGROUPS]
        waited = time.monotonic() - t0
        if (now == last and waited >= min_wait) or waited >= max_wait:
            return waited
        last = now
        time.sleep(0.25)


Key = Tuple[str, bool, str]     # (cgroup, local, method)


def verify(parent: Optional[str] = None, *, workload: Workload = Workload(),
           attempts: int = 8, cache_dir: str = "/var/tmp", settle_s: float = 2.2,
           timeout: float = 60.0) -> Result:
    """Compare every stat the BPF backend serves here with the kernel's files.

    parent: where the probe cgroup is made (default: this process's own
    memory cgroup). attempts: bracketed reads per cgroup before a stat that
    keeps moving is reported as a mismatch. cache_dir: where the page-cache
    and dirty files go (a real filesystem, not tmpfs; they are unlinked at
    once). settle_s: the least wait, seconds, for the probe to go quiet.
    timeout: seconds the workload may take to charge. Raises
    VerifyUnavailable when it cannot run (not root, no memory controller,
    BPF unavailable); leaves no cgroup, process, fd or pin behind.
    """
    t0 = time.monotonic()
    if os.geteuid() != 0:
        raise VerifyUnavailable("pymemcg verify needs root: it makes cgroups, runs processes "
                                "in them and loads BPF programs; run it as root")
    mount = memory_mount()
    if mount is None:
        raise VerifyUnavailable("no cgroup hierarchy on this host has the memory controller: "
                                "mount one (cgroup v2 with +memory, or v1 -o memory)")
    version = mount.version
    parent = parent or own_memory_cgroup()
    if not parent:
        raise VerifyUnavailable(f"this process is in no memory cgroup: pass parent= a "
                                f"directory under {mount.mountpoint}")
    parent = resolve_cgroup(parent).path
    hier, local = _open_readers()
    probe = _Probe(parent, version, workload, cache_dir, timeout)
    try:
        probe.open()
        waited = _settle(probe, version, settle_s, settle_s + 10)
        checks, served, rounds = _compare_probe(probe, version, hier, local, attempts)
        why_not = _why_not(probe, version, hier, local)
        backend = _bpf_backend(hier, local)
        read_method = hier.read_method
    finally:
        try:
            try:
                hier.close()
            finally:
                local.close()
        finally:
            probe.close()
    stats = [_summarise(name, checks.get(name, []), why_not.get(name, ""))
             for name in served]
    wl = {"cgroups": list(PROBE_CGROUPS), "oom_killed": probe.report.get("oom_killed"),
          "pids": probe.worker_pids, "settle_s": round(waited, 2), "rounds": rounds,
          **{k: v for k, v in workload.__dict__.items()}}
    return Result(platform.release(), version, backend, read_method, probe.path, stats, wl,
                  round(time.monotonic() - t0, 2))


def _compare_probe(probe: _Probe, version: int, hier: Reader, local: Reader, attempts: int
                   ) -> Tuple[Dict[str, List[Check]], List[str], int]:
    """Every check of every served stat, by name, the served names in catalog
    order, and the rounds of reads it took: single reads and tree walks,
    hierarchical and local, read again while a value moves."""
    readers = {False: (hier, _served(hier)), True: (local, _served(local))}
    served = [n for n in catalog.STATS if n in readers[False][1] or n in readers[True][1]]
    decided: Dict[Tuple[Key, str], Check] = {}
    moving: Dict[Tuple[Key, str], Check] = {}
    lag_since: Dict[Tuple[Key, str], float] = {}
    rels = PROBE_CGROUPS

    def expect(files: Mapping[str, Optional[str]], is_local: bool, rel: str) -> FileValues:
        return file_values(files, version, is_local, rel in LEAVES)[0]

    def settle_one(key: Key, bpf: Dict[str, Optional[int]], before: FileValues,
                   after: FileValues) -> None:
        rel, is_local, method = key
        names = [n for n in readers[is_local][1] if (key, n) not in decided]
        outcomes = compare(bpf, before, after, names)
        for n in names:
            if n not in after:
                continue
            if n in outcomes:
                outcome, got, want, why = outcomes[n]
                if outcome == MISMATCH and after[n][1].startswith(V1_KMEM_FILE):
                    # a live counter against a flushed stat: they agree once
                    # the kernel's next periodic flush has folded the stat in
                    age = time.monotonic() - lag_since.setdefault((key, n), time.monotonic())
                    if age <= FLUSH_PERIOD_S + 0.5:
                        moving[(key, n)] = Check(
                            rel, is_local, method, after[n][1], got, want, MISMATCH,
                            f"{why}; still so {age:.1f} s after it was first seen (the file is "
                            f"a live page counter, the stat is flushed every "
                            f"{FLUSH_PERIOD_S:g} s)")
                        continue
                decided[(key, n)] = Check(rel, is_local, method, after[n][1], got, want,
                                          outcome, why)
                moving.pop((key, n), None)
            else:
                was, now = before.get(n, (None, ""))[0], after[n][0]
                moving[(key, n)] = Check(
                    rel, is_local, method, after[n][1], bpf.get(n), now, MISMATCH,
                    f"the file's value moved in each of {attempts} reads (last: from {was} "
                    f"to {now}, BPF read {bpf.get(n)} between): the probe never went quiet")

    rounds = 0
    for attempt in range(attempts):
        rounds += 1
        # single reads: files, BPF (hierarchical and local), files
        for rel in rels:
            path = probe.cgroup(rel)
            files0 = read_files(path, version)
            recs = {is_local: r.read(path).as_dict() for is_local, (r, _) in readers.items()}
            files1 = read_files(path, version)
            for is_local in readers:
                settle_one((rel, is_local, "read"), recs[is_local],
                           expect(files0, is_local, rel), expect(files1, is_local, rel))
        # one tree walk of the probe per reader, bracketed the same way
        for is_local, (r, _) in readers.items():
            tree0 = {rel: read_files(probe.cgroup(rel), version) for rel in rels}
            snap = r.read_tree(probe.path)
            tree1 = {rel: read_files(probe.cgroup(rel), version) for rel in rels}
            root = snap.root
            for rel in rels:
                key = root if rel == "." else root.rstrip("/") + "/" + rel
                bpf = snap[key].as_dict() if key in snap else {}
                settle_one((rel, is_local, "read_tree"), bpf, expect(tree0[rel], is_local, rel),
                           expect(tree1[rel], is_local, rel))
        if not moving:
            break
        time.sleep(0.2 * (attempt + 1))

    checks: Dict[str, List[Check]] = {}
    for (_, name), check in list(decided.items()) + list(moving.items()):
        checks.setdefault(name, []).append(check)
    for name in checks:
        checks[name].sort(key=lambda c: (c.local, rels.index(c.cgroup), c.method))
    return checks, served, rounds


def _why_not(probe: _Probe, version: int, hier: Reader, local: Reader) -> Dict[str, str]:
    """Why a served stat has no file to compare with: the probe's reason,
    hierarchical first, then local (read from the now quiet files)."""
    files = read_files(probe.path, version)
    out: Dict[str, str] = {}
    served_h, served_l = set(_served(hier)), set(_served(local))
    for is_local, served in ((False, served_h), (True, served_l)):
        why = file_values(files, version, is_local, False)[1]
        for name in served:
            if name in why and why[name] != out.get(name):
                text = ("local values: " if is_local and name in out else "") + why[name]
                out[name] = "; ".join(filter(None, (out.get(name), text)))
    return out


def _summarise(name: str, checks: List[Check], why_not: str) -> StatResult:
    against = list(dict.fromkeys(c.against for c in checks))
    if not checks:
        return StatResult(name, NOT_COMPARED, None, None, why_not or "no kernel file prints "
                          "it here", against)
    bad = [c for c in checks if c.outcome == MISMATCH]
    shown = bad[0] if bad else max(checks, key=lambda c: c.file or 0)
    why = f"{shown.cgroup} {'local' if shown.local else 'hierarchical'} ({shown.method}): " \
          f"{shown.why}" if bad else ""
    return StatResult(name, MISMATCH if bad else EXACT, shown.bpf, shown.file, why, against,
                      checks)


# --- output ---

def format_table(result: Result) -> str:
    """The result as a plain-text table, one row a served stat, and a summary."""
    c = result.counts
    lines = [f"pymemcg verify: Linux {result.kernel}, cgroup v{result.cgroup_version}, "
             f"{result.backend}, single reads by {result.read_method}",
             f"probe: {len(result.workload['cgroups'])} cgroups under "
             f"{os.path.dirname(result.probe)} (OOM kill "
             f"{'done' if result.workload.get('oom_killed') else 'did not happen'}), "
             f"settled {result.workload['settle_s']} s", ""]
    rows = [("STAT", "OUTCOME", "BPF", "FILE", "AGAINST / WHY")]
    for s in result.stats:
        how = s.why if s.outcome != EXACT else \
            f"{len(s.checks)} checks: {', '.join(s.against)}"
        rows.append((s.name, s.outcome, "-" if s.bpf is None else str(s.bpf),
                     "-" if s.file is None else str(s.file), how))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[4])
    lines += ["", f"{c['served']} stats served by BPF: {c[EXACT]} exact ({c['exact_nonzero']} "
                  f"with a nonzero value), {c[MISMATCH]} mismatched, {c[NOT_COMPARED]} not "
                  f"compared (no kernel file prints them here); {c['comparisons']} "
                  f"comparisons in {result.duration_s} s",
              "verdict: " + ("every compared stat is exact" if result.ok else
                             f"{c[MISMATCH]} stat(s) differ from the kernel's files")]
    return "\n".join(lines) + "\n"


def to_json(result: Result, checks: bool = True) -> str:
    """The result as JSON (see Result.as_dict)."""
    return json.dumps(result.as_dict(checks), indent=2) + "\n"
