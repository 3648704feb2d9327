"""The probe: the cgroups verify makes under a parent and the workload
process that charges them (workload.py), from their making to their removal.

`Probe.open()` makes `probe/work`, `probe/mid/leaf` and `probe/oom` (a small
limit, for an OOM kill), starts the workload and waits until it has charged
them; `Probe.close()` ends the workload and its workers and removes the
cgroups, deepest first. Sizes are bytes.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import Error, VerifyUnavailable
from .files import read_files

MiB = 1 << 20
PROBE_PREFIX = "pymemcg-verify-"

#: the probe's cgroups, relative to the probe, parents first; leaves have no children
PROBE_CGROUPS = (".", "work", "mid", "mid/leaf", "oom")
LEAVES = ("work", "mid/leaf", "oom")

# The workload program (workload.py), run by its path rather than with -m:
# the child then imports only the standard library, not pymemcg, and needs
# no sys.path that finds this package. A script's directory is first on its
# sys.path, so no module here may take a standard library module's name.
WORKLOAD_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload.py")


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
    # cgroup v2: memory.high of `oom`, just below its limit: the hog is
    # throttled (mem_cgroup_handle_over_high, a memory stall of about 0.5 s
    # in all) on its way to the limit, so that memory.pressure has real,
    # non-zero values to compare
    oom_high: int = 15 * MiB
    oom_cache: int = 8 * MiB     # clean page cache in oom, for reclaim to take
    hog: int = 96 * MiB
    # protections and limits set on the probe (none reached; v2: on work, and
    # memory.low and memory.oom.group on mid; v1: work's soft limit, mid's limit)
    min: int = 4 * MiB
    low: int = 8 * MiB
    high: int = 512 * MiB        # also mid's limit on v1, twice the probe's memory.max
    swap_high: int = 64 * MiB
    zswap_max: int = 32 * MiB
    soft_limit: int = 32 * MiB


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class Probe:
    """The probe cgroups and the driver (the workload process, workload.py);
    `close()` removes both."""

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
            _write(os.path.join(oom, "memory.high"), str(self.workload.oom_high))
            if os.path.exists(os.path.join(oom, "memory.swap.max")):
                _write(os.path.join(oom, "memory.swap.max"), "0")
        self._set_limits()
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
            [sys.executable, WORKLOAD_PROGRAM, json.dumps(cfg)], stdin=subprocess.PIPE,
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

    def _set_limits(self) -> None:
        """Protections and limits on the probe, none of them reached by the
        workload, so that verify compares set values (and "max" elsewhere)
        rather than defaults alone; a file this kernel lacks is skipped."""
        w = self.workload
        if self.version == 1:
            settings = {"work": {"memory.soft_limit_in_bytes": w.soft_limit},
                        "mid": {"memory.limit_in_bytes": w.high}}
        else:
            settings = {
                ".": {"memory.max": w.high * 2},
                "work": {"memory.min": w.min, "memory.low": w.low, "memory.high": w.high,
                         "memory.swap.high": w.swap_high, "memory.zswap.max": w.zswap_max},
                "mid": {"memory.low": w.low, "memory.oom.group": 1},
            }
        for rel, files in settings.items():
            for fname, value in files.items():
                path = os.path.join(self.cgroup(rel), fname)
                if os.path.exists(path):
                    _write(path, str(value))

    def wait_until_quiet(self, min_wait: float, max_wait: float) -> float:
        """Wait until the probe's files hold still, and at least min_wait seconds
        (the kernel flushes stats every 2 s). Returns the seconds waited."""
        t0 = time.monotonic()
        last = None
        while True:
            now = [read_files(self.cgroup(rel), self.version) for rel in PROBE_CGROUPS]
            waited = time.monotonic() - t0
            if (now == last and waited >= min_wait) or waited >= max_wait:
                return waited
            last = now
            time.sleep(0.25)

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
