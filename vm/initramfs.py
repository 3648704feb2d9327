"""The guest's initramfs: busybox-static, vm/init.sh, the kernel's own
virtio/virtiofs/ext4 modules (with their dependencies, decompressed, in load
order) and the guest's settings (etc/matrix.conf), as a gzipped newc cpio."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from kernels import kernel_release, modules_root
from workspace import REPO, MatrixError

# Modules the initramfs loads when the kernel has them as modules (their
# dependencies come from each module's .modinfo): the shared root (virtiofs
# over virtio-pci) and the scratch disk (ext4 on NVMe, which Debian's cloud
# kernels build in, unlike virtio-blk, so that a kernel without its modules
# package still boots)
WANTED_MODULES = ["virtio_pci", "virtiofs", "nvme", "ext4"]


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
    """[(name, decompressed .ko bytes)] in load order, for WANTED_MODULES;
    none for a kernel unpacked without modules (the guest then proves at
    boot that it needs none)."""
    mods = modules_root(root)
    if mods is None:
        return []
    moddir = mods / kernel_release(root)
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


def static_busybox(path: Optional[str] = None) -> bytes:
    """A statically linked busybox: this host's, or `path` (another
    architecture's, from its userland)."""
    path = path or shutil.which("busybox") or "/bin/busybox"
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


def build_initramfs(modules: List[tuple], conf: Dict[str, str], out: Path,
                    busybox: Optional[str] = None) -> None:
    c = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys", "tmp"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", static_busybox(busybox), 0o755)
    c.file("init", (REPO / "vm" / "init.sh").read_bytes(), 0o755)
    for name, data in modules:
        c.file(f"lib/modules/{name}.ko", data)
    if modules:
        c.file("lib/modules/order", "".join(f"{n}\n" for n, _ in modules).encode())
    c.file("etc/matrix.conf", "".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items()).encode())
    out.write_bytes(gzip.compress(c.finish(), compresslevel=1))
