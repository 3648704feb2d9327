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

`pymemcg.verify` is this package's `verify()` (the package is
`pymemcg.parity`, a name no function shadows):

    results.py     Check, StatResult, Result; EXACT, MISMATCH, NOT_COMPARED
    files.py       the kernel's files read into values by stat name
    compare.py     BPF against the files, bracketed reads; outcomes per stat
    probe.py       the probe cgroups and the workload process, made and removed
    workload.py    the workload program itself (run in the child process)
"""

from __future__ import annotations

import os
import platform
import time
from typing import TYPE_CHECKING, List, Optional, Tuple

from .. import catalog
from ..cgroupfs import memory_mount, own_memory_cgroup, resolve_cgroup
from ..errors import BpfUnavailable, VerifyUnavailable
from .compare import compare_probe, summarise, why_not_compared
from .probe import PROBE_CGROUPS, PROBE_PREFIX, Probe, Workload
from .results import EXACT, MISMATCH, NOT_COMPARED, Check, Result, StatResult

if TYPE_CHECKING:
    from ..reader import Reader

__all__ = ["verify", "Result", "StatResult", "Check", "Workload", "EXACT", "MISMATCH",
           "NOT_COMPARED", "PROBE_CGROUPS", "PROBE_PREFIX"]


def _bpf_backend(reader: Reader, local_reader: Optional[Reader]) -> str:
    """What serves the readers, as the result names it: "bpf (core)",
    "bpf (kfunc, local: core)"."""
    kinds = []
    for r in (reader, local_reader):
        be = getattr(r._be(), "kernel_backend", None) if r is not None else None
        if be:
            kinds.append(be if r is reader else f"local: {be}")
    if len(kinds) == 2 and kinds[1] == f"local: {kinds[0]}":
        kinds.pop()
    return f"bpf ({', '.join(kinds)})" if kinds else "bpf"


def _open_readers() -> Tuple[List[Reader], List[Reader]]:
    """(hierarchical Readers, local Readers), BPF only: every catalog stat,
    then memory.numa_stat's items on every node with memory, in readers of
    as many nodes as a record holds."""
    from ..reader import Reader
    opened: List[Reader] = []
    out: Tuple[List[Reader], List[Reader]] = ([], [])
    try:
        for is_local in (False, True):
            try:
                r = Reader(stats=list(catalog.STATS), local=is_local, backend="bpf",
                           shared_pins=False)
            except BpfUnavailable as e:
                raise VerifyUnavailable(f"the BPF backend cannot run here, so there is "
                                        f"nothing to verify: {e}") from None
            opened.append(r)
            out[is_local].append(r)
            # --- NUMA ---
            for names in _numa_groups(r.cgroup_version):
                opened.append(Reader(stats=names, local=is_local, backend="bpf",
                                     shared_pins=False))
                out[is_local].append(opened[-1])
    except BaseException:
        for r in opened:
            r.close()
        raise
    return out


def _numa_groups(version: int) -> List[List[str]]:
    """Every NUMA stat of this host, in lists that each fit a record."""
    from .. import numa
    from .._record_h import MAX_STATS
    names = numa.expand(numa.items(version), version, numa.memory_nodes())
    return [names[i:i + MAX_STATS] for i in range(0, len(names), MAX_STATS)]


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
    probe = Probe(parent, version, workload, cache_dir, timeout)
    try:
        probe.open()
        waited = probe.wait_until_quiet(settle_s, settle_s + 10)
        checks, served, rounds = compare_probe(probe, version, hier, local, attempts)
        why_not = why_not_compared(probe, version, hier, local)
        backend = _bpf_backend(hier[0], local[0])
        read_method = hier[0].read_method
    finally:
        try:
            for r in hier + local:
                r.close()
        finally:
            probe.close()
    stats = [summarise(name, checks.get(name, []), why_not.get(name, ""))
             for name in served]
    wl = {"cgroups": list(PROBE_CGROUPS), "oom_killed": probe.report.get("oom_killed"),
          "pids": probe.worker_pids, "settle_s": round(waited, 2), "rounds": rounds,
          **{k: v for k, v in workload.__dict__.items()}}
    return Result(platform.release(), version, backend, read_method, probe.path, stats, wl,
                  round(time.monotonic() - t0, 2))

