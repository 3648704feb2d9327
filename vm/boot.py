"""Booting one guest: its initramfs, a scratch disk, virtiofsd sharing this
host's root read-only, and qemu under software emulation (TCG), until the
guest powers off or its time runs out. What the guest left behind is read by
results.py.

The guest's userspace is this host's root filesystem, shared read-only over
virtiofs (the cloud kernels have no 9p): virtiofsd runs in a private mount
namespace on a read-only bind of /, with only build/vm/out/<guest>/
writable, so the guest runs the very Python, pymemcg install and tests that
users of this host have. A scratch ext4 disk holds /var/tmp (the workloads'
page cache). Each guest is one host thread (-smp 1) with 2 GiB; the kernels
keep Debian's defaults (THP "always") except mitigations=off, which only
makes emulation faster. MATRIX_KERNEL_ARGS adds kernel arguments.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from initramfs import build_initramfs, guest_modules
from kernels import vmlinuz
from workspace import BUILD, REPO, MatrixError

WHERE = "qemu (TCG)"


@dataclasses.dataclass(frozen=True)
class Arch:
    """How qemu boots a guest of one architecture under TCG."""
    name: str                   # as platform.machine() says it: "x86_64"
    qemu: str                   # the qemu binary
    machine: Tuple[str, ...]    # -machine and -cpu arguments ({mem}: the memory backend id)
    console: str                # the kernel's console device
    image: str                  # what -kernel takes: "bzImage" (x86) or a raw arm64 "Image"

    def check_image(self, path: Path) -> None:
        """Refuse a kernel file that is not this architecture's image format
        (a wrong package pinned would otherwise fail as a silent boot hang)."""
        with open(path, "rb") as f:
            head = f.read(0x210)
        ok = {"bzImage": head[0x202:0x206] == b"HdrS",
              "Image": head[0x38:0x3c] == b"ARM\x64"}[self.image]
        if not ok:
            raise MatrixError(f"{path}: not a {self.name} {self.image}")


ARCHES: Dict[str, Arch] = {a.name: a for a in (
    Arch("x86_64", "qemu-system-x86_64", ("-machine", "pc,memory-backend={mem}", "-cpu", "max"),
         "ttyS0", "bzImage"),
    # measured (FIELD_NOTES): pointer authentication emulated the cheap way
    Arch("aarch64", "qemu-system-aarch64",
         ("-machine", "virt,memory-backend={mem}", "-cpu", "max,pauth-impdef=on"),
         "ttyAMA0", "Image"),
)}
ARCH = ARCHES["x86_64"]   # the architecture of every guest today
GUEST_MEM = "2G"
GUEST_CPUS = 1
BOOT_MARGIN = 180         # on top of the test limit, for boot and the stats collection
SCRATCH_SIZE = 512 << 20  # the guest's /var/tmp disk
SCRATCH_DEVICE = "/dev/nvme0n1"
KERNEL_ARGS = os.environ.get("MATRIX_KERNEL_ARGS", "")


def find_virtiofsd() -> List[str]:
    """The virtiofsd command, as a prefix; C (qemu <= 7.2) or Rust flavour."""
    for cand in ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"):
        if os.access(cand, os.X_OK):
            return [cand]
    raise MatrixError("virtiofsd not found: apt-get install qemu-system-x86 (Debian 12 ships "
                      "it in qemu-system-common as /usr/lib/qemu/virtiofsd)")


def mount_of(path: str) -> str:
    """The mount point that holds `path` (longest matching entry of mountinfo)."""
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
                best = mp
    return best


def start_virtiofsd(view: Path, outdir: Path, sock: Path, extra_paths: List[str],
                    logfile: Path) -> subprocess.Popen:
    """virtiofsd exporting a read-only view of / in which only `outdir` is writable.

    In a private mount namespace: a non-recursive bind of / (so the host's
    /proc, /sys and /dev are not exported), made read-only; the mounts that
    hold extra_paths (the repo, Python) if they are not on /, read-only too;
    outdir bound writable on top.
    """
    view.mkdir(parents=True, exist_ok=True)
    binds = sorted({mount_of(os.path.realpath(p)) for p in extra_paths} - {"/"})
    script = ['set -e', 'mount --make-rprivate /', 'mount --bind / "$V"',
              'mount -o remount,bind,ro "$V"']
    for i, b in enumerate(binds):
        script += [f'mount --bind "$B{i}" "$V$B{i}"', f'mount -o remount,bind,ro "$V$B{i}"']
    script += ['mount --bind "$O" "$V$O"']
    vfsd = find_virtiofsd()
    if vfsd[0].startswith("/usr/libexec"):   # the Rust one
        cmd = vfsd + ["--socket-path", str(sock), "--shared-dir", str(view), "--cache", "always",
                      "--sandbox", "namespace", "--log-level", "warn"]
    else:
        cmd = vfsd + [f"--socket-path={sock}", "-o", f"source={view}", "-o", "cache=always",
                      "-o", "sandbox=namespace", "-o", "log_level=warn"]
    script.append('exec "$@"')
    env = dict(os.environ, V=str(view), O=str(outdir), **{f"B{i}": b for i, b in enumerate(binds)})
    if sock.exists():
        sock.unlink()
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             "\n".join(script), "sh", *cmd], env=env,
                            stdout=open(logfile, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    for _ in range(200):
        if sock.exists():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise MatrixError(f"virtiofsd did not start:\n{logfile.read_text(errors='replace')}")


def stop(proc: Optional[subprocess.Popen], grace: float = 5.0) -> None:
    """End a process we started (its own session/group), politely, then not."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# the processes this run started (qemu, virtiofsd), so that an interrupt ends them
_live: List[subprocess.Popen] = []
_live_lock = threading.Lock()
_stopping = threading.Event()


def _track(proc: subprocess.Popen) -> subprocess.Popen:
    """Remember a process we started, so that an interrupted run ends it."""
    with _live_lock:
        _live.append(proc)
    if _stopping.is_set():
        stop(proc, grace=1)
        raise MatrixError("interrupted")
    return proc


def cleanup_live() -> None:
    """End every guest and virtiofsd still running (an interrupted run)."""
    _stopping.set()
    with _live_lock:
        procs = list(_live)
    for p in procs:
        stop(p, grace=2)


# what init.sh mounts over in the guest's view of the host's root
GUEST_MOUNTS = ("/tmp", "/run", "/var/tmp", "/dev", "/proc", "/sys")


def hidden_paths(paths: List[str]) -> List[str]:
    """The directories among `paths` (and an interpreter's venv and prefix) that
    the guest's own mounts would hide, outermost only."""
    dirs = set()
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isfile(p):   # an interpreter: its venv (bin/..) and real prefix
            dirs.add(os.path.dirname(os.path.dirname(p)))
            dirs.add(os.path.dirname(os.path.dirname(os.path.realpath(p))))
        else:
            dirs.add(p)
    hidden = sorted(d for d in dirs
                    if any(d == m or d.startswith(m + "/") for m in GUEST_MOUNTS))
    for d in hidden:
        if ":" in d or "\n" in d:
            raise MatrixError(f"{d}: the guest cannot hold a path with ':' or a newline")
    return [d for d in hidden if not any(d.startswith(o + "/") for o in hidden if o != d)]


@dataclasses.dataclass
class Boot:
    """What one boot left: the console log, the guest's writable directory
    (its result.json), how qemu ended and how long it all took."""
    console: Path
    outdir: Path
    status: str = ""
    qemu_rc: Optional[int] = None
    wall_s: float = 0.0


def run_dir(name: str) -> Path:
    return BUILD / "run" / name


def numa_args(nodes: int, arch: Arch) -> List[str]:
    """qemu arguments for GUEST_MEM split evenly over `nodes` NUMA nodes, each
    a shared memfd backend of its own (vhost-user needs every byte shared);
    the CPU on node 0. With one node: the single backend the machine names."""
    if nodes <= 1:
        return [*(a.format(mem="mem") for a in arch.machine),
                "-object", f"memory-backend-memfd,id=mem,size={GUEST_MEM},share=on"]
    total = int(GUEST_MEM.rstrip("G")) << 10          # MiB
    machine = [a.replace(",memory-backend={mem}", "") for a in arch.machine]
    out = list(machine)
    for n in range(nodes):
        out += ["-object", f"memory-backend-memfd,id=mem{n},size={total // nodes}M,share=on",
                "-numa", f"node,nodeid={n},memdev=mem{n}" + (",cpus=0" if n == 0 else "")]
    return out


def boot(name: str, root: Path, cgroup: int, python: str, timeout: float,
         cmd: str = "", arch: Arch = ARCH, userland: Optional[Path] = None,
         numa_nodes: int = 1) -> Boot:
    """Boot guest `name` on the kernel unpacked in `root`, with cgroup
    version `cgroup`, running vm/guest_run.py under `python` (or `cmd`
    instead, for debugging), and wait until it ends. `userland`: the root
    directory of another architecture's userland (vm/userland.py), which
    the guest chroots into instead of this host's root; `python` is then
    its venv's, running the installed wheel. numa_nodes: the guest's NUMA
    nodes, its memory split evenly over them."""
    run = run_dir(name)
    outdir = BUILD / "out" / name
    for d in (run, outdir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    b = Boot(console=run / "console.log", outdir=outdir)

    if userland is not None:
        # mount points of the repository and the results in the userland
        # (the guest sees the share read-only)
        for d in (REPO, outdir):
            (userland / str(d).lstrip("/")).mkdir(parents=True, exist_ok=True)
    conf = {"MATRIX_KEEP": ":".join(hidden_paths([str(REPO)] + ([] if userland else [python]))),
            "MATRIX_ROOT": str(userland or ""),
            "MATRIX_RUN_ARGS": "--installed" if userland else "",
            "MATRIX_CGROUP": str(cgroup), "MATRIX_PYTHON": python, "MATRIX_REPO": str(REPO),
            "MATRIX_OUT": str(outdir), "MATRIX_WHERE": WHERE,
            "MATRIX_TEST_TIMEOUT": str(int(timeout)), "MATRIX_CMD": cmd,
            "MATRIX_SCRATCH": SCRATCH_DEVICE}
    initrd = run / "initrd.gz"
    build_initramfs(guest_modules(root), conf, initrd,
                    str(userland / "bin" / "busybox") if userland else None)
    scratch = run / "scratch.img"
    with open(scratch, "wb") as f:
        f.truncate(SCRATCH_SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "scratch", str(scratch)], check=True,
                   capture_output=True)

    kernel = vmlinuz(root)
    arch.check_image(kernel)
    sock = run / "virtiofs.sock"
    vfsd = qemu = None
    t0 = time.monotonic()
    try:
        shared = [str(REPO), str(userland)] if userland else [str(REPO), python, sys.prefix]
        vfsd = _track(start_virtiofsd(run / "view", outdir, sock, shared,
                                      run / "virtiofsd.log"))
        append = (f"console={arch.console} panic=-1 loglevel=4 rdinit=/init mitigations=off "
                  f"{KERNEL_ARGS}")
        accel = "tcg" + (",thread=multi" if GUEST_CPUS > 1 else "")
        qemu_cmd = [
            arch.qemu, "-accel", accel,
            "-smp", str(GUEST_CPUS), "-m", GUEST_MEM,
            # vhost-user (virtiofsd) needs the guest's memory shared
            *numa_args(numa_nodes, arch),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-chardev", f"file,id=con,path={b.console}", "-serial", "chardev:con",
            "-chardev", f"socket,id=vfs,path={sock}",
            "-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot",
            # the scratch disk on NVMe, which every Debian cloud kernel has built in
            "-drive", f"file={scratch},if=none,id=scratch,format=raw,cache=unsafe",
            "-device", "nvme,drive=scratch,serial=pmcscratch",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", append.strip()]
        (run / "qemu.cmd").write_text(shlex.join(qemu_cmd) + "\n")
        qemu = _track(subprocess.Popen(qemu_cmd, stdout=open(run / "qemu.log", "wb"),
                                       stderr=subprocess.STDOUT, start_new_session=True))
        limit = timeout + BOOT_MARGIN
        try:
            qrc = qemu.wait(limit)
            b.status = "exited"
            b.qemu_rc = qrc
        except subprocess.TimeoutExpired:
            b.status = f"timed out after {limit:.0f} s"
    finally:
        stop(qemu)
        stop(vfsd)
        b.wall_s = round(time.monotonic() - t0, 1)
    return b
