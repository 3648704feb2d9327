#!/usr/bin/env python3
"""Kernel matrix: `pymemcg verify` and pymemcg's parity tests on Debian's
6.1, 6.12 and 7.2 kernels under qemu (software emulation), and natively on
this host.

    python3 vm/matrix.py [run]      fetch kernels, boot every guest, run natively,
                                    write build/vm/results/*.json, docs/matrix.md and
                                    the README block; exit 1 if anything failed
    python3 vm/matrix.py run --guests 6.1-v1 --no-native   a subset (docs untouched)
    python3 vm/matrix.py fetch      only download and unpack the pinned kernels
    python3 vm/matrix.py report     regenerate docs/matrix.md + README from results
    python3 vm/matrix.py latest     newest kernel packages apt knows (to update the pins)
    python3 vm/matrix.py shell --guest 6.1-v2 'python3 -c "import pymemcg"'
                                    boot one guest, run a command there, print the console

How a guest runs: the kernel is a pinned Debian cloud kernel package,
downloaded with `apt-get download` (6.1, 6.12: this host's bookworm
sources) or from Debian's pool over HTTPS (7.2: trixie-backports, which this
host's apt does not know), sha256-checked and unpacked with `dpkg-deb -x` into
build/vm/ (never installed). 7.2 is the matrix's kernel with the memcg
kfuncs (Linux 7.0+), so it runs the kfunc backend and the flushing programs. The initramfs is busybox-static, vm/init.sh and
the kernel's own virtio/virtiofs modules. The guest's userspace is this
host's root filesystem, shared read-only over virtiofs (the cloud kernels
have no 9p): virtiofsd runs in a private mount namespace on a read-only bind
of /, with only build/vm/out/<guest>/ writable, so the guest runs the very
Python, pymemcg install and tests that users of this host have. A scratch
ext4 disk holds /var/tmp (the workloads' page cache). vm/guest_run.py runs
`pymemcg verify --format json` (every stat BPF serves there against the
kernel's own files; a mismatch fails the guest) and tests/test_parity.py with
PYMEMCG_REQUIRE_BPF=1, and writes result.json.
The guests run concurrently (each one host thread, -smp 1, 2 GiB); the
kernels keep Debian's defaults (THP "always") except mitigations=off, which
only makes emulation faster. MATRIX_KERNEL_ARGS adds kernel arguments.

Only the standard library; run as root (unshare, bind mounts, bpf).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "vm"
RESULTS = BUILD / "results"
DOC = REPO / "docs" / "matrix.md"
README = REPO / "README.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


# --- The pins: change these (and only these) to move the matrix to other
# --- kernels. `python3 vm/matrix.py latest` prints the newest ones apt knows.
@dataclasses.dataclass(frozen=True)
class Kernel:
    series: str     # "6.1"
    package: str    # Debian binary package
    version: str    # its exact Debian version
    sha256: str     # of the .deb ("" when `pool` lists the files)
    # (path under POOL_URL, sha256) of each .deb, for kernels from suites this
    # host's apt does not carry; Debian 14 splits image and modules
    pool: tuple = ()


KERNELS: Dict[str, Kernel] = {k.series: k for k in (
    Kernel("6.1", "linux-image-6.1.0-56-cloud-amd64", "6.1.192-2",
           "e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee"),
    Kernel("6.12", "linux-image-6.12.117+deb12-cloud-amd64", "6.12.117-1~deb12u1",
           "5195b288dec79e2981d6b84457f38b7ce7310a2d702930ec7d07209c7f78ce37"),
    # trixie-backports: it keeps several 7.2.x at a time, unstable only the newest
    Kernel("7.2", "linux-image-7.2.12+deb13-cloud-amd64", "7.2.12-1~bpo13+1", "", pool=(
        ("main/l/linux-signed-amd64/linux-binary-7.2.12+deb13-cloud-amd64_7.2.12-1~bpo13+1_amd64"
         ".deb", "aa6720823145e351d3c817c95fe58d89995a2bcba4978ad2418c36a1c272f795"),
        ("main/l/linux/linux-modules-7.2.12+deb13-cloud-amd64_7.2.12-1~bpo13+1_amd64.deb",
         "2f15b42b88ae56836b5fb3ac74c6cb795047891a5a25e5e69dedf8805b54017d"),
        ("main/l/linux/linux-base-7.2.12+deb13-cloud-amd64_7.2.12-1~bpo13+1_amd64.deb",
         "e9f6b719bb96f989fce7a61e78580b24de4e824b3c9f656db7c3169dbb45a25a"))),
)}
POOL_URL = "https://deb.debian.org/debian/pool/"

# guest name -> (kernel series, cgroup version). Debian's 6.12 has no
# CONFIG_MEMCG_V1, so there is no 6.12-v1.
GUESTS: Dict[str, tuple] = {
    "6.1-v2": ("6.1", 2),
    "6.12-v2": ("6.12", 2),
    "6.1-v1": ("6.1", 1),
    "7.2-v2": ("7.2", 2),
}

# Modules the initramfs loads when the kernel has them as modules (their
# dependencies come from each module's .modinfo).
WANTED_MODULES = ["virtio_pci", "virtiofs", "virtio_blk", "ext4"]

GUEST_MEM = "2G"
GUEST_CPUS = 1
TEST_TIMEOUT = 600        # pytest inside a guest, seconds (it takes 1-2.5 min)
BOOT_MARGIN = 180         # on top of that, for boot and the stats collection
SCRATCH_SIZE = 512 << 20  # the guest's /var/tmp disk
TAIL_LINES = 60
KERNEL_ARGS = os.environ.get("MATRIX_KERNEL_ARGS", "")


def log(msg: str) -> None:
    print(f"[matrix {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class MatrixError(Exception):
    pass


# ---------------------------------------------------------------- kernels

def kernel_root(k: Kernel) -> Path:
    return BUILD / "kernels" / k.series / "root"


def fetch(k: Kernel) -> Path:
    """Download (apt-get download, or Debian's pool) and unpack (dpkg-deb -x)
    a pinned kernel."""
    root = kernel_root(k)
    stamp = root.parent / "unpacked"
    pin = f"{k.package}={k.version} sha256:{k.sha256 or [sha for _, sha in k.pool]}"
    if stamp.exists() and stamp.read_text().strip() == pin:
        return root
    debs = BUILD / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if k.pool:
        files = [fetch_pool(path, sha, debs) for path, sha in k.pool]
        if root.parent.exists():
            shutil.rmtree(root.parent)
        root.mkdir(parents=True)
        for deb in files:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        stamp.write_text(pin + "\n")
        return root
    deb = debs / f"{k.package}_{k.version.replace(':', '%3a')}_amd64.deb"
    if not deb.exists() or sha256_file(deb) != k.sha256:
        log(f"downloading {k.package}={k.version}")
        p = subprocess.run(["apt-get", "download", "-q", f"{k.package}={k.version}"], cwd=debs,
                           capture_output=True, text=True)
        if p.returncode != 0 or not deb.exists():
            raise MatrixError(
                f"apt-get download {k.package}={k.version} failed:\n{p.stderr.strip()}\n"
                f"Run `apt-get update` first; if Debian no longer carries this version, move "
                f"the pin in vm/matrix.py (KERNELS) to one that `python3 vm/matrix.py latest` "
                f"lists.")
    got = sha256_file(deb)
    if got != k.sha256:
        raise MatrixError(f"{deb.name}: sha256 {got}, pinned {k.sha256}")
    if root.parent.exists():
        shutil.rmtree(root.parent)
    root.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    stamp.write_text(pin + "\n")
    return root


def fetch_pool(path: str, sha: str, debs: Path) -> Path:
    """One .deb from Debian's pool, checked against its pinned sha256."""
    deb = debs / os.path.basename(path)
    if deb.exists() and sha256_file(deb) == sha:
        return deb
    url = POOL_URL + path
    log(f"downloading {url}")
    tmp = deb.with_suffix(".part")
    p = subprocess.run(["curl", "-fsSL", "--retry", "3", "-o", str(tmp), url],
                       capture_output=True, text=True)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise MatrixError(
            f"downloading {url} failed: {p.stderr.strip()}\nDebian's pool keeps only the "
            f"versions its suites carry: move the pin in vm/matrix.py (KERNELS) to one that "
            f"`python3 vm/matrix.py latest` lists.")
    got = sha256_file(tmp)
    if got != sha:
        tmp.unlink()
        raise MatrixError(f"{url}: sha256 {got}, pinned {sha}")
    tmp.rename(deb)
    return deb


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def modules_root(root: Path) -> Path:
    """lib/modules, or usr/lib/modules in Debian 14's merged-/usr packages."""
    for d in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if d.is_dir():
            return d
    raise MatrixError(f"{root}: no lib/modules in the unpacked kernel")


def kernel_release(root: Path) -> str:
    (rel,) = [p.name for p in modules_root(root).iterdir()]
    return rel


def vmlinuz(root: Path) -> Path:
    rel = kernel_release(root)
    for cand in (root / "boot" / f"vmlinuz-{rel}", modules_root(root) / rel / "vmlinuz"):
        if cand.exists():
            return cand
    raise MatrixError(f"{root}: no vmlinuz for {rel}")


POOL_SUITE = "https://deb.debian.org/debian/dists/trixie-backports/main/binary-amd64/Packages.xz"


def latest_pool(series: str = "7.2") -> None:
    """The newest cloud kernel of `series` in trixie-backports, as a pin."""
    import urllib.request
    with urllib.request.urlopen(POOL_SUITE, timeout=60) as f:
        text = lzma.decompress(f.read()).decode()
    stanzas = {m.group(1): m.group(0) for m in
               re.finditer(r"^Package: (\S+)\n(?:.+\n)*", text, re.M)}
    rels = sorted({m.group(1) for name in stanzas for m in
                   [re.match(rf"linux-binary-({re.escape(series)}\.\d+\+deb\d+)-cloud-amd64$",
                             name)] if m},
                  key=lambda r: [int(x) for x in re.findall(r"\d+", r)])
    for rel in reversed(rels):
        parts = [stanzas.get(f"linux-{k}-{rel}-cloud-amd64") for k in ("binary", "modules", "base")]
        if all(parts):
            ver = re.search(r"^Version: (.+)$", parts[0], re.M).group(1)
            files = [(re.search(r"^Filename: pool/(.+)$", p, re.M).group(1),
                      re.search(r"^SHA256: (.+)$", p, re.M).group(1)) for p in parts]
            print(f'    Kernel("{series}", "linux-image-{rel}-cloud-amd64", "{ver}", "", '
                  f'pool={tuple(files)!r}),')
            return
    print(f"{series}: no complete cloud kernel (binary, modules, base) in trixie-backports")


def latest() -> None:
    for series, pattern in (("6.1", r"^linux-image-6\.1\.0-\d+-cloud-amd64$"),
                            ("6.12", r"^linux-image-6\.12\.\d+\+deb12-cloud-amd64$")):
        out = subprocess.run(["apt-cache", "search", "--names-only", "cloud-amd64"],
                             capture_output=True, text=True).stdout
        names = [line.split()[0] for line in out.splitlines() if re.match(pattern, line.split()[0])]
        names.sort(key=lambda n: [int(x) for x in re.findall(r"\d+", n)])
        if not names:
            print(f"{series}: none (apt-get update?)")
            continue
        name = names[-1]
        show = subprocess.run(["apt-cache", "show", name], capture_output=True, text=True).stdout
        ver = re.search(r"^Version: (.+)$", show, re.M).group(1)
        sha = re.search(r"^SHA256: (.+)$", show, re.M).group(1)
        print(f'    Kernel("{series}", "{name}", "{ver}",\n           "{sha}"),'
              f'   # pinned: {KERNELS[series].package} {KERNELS[series].version}')
    latest_pool("7.2")


# ---------------------------------------------------------------- modules

def _modinfo(data: bytes) -> Dict[str, str]:
    """The .modinfo section of an ELF64 little-endian kernel module."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise MatrixError("not an ELF64 little-endian module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data,
                                                                   shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            out: Dict[str, str] = {}
            for item in data[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode("ascii", "replace").split("=", 1)
                    out.setdefault(k, v)
            return out
    return {}


def _decompress(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dcq"], input=raw, capture_output=True,
                              check=True).stdout
    return raw


def _modname(filename: str) -> str:
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", filename).replace("-", "_")


def guest_modules(root: Path) -> List[tuple]:
    """[(name, decompressed .ko bytes)] in load order, for WANTED_MODULES."""
    moddir = modules_root(root) / kernel_release(root)
    builtin = set()
    if (moddir / "modules.builtin").exists():
        builtin = {_modname(os.path.basename(line.strip()))
                   for line in (moddir / "modules.builtin").read_text().splitlines()}
    files = {}
    for dirpath, _, names in os.walk(moddir / "kernel"):
        for n in names:
            if re.search(r"\.ko(\.(xz|gz|zst))?$", n):
                files[_modname(n)] = Path(dirpath) / n
    order: List[tuple] = []
    seen = set()

    def add(name: str, chain: tuple) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name not in files:
            raise MatrixError(f"{root.name}: module {name} (needed by {' <- '.join(chain)}) "
                              f"is neither built in nor shipped")
        seen.add(name)
        data = _decompress(files[name])
        for dep in filter(None, _modinfo(data).get("depends", "").split(",")):
            add(dep, chain + (name,))
        order.append((name, data))

    for m in WANTED_MODULES:
        add(m, ("initramfs",))
    return order


# ---------------------------------------------------------------- initramfs

class Cpio:
    """A newc cpio archive (what the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def static_busybox() -> bytes:
    path = shutil.which("busybox") or "/bin/busybox"
    try:
        data = Path(path).read_bytes()
    except OSError:
        raise MatrixError("busybox not found: apt-get install busybox-static") from None
    # a dynamically linked busybox has a PT_INTERP program header
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3:
            raise MatrixError(f"{path} is dynamically linked: apt-get install busybox-static")
    return data


def build_initramfs(modules: List[tuple], conf: Dict[str, str], out: Path) -> None:
    c = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys", "tmp"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", static_busybox(), 0o755)
    c.file("init", (REPO / "vm" / "init.sh").read_bytes(), 0o755)
    for name, data in modules:
        c.file(f"lib/modules/{name}.ko", data)
    if modules:
        c.file("lib/modules/order", "".join(f"{n}\n" for n, _ in modules).encode())
    c.file("etc/matrix.conf", "".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items()).encode())
    out.write_bytes(gzip.compress(c.finish(), compresslevel=1))


# ---------------------------------------------------------------- virtiofsd

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


# ---------------------------------------------------------------- one guest

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


def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console log)"
    lines = text.replace("\r", "").splitlines()
    return "\n".join(lines[-n:])


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


def run_guest(name: str, python: str, timeout: float, cmd: str = "") -> dict:
    series, cgv = GUESTS[name]
    k = KERNELS[series]
    root = fetch(k)
    run = BUILD / "run" / name
    outdir = BUILD / "out" / name
    for d in (run, outdir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    console = run / "console.log"
    res: dict = {"guest": name, "kernel_series": series, "cgroup": cgv,
                 "kernel_package": f"{k.package}={k.version}", "where": "qemu (TCG)",
                 "console_log": str(console.relative_to(REPO))}

    conf = {"MATRIX_KEEP": ":".join(hidden_paths([str(REPO), python])),
            "MATRIX_CGROUP": str(cgv), "MATRIX_PYTHON": python, "MATRIX_REPO": str(REPO),
            "MATRIX_OUT": str(outdir), "MATRIX_WHERE": "qemu (TCG)",
            "MATRIX_TEST_TIMEOUT": str(int(timeout)), "MATRIX_CMD": cmd}
    initrd = run / "initrd.gz"
    build_initramfs(guest_modules(root), conf, initrd)
    scratch = run / "scratch.img"
    with open(scratch, "wb") as f:
        f.truncate(SCRATCH_SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "scratch", str(scratch)], check=True,
                   capture_output=True)

    sock = run / "virtiofs.sock"
    vfsd = qemu = None
    t0 = time.monotonic()
    try:
        vfsd = _track(start_virtiofsd(run / "view", outdir, sock,
                                      [str(REPO), python, sys.prefix], run / "virtiofsd.log"))
        append = f"console=ttyS0 panic=-1 loglevel=4 rdinit=/init mitigations=off {KERNEL_ARGS}"
        accel = "tcg" + (",thread=multi" if GUEST_CPUS > 1 else "")
        qemu_cmd = [
            "qemu-system-x86_64", "-accel", accel, "-cpu", "max",
            "-smp", str(GUEST_CPUS), "-m", GUEST_MEM,
            # vhost-user (virtiofsd) needs the guest's memory shared
            "-object", f"memory-backend-memfd,id=mem,size={GUEST_MEM},share=on",
            "-machine", "pc,memory-backend=mem",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
            "-chardev", f"socket,id=vfs,path={sock}",
            "-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot",
            "-drive", f"file={scratch},if=virtio,format=raw,cache=unsafe",
            "-kernel", str(vmlinuz(root)), "-initrd", str(initrd),
            "-append", append.strip()]
        (run / "qemu.cmd").write_text(shlex.join(qemu_cmd) + "\n")
        qemu = _track(subprocess.Popen(qemu_cmd, stdout=open(run / "qemu.log", "wb"),
                                       stderr=subprocess.STDOUT, start_new_session=True))
        limit = timeout + BOOT_MARGIN
        try:
            qrc = qemu.wait(limit)
            res["status"] = "exited"
            res["qemu_rc"] = qrc
        except subprocess.TimeoutExpired:
            res["status"] = f"timed out after {limit:.0f} s"
    finally:
        stop(qemu)
        stop(vfsd)
        res["wall_s"] = round(time.monotonic() - t0, 1)

    text = console.read_text(errors="replace") if console.exists() else ""
    for key, pat in (("boot_s", r"MATRIX: BOOTED .* uptime ([\d.]+)"),
                     ("run_start_s", r"MATRIX: RUNNING uptime ([\d.]+)"),
                     ("done_s", r"MATRIX: DONE rc=\d+ uptime ([\d.]+)")):
        m = re.search(pat, text)
        if m:
            res[key] = float(m.group(1))
    m = re.search(r"MATRIX: GUEST-ERROR (.*)", text)
    if m:
        res["guest_error"] = m.group(1).strip()
    result_file = outdir / "result.json"
    if result_file.exists():
        try:
            res.update(json.loads(result_file.read_text()), where=res["where"])
        except ValueError as e:
            res["error"] = f"unreadable result.json: {e}"
            res["passed"] = False
    else:
        why = res.get("guest_error") or (
            "the guest did not boot" if "MATRIX: BOOTED" not in text else
            "the guest booted but wrote no result")
        res["error"] = f"{why} ({res['status']})"
        res["passed"] = False
    if not res.get("passed"):
        res["console_tail"] = tail(console)
    return res


def run_native(python: str, timeout: float) -> dict:
    outdir = BUILD / "out" / "native"
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    rel = platform.release()
    series = ".".join(rel.split(".")[:2])
    res: dict = {"kernel_series": series, "kernel_package": "this host's kernel",
                 "where": "native (this host)"}
    env = dict(os.environ, PYMEMCG_REQUIRE_BPF="1", PYTHONDONTWRITEBYTECODE="1")
    t0 = time.monotonic()
    logf = outdir / "output.log"
    with open(logf, "wb") as f:
        p = subprocess.run([python, str(REPO / "vm" / "guest_run.py"), "--repo", str(REPO),
                            "--out", str(outdir / "result.json"), "--where", "native",
                            "--timeout", str(int(timeout))], stdout=f, stderr=subprocess.STDOUT,
                           env=env, cwd=REPO)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    res["status"] = f"exited rc={p.returncode}"
    if (outdir / "result.json").exists():
        res.update(json.loads((outdir / "result.json").read_text()))
    else:
        res["passed"] = False
        res["error"] = "no result"
        res["console_tail"] = tail(logf)
    res["where"] = "native (this host)"
    if not res.get("cgroup_version"):
        with open("/proc/self/mountinfo") as f:
            v1 = any(" - cgroup " in line and "memory" in line.split()[-1].split(",")
                     for line in f)
        res["cgroup_version"] = 1 if v1 else 2
    res["cgroup"] = res["cgroup_version"]
    res["guest"] = f"{series}-v{res['cgroup']}"
    res["console_log"] = str(logf.relative_to(REPO))
    return res


def save(res: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{res['guest']}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    return path


# ---------------------------------------------------------------- report

def _first_line(msg: str) -> str:
    for line in (msg or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _sort_key(r: dict):
    return ([int(x) for x in r["kernel_series"].split(".")], -int(r.get("cgroup") or 0),
            r.get("where", ""))


def load_results() -> List[dict]:
    out = []
    for p in sorted(RESULTS.glob("*.json")):
        out.append(json.loads(p.read_text()))
    return sorted(out, key=_sort_key)


def _names(names: List[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "none"


def _text_served(r: dict) -> Optional[List[str]]:
    """Stats the text backend really returned here (a fresh child cgroup)."""
    if r.get("text_served") is not None:
        order = {s["name"]: i for i, s in enumerate(r.get("stats") or [])}
        return sorted(r["text_served"], key=lambda n: (order.get(n, len(order)), n))
    if r.get("text_available"):
        return [n for n, ok in r["text_available"].items() if ok]
    return None


def _bpf_backend(r: dict) -> str:
    """'bpf (kfunc, flush)': how the loader read this kernel's hierarchical stats."""
    plan = r.get("plan")
    if not plan:
        return "bpf"
    kinds = [plan["hierarchical"]["backend"]]
    if plan["local"]["backend"] != kinds[0]:
        kinds.append(f"local: {plan['local']['backend']}")
    if plan.get("flush"):
        kinds.append("flush")
    return f"bpf ({', '.join(kinds)})"


def _verify_text(r: dict) -> str:
    """'verify 30 exact, 0 mismatched' or why verify gave no verdict."""
    v = r.get("verify")
    if not v:
        return "verify did not run"
    if v.get("error"):
        return f"verify did not run: {_first_line(v['error'])[:120]}"
    c = v.get("counts") or {}
    return f"verify {c.get('exact', 0)} exact, {c.get('mismatch', 0)} mismatched"


def matrix_rows(results: List[dict]) -> List[dict]:
    """Two rows per result: the BPF backend and the text backend."""
    rows = []
    for r in results:
        stats = r.get("stats") or []
        names = [s["name"] for s in stats]
        bpf = [s["name"] for s in stats if s.get("backend") == "bpf"]
        counts = r.get("counts") or {}
        if r.get("error"):
            tested = f"FAIL: {r['error']}"
        elif counts:
            tested = (f"{'PASS' if r.get('passed') else 'FAIL'}, {_verify_text(r)}, "
                      f"{counts.get('passed', 0)}/{counts.get('total', 0)} parity tests"
                      + (f", {counts['failed']} failed" if counts.get("failed") else "")
                      + (f", {counts['errors']} errors" if counts.get("errors") else "")
                      + (f", {counts['skipped']} skipped" if counts.get("skipped") else ""))
        else:
            tested = "FAIL: no test results"
        base = {"kernel": r.get("kernel_release") or r["kernel_series"],
                "cgroup": f"v{r.get('cgroup')}", "where": r.get("where", ""),
                "total": len(stats), "passed": bool(r.get("passed"))}
        v = r.get("verify") or {}
        rows.append(dict(base, backend=_bpf_backend(r), tested=f"{base['where']}: {tested}",
                         served=bpf, verify=None if v.get("error") else v.get("counts"),
                         unavailable=[n for n in names if n not in bpf]))
        text = _text_served(r)
        rows.append(dict(base, backend="text", tested="the kernel's own files (the reference)",
                         passed=text is not None, served=text or [], verify=None,
                         unavailable=[n for n in names if n not in (text or [])]))
    return rows


def summary_table(results: List[dict]) -> str:
    lines = ["| kernel | cgroup | backend | tested here | served | compared: exact | "
             "mismatched | served, not compared | unavailable |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in matrix_rows(results):
        n = len(row["served"])
        c = row["verify"]
        if row["backend"] == "text":
            exact, bad, unc = ("reference" if row["passed"] else "?"), "-", "-"
        elif c is None:
            exact, bad, unc = "unverified", "-", "-"
        else:
            exact = f"{c['exact']}" + (f" ({c['exact_nonzero']} nonzero)"
                                       if "exact_nonzero" in c else "")
            bad, unc = str(c["mismatch"]), str(c["not compared"])
        lines.append(f"| {row['kernel']} | {row['cgroup']} | {row['backend']} | "
                     f"{row['tested']} | {n} of {row['total']} | {exact} | {bad} | {unc} | "
                     f"{len(row['unavailable'])} |")
    return "\n".join(lines)


def _verify_groups(r: dict) -> Dict[str, List[str]]:
    """verify's outcome per stat, grouped: exact, mismatched (with the
    values), and not compared by reason (the reason without its example)."""
    groups: Dict[str, List[str]] = {}
    v = r.get("verify") or {}
    for s in v.get("stats") or []:
        if s["outcome"] == "exact":
            groups.setdefault("verify: compared, exact", []).append(s["name"])
        elif s["outcome"] == "mismatch":
            groups.setdefault("verify: MISMATCH", []).append(
                f"{s['name']} (bpf {s['bpf']}, file {s['file']}: {s['why']})")
        else:
            why = re.sub(r" \([^()]*\)$", "", s.get("why") or "no reason given")
            groups.setdefault(f"verify: served, not compared ({why})", []).append(s["name"])
    return groups


def render_doc(results: List[dict]) -> str:
    out = ["# Kernel matrix", "",
           "Generated by `make matrix` (`vm/matrix.py`) from `build/vm/results/*.json`; do not "
           "edit by hand. Each guest boots a pinned Debian cloud kernel under qemu (TCG) with "
           "this checkout's Python and pymemcg install (the host's root filesystem, shared "
           "read-only) and runs `pymemcg verify --format json` and `tests/test_parity.py` "
           "with `PYMEMCG_REQUIRE_BPF=1`; the host's own kernel runs the same natively. A "
           "mismatch found by verify fails the guest.", "",
           "- served: the stats the backend serves there (`pymemcg.stats()`).",
           "- compared: exact: served stats that `pymemcg verify` compared with the kernel's "
           "own files there (memory.stat, memory.current or usage_in_bytes, memory.events "
           "or oom_control, peak, limit, failcnt, swap and memsw files; every cgroup of its "
           "probe, hierarchical and local, single reads and tree walks) and found equal in "
           "every comparison (in brackets: how many of them with a value other than 0 "
           "somewhere in the probe); mismatched: those that differed.",
           "- served, not compared: served by BPF, but no kernel file prints them there "
           "(cgroup v1's memory.stat prints about 20 keys), so nothing could check them: "
           "not counted as exact. The reason for each is below.",
           "- text: the stats the text backend returned for a fresh cgroup there (the "
           "kernel's own files, the reference).",
           "- unavailable: reported as unavailable by that backend (`None`, never a made-up 0).",
           "",
           "Pinned kernels: " + "; ".join(f"`{k.package}` {k.version}"
                                          for k in KERNELS.values()) + ".", "",
           summary_table(results), ""]
    for r in results:
        out += [f"## {r.get('kernel_release') or r['kernel_series']}, cgroup v{r.get('cgroup')}, "
                f"{r.get('where')}", ""]
        if r.get("kernel_package"):
            out.append(f"- kernel: {r['kernel_package']}")
        plan = r.get("plan")
        if plan:
            h, loc = plan["hierarchical"], plan["local"]
            out.append(f"- BPF plan from this kernel's BTF: hierarchical values through "
                       f"`{h['backend']}`, local values through `{loc['backend']}`, programs "
                       f"`{h['tree_program']}`/`{h['single_program']}`; flush=True "
                       + ("loads the sleepable `pmc_memcg_iter_flush`/"
                          "`pmc_memcg_iter_path_flush` (iter.s/cgroup)" if plan.get("flush")
                          else "raises FlushUnavailable (no flush kfunc)")
                       + (f"; single reads: {plan['read_method']}" if plan.get("read_method")
                          else ""))
        out.append(f"- result: {'PASS' if r.get('passed') else 'FAIL'}"
                   + (f" ({r['error']})" if r.get("error") else ""))
        v = r.get("verify") or {}
        if v.get("counts"):
            c = v["counts"]
            out.append(f"- `pymemcg verify`: {c['served']} served, {c['exact']} compared and "
                       f"exact ({c.get('exact_nonzero', '?')} of them with a nonzero value), "
                       f"{c['mismatch']} mismatched, {c['not compared']} not compared; "
                       f"{c.get('comparisons', '?')} comparisons in {v.get('duration_s')} s")
        elif v:
            out.append(f"- `pymemcg verify` did not run: {_first_line(v.get('error', ''))}")
        for c in r.get("cases") or []:
            if c["outcome"] != "passed":
                out.append(f"  - {c['outcome']} `{c['test']}`: "
                           f"{_first_line(c.get('message', ''))[:300]}")
        stats = r.get("stats") or []
        groups: Dict[str, List[str]] = {}
        for s in stats:
            if s.get("backend") == "bpf":
                how = s["via"].split(":")[0]
                groups.setdefault(f"bpf ({how})", []).append(s["name"])
        groups.update(_verify_groups(r))
        text = _text_served(r)
        if text is not None:
            groups["text (fresh cgroup)"] = text
        groups["unavailable through bpf"] = [s["name"] for s in stats
                                             if s.get("backend") != "bpf"]
        claimed = [s["name"] for s in stats if s.get("backend") == "text"]
        if text is not None and set(claimed) - set(text):
            groups["`stats()` says text, but the text backend returned none"] = \
                [n for n in claimed if n not in text]
        for g, names in groups.items():
            out.append(f"- {g}, {len(names)}: {_names(names)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_readme_block(results: List[dict]) -> str:
    return "\n".join([
        BEGIN,
        "",
        "Kernel matrix (generated by `make matrix` from its results; details per kernel, "
        "with every stat's name, in [docs/matrix.md](docs/matrix.md)):",
        "",
        summary_table(results),
        "",
        END])


def write_report() -> None:
    results = load_results()
    if not results:
        raise MatrixError(f"no results in {RESULTS}: run `make matrix` first")
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_doc(results))
    text = README.read_text()
    block = render_readme_block(results)
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        # at the end of "## Backends and kernels", before the next section
        start = text.index("\n## Backends and kernels")
        nxt = text.find("\n## ", start + 1)
        nxt = len(text) if nxt < 0 else nxt
        section = text[start:nxt].rstrip("\n")
        text = text[:start] + section + "\n\n" + block + "\n" + text[nxt:]
    README.write_text(text)
    log(f"wrote {DOC.relative_to(REPO)} and the matrix block of README.md")


# ---------------------------------------------------------------- summary

def summarize(results: List[dict]) -> bool:
    ok_all = True
    print("\n=== kernel matrix ===")
    for r in sorted(results, key=_sort_key):
        ok = bool(r.get("passed"))
        ok_all &= ok
        counts = r.get("counts") or {}
        t = (f"boot {r['boot_s']:.1f}s, " if "boot_s" in r else "") + f"wall {r.get('wall_s')}s"
        cstr = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "no tests ran"
        vc = (r.get("verify") or {}).get("counts")
        cstr += (f"; verify: {vc['exact']} exact, {vc['mismatch']} mismatched, "
                 f"{vc['not compared']} not compared" if vc else "; verify: did not run")
        print(f"{'PASS' if ok else 'FAIL'}  {r['guest']:<8} "
              f"{r.get('kernel_release') or r.get('kernel_package', '?'):<28} "
              f"{r.get('where', ''):<19} {cstr}  ({t})")
        if r.get("error"):
            print(f"      error: {r['error']}")
        for name in _verify_groups(r).get("verify: MISMATCH", []):
            print(f"      verify mismatch: {name}")
        if (r.get("verify") or {}).get("error"):
            print(f"      verify did not run: {_first_line(r['verify']['error'])[:400]}")
        for c in r.get("cases") or []:
            if c["outcome"] in ("failed", "errors"):
                print(f"      {c['outcome']} {c['test']}: {_first_line(c.get('message'))[:400]}")
    for r in results:
        if r.get("console_tail") and (r.get("error") or not r.get("cases")):
            print(f"\n--- {r['guest']}: last {TAIL_LINES} lines of {r.get('console_log')} ---")
            print(r["console_tail"])
    print(f"\nconsole logs: build/vm/run/<guest>/console.log; results: "
          f"{RESULTS.relative_to(REPO)}/*.json")
    print(f"matrix: {'PASS' if ok_all else 'FAIL'}")
    return ok_all


def acquire_lock():
    """One run at a time per checkout (they share build/vm/run and results)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    lock = open(BUILD / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another matrix run in this checkout holds build/vm/.lock: waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def cleanup_live() -> None:
    _stopping.set()
    with _live_lock:
        procs = list(_live)
    for p in procs:
        stop(p, grace=2)


def cmd_run(args) -> int:
    if os.geteuid() != 0:
        raise MatrixError("run as root (bind mounts for virtiofsd, BPF in the native run)")
    python = os.path.abspath(args.python)
    if not os.access(python, os.X_OK):
        raise MatrixError(f"{python}: no such interpreter")
    names = args.guests.split(",") if args.guests else list(GUESTS)
    for n in names:
        if n not in GUESTS:
            raise MatrixError(f"unknown guest {n!r}; guests: {', '.join(GUESTS)}")
    for tool in ("qemu-system-x86_64", "mkfs.ext4", "unshare", "dpkg-deb", "apt-get"):
        if not shutil.which(tool):
            raise MatrixError(f"{tool} not found: make vm-deps")
    find_virtiofsd()
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
    log(f"booting {', '.join(names)} ({jobs} at a time, {GUEST_CPUS} vCPU and {GUEST_MEM} each)")

    def one(n):
        try:
            if GUESTS[n][0] in fetch_errors:
                raise MatrixError(fetch_errors[GUESTS[n][0]])
            r = run_guest(n, python, args.timeout)
        except MatrixError as e:
            series, cgv = GUESTS[n]
            r = {"guest": n, "kernel_series": series, "cgroup": cgv, "passed": False,
                 "error": str(e), "where": "qemu (TCG)"}
        save(r)
        log(f"{n}: {'PASS' if r.get('passed') else 'FAIL'} in {r.get('wall_s', '?')} s")
        return r

    ex = concurrent.futures.ThreadPoolExecutor(jobs)
    try:
        futures = [ex.submit(one, n) for n in names]
        results += [f.result() for f in futures]
    finally:
        cleanup_live()   # on an interrupt: ends the guests, so the workers return
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
    r.add_argument("--guests", default="", help=f"comma list (default all: {','.join(GUESTS)})")
    r.add_argument("--no-native", action="store_true", help="skip the run on this host")
    r.add_argument("--jobs", type=int, default=0,
                   help="guests at a time (default: all; each is one host thread, and "
                        "running them together finishes soonest even on 2 CPUs)")
    r.add_argument("--timeout", type=float, default=TEST_TIMEOUT,
                   help="pytest limit per guest, seconds")
    r.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help="write docs/matrix.md and README (default: on a full run)")
    sh = sub.add_parser("shell", help="boot one guest, run a shell command in it, print the "
                                      "console (debugging)")
    sh.add_argument("--guest", default="6.12-v2", choices=list(GUESTS))
    sh.add_argument("--python", default=sys.executable)
    sh.add_argument("--timeout", type=float, default=600)
    sh.add_argument("command", help="run with sh -c in the repo, in the guest's chroot")
    sub.add_parser("fetch", help="download and unpack the pinned kernels")
    sub.add_parser("report", help="docs/matrix.md and README.md from build/vm/results")
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
                cleanup_live()
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
