#!/usr/bin/env python3
"""Kernel matrix: `pymemcg verify` and pymemcg's parity tests on
Debian's 6.1 to 7.3 kernels under qemu (software emulation), and natively on
this host.

    python3 vm/matrix.py [run]      fetch kernels, boot every guest, run natively,
                                    write build/vm/results/*.json and docs/matrix.md;
                                    exit 1 if anything failed
    python3 vm/matrix.py run --guests 6.1-v1 --no-native   a subset (docs untouched)
    python3 vm/matrix.py fetch      only download and unpack the pinned kernels
    python3 vm/matrix.py report     regenerate docs/matrix.md from results
    python3 vm/matrix.py latest     newest kernel packages apt knows (to update the pins)
    python3 vm/matrix.py shell --guest 6.1-v2 'python3 -c "import pymemcg"'
                                    boot one guest, run a command there, print the console

This file is the command line and the list of guests; the work is in
    kernels.py    the pinned kernels (version, sha256) and fetching them with apt
    initramfs.py  busybox, vm/init.sh and the kernel's modules as the guest's initramfs
    boot.py       virtiofsd and qemu: one guest booted until it powers off
    native.py     the same run on this host's kernel
    results.py    what a run left, PASS/FAIL, build/vm/results/*.json, the verdict
    report.py     docs/matrix.md
    workspace.py  paths under build/vm, the log line, the error type, the run lock

In each guest vm/guest_run.py runs `pymemcg verify --format json` (every
stat BPF serves there against the kernel's own files; a mismatch fails the
guest) and tests/test_parity.py with PYMEMCG_REQUIRE_BPF=1, and writes
result.json; where the kernel lists its items in kallsyms, verify runs again
with PYMEMCG_KALLSYMS=0 (built-in tables and enum alone) and the two slot
sources must agree. 7.0-7.3 have the memcg kfuncs, so they run the kfunc
backend and the flushing programs. The guests run concurrently (each one
host thread, --jobs at a time).

Only the standard library; run as root (unshare, bind mounts, bpf).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict

import boot
from initramfs import static_busybox
from kernels import KERNELS, fetch, latest
from native import run_native
from report import write_report
from userland import userland
from results import judge_guest, save, summarize
from workspace import REPO, RESULTS, MatrixError, acquire_lock, log

# guest name -> (kernel series, cgroup version): the newest point release of
# every Debian series, on cgroup v2, and 6.1 on v1 too. Debian's kernels from
# 6.12 on have no CONFIG_MEMCG_V1, so there is no other v1 guest.
GUESTS: Dict[str, tuple] = {
    "6.1-v2": ("6.1", 2),
    "6.1-v1": ("6.1", 1),
    "6.12-v2": ("6.12", 2),
    "6.16-v2": ("6.16", 2),
    "6.17-v2": ("6.17", 2),
    "6.18-v2": ("6.18", 2),
    "6.19-v2": ("6.19", 2),
    "7.0-v2": ("7.0", 2),
    "7.1-v2": ("7.1", 2),
    "7.2-v2": ("7.2", 2),
    "7.3-v2": ("7.3", 2),
    # arm64 under qemu-system-aarch64, with Debian's arm64 Python and the
    # aarch64 wheel (vm/userland.py)
    "6.1-aarch64-v2": ("6.1-aarch64", 2),
    "6.12-aarch64-v2": ("6.12-aarch64", 2),
    "7.3-aarch64-v2": ("7.3-aarch64", 2),
    # two NUMA nodes (qemu -numa, memory split over them): memory.numa_stat
    # per node, with verify's probe interleaving its memory over both
    "6.12-v2-numa": ("6.12", 2),
    "6.1-v1-numa": ("6.1", 1),
    "7.3-aarch64-v2-numa": ("7.3-aarch64", 2),
}
#: guests booted with more than one NUMA node, and how many
NUMA_NODES: Dict[str, int] = {"6.12-v2-numa": 2, "6.1-v1-numa": 2, "7.3-aarch64-v2-numa": 2}
# `make matrix-quick`: the oldest on v1, the first compacted one, the newest
QUICK = ("6.1-v1", "6.12-v2", "7.3-v2")

TEST_TIMEOUT = 600        # pytest inside a guest, seconds (it takes 1-2.5 min)


def run_guest(name: str, python: str, timeout: float, cmd: str = "") -> dict:
    """Fetch the guest's kernel, boot it, and judge what it left."""
    key, cgv = GUESTS[name]
    k = KERNELS[key]
    root = fetch(k)
    console = boot.run_dir(name) / "console.log"
    res: dict = {"guest": name, "kernel_series": k.series, "cgroup": cgv,
                 "kernel_package": f"{k.package}={k.version}", "where": boot.WHERE,
                 "arch": k.arch, "console_log": str(console.relative_to(REPO)),
                 "numa_nodes": NUMA_NODES.get(name, 1)}
    users = None
    if k.arch != platform.machine():
        users, python, res["userland"] = userland(k.arch)
    b = boot.boot(name, root, cgv, python, timeout, cmd, boot.ARCHES[k.arch], users,
                  NUMA_NODES.get(name, 1))
    res["status"] = b.status
    if b.qemu_rc is not None:
        res["qemu_rc"] = b.qemu_rc
    res["wall_s"] = b.wall_s
    return judge_guest(res, b.console, b.outdir / "result.json")


def cmd_run(args) -> int:
    if os.geteuid() != 0:
        raise MatrixError("run as root (bind mounts for virtiofsd, BPF in the native run)")
    python = os.path.abspath(args.python)
    if not os.access(python, os.X_OK):
        raise MatrixError(f"{python}: no such interpreter")
    names = (list(QUICK) if args.guests == "quick" else args.guests.split(",")) \
        if args.guests else list(GUESTS)
    for n in names:
        if n not in GUESTS:
            raise MatrixError(f"unknown guest {n!r}; guests: {', '.join(GUESTS)}")
    qemus = {boot.ARCHES[KERNELS[GUESTS[n][0]].arch].qemu for n in names}
    for tool in (*sorted(qemus), "mkfs.ext4", "unshare", "dpkg-deb", "apt-get"):
        if not shutil.which(tool):
            raise MatrixError(f"{tool} not found: make vm-deps")
    boot.find_virtiofsd()
    static_busybox()
    full = not args.guests and not args.no_native
    lock = acquire_lock()
    if full and RESULTS.exists():
        shutil.rmtree(RESULTS)   # the report shows this run only
    t0 = time.monotonic()
    fetch_errors = {}
    for s in sorted({GUESTS[n][0] for n in names}):
        try:
            fetch(KERNELS[s])
        except (MatrixError, subprocess.CalledProcessError) as e:
            fetch_errors[s] = f"kernel {KERNELS[s].package}: {e}"
            log(f"FAILED to fetch {KERNELS[s].package}: {e}")

    results = []
    if not args.no_native:
        log(f"native: pymemcg verify and tests/test_parity.py on this host "
            f"({platform.release()})")
        r = run_native(python, args.timeout)
        save(r)
        log(f"native: {'PASS' if r.get('passed') else 'FAIL'} in {r['wall_s']} s")
        results.append(r)
    for n in names:
        stale = RESULTS / f"{n}.json"
        if stale.exists():
            stale.unlink()
    jobs = max(1, min(args.jobs or len(names), len(names)))
    log(f"booting {', '.join(names)} ({jobs} at a time, {boot.GUEST_CPUS} vCPU and "
        f"{boot.GUEST_MEM} each)")

    def one(n):
        try:
            if GUESTS[n][0] in fetch_errors:
                raise MatrixError(fetch_errors[GUESTS[n][0]])
            r = run_guest(n, python, args.timeout)
        except MatrixError as e:
            series, cgv = GUESTS[n]
            k = KERNELS[series]
            r = {"guest": n, "kernel_series": k.series, "cgroup": cgv, "passed": False,
                 "error": str(e), "where": boot.WHERE, "arch": k.arch}
        save(r)
        log(f"{n}: {'PASS' if r.get('passed') else 'FAIL'} in {r.get('wall_s', '?')} s")
        return r

    ex = concurrent.futures.ThreadPoolExecutor(jobs)
    try:
        futures = [ex.submit(one, n) for n in names]
        results += [f.result() for f in futures]
    finally:
        boot.cleanup_live()   # on an interrupt: ends the guests, so the workers return
        ex.shutdown(wait=True, cancel_futures=True)
    log(f"matrix took {time.monotonic() - t0:.0f} s")
    lock.close()
    if args.report is None:
        args.report = full
    if args.report:
        write_report()
    return 0 if summarize(results) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run the matrix (the default)")
    r.add_argument("--python", default=sys.executable,
                   help="the interpreter whose pymemcg install is tested (default: this one)")
    r.add_argument("--guests", default="",
                   help=f"comma list, or quick ({','.join(QUICK)}); default all: "
                        f"{','.join(GUESTS)}")
    r.add_argument("--no-native", action="store_true", help="skip the run on this host")
    r.add_argument("--jobs", type=int, default=0,
                   help="guests at a time (default: all; each is one host thread, and "
                        "running them together finishes soonest even on 2 CPUs)")
    r.add_argument("--timeout", type=float, default=TEST_TIMEOUT,
                   help="pytest limit per guest, seconds")
    r.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help="write docs/matrix.md (default: on a full run)")
    sh = sub.add_parser("shell", help="boot one guest, run a shell command in it, print the "
                                      "console (debugging)")
    sh.add_argument("--guest", default="6.12-v2", choices=list(GUESTS))
    sh.add_argument("--python", default=sys.executable)
    sh.add_argument("--timeout", type=float, default=600)
    sh.add_argument("command", help="run with sh -c in the repo, in the guest's chroot")
    sub.add_parser("fetch", help="download and unpack the pinned kernels")
    sub.add_parser("report", help="docs/matrix.md from build/vm/results")
    sub.add_parser("latest", help="newest cloud kernels apt knows, to update the pins")
    args = ap.parse_args(sys.argv[1:] or ["run"])
    try:
        if args.cmd == "fetch":
            for k in KERNELS.values():
                log(f"{k.package}: {fetch(k)}")
        elif args.cmd == "report":
            write_report()
        elif args.cmd == "latest":
            latest()
        elif args.cmd == "shell":
            lock = acquire_lock()
            try:
                r = run_guest(args.guest, os.path.abspath(args.python), args.timeout,
                              args.command)
            finally:
                boot.cleanup_live()
                lock.close()
            print((REPO / r["console_log"]).read_text(errors="replace"))
            return 0 if r.get("done_s") else 1
        else:
            return cmd_run(args)
    except MatrixError as e:
        print(f"matrix: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
