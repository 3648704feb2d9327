"""A guest userland for an architecture other than this host's: Debian's own
Python, cffi backend, pytest and busybox for it, unpacked from their .debs
(apt through tools/apt-private, an apt state of that architecture, Release
signatures checked; never installed), plus a venv holding pymemcg's wheel
for it. No compiler and no build step: the wheel is what users install.

The guest shares this tree (build/vm/userland-<arch>/root) over virtiofs,
with the repository (for the tests) and its result directory bound in, and
chroots into it (vm/init.sh, MATRIX_ROOT).

It is the project's one userland of another architecture: the wheel smoke
test runs the aarch64 wheel's extension in the same root under qemu-user
(`make arm64-userland`, which runs `python3 vm/userland.py aarch64`: the
Debian packages alone, without the venv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Tuple

from kernels import DEB_ARCH, apt, sha256_file
from workspace import BUILD, REPO, MatrixError, log

# what the guest runs: Python, the compiled part's cffi backend, pytest for
# the parity tests, and busybox for /bin/sh and /usr/bin/env (vm/init.sh)
PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "python3-cffi-backend",
            "python3-pytest", "busybox-static")
PYTHON = "/usr/bin/python3.11"
PY_VERSION = "3.11"
VENV = "/opt/pymemcg"                  # in the guest's root
BUSYBOX_LINKS = ("bin/sh", "usr/bin/env")
# where the wheels are looked for: MATRIX_WHEELS, else the checkout's dist/
WHEELS = Path(os.environ.get("MATRIX_WHEELS", str(REPO / "dist")))


def find_wheel(arch: str) -> Path:
    """The newest pymemcg wheel for `arch` in WHEELS."""
    found = sorted(WHEELS.glob(f"pymemcg-*-manylinux*_{arch}.whl"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise MatrixError(f"no pymemcg wheel for {arch} in {WHEELS} (make wheel-{arch}, or "
                          f"MATRIX_WHEELS=DIR): the {arch} guests run the wheel, not this checkout")
    return found[-1]


def _download(arch: str, debs: Path) -> None:
    """PACKAGES and everything they depend on, for `arch`, into `debs`."""
    status = debs.parent / "status"
    status.write_text("")   # nothing installed: apt resolves every dependency
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    p = apt(f"-o", f"Dir::State::status={status}", "-o", f"Dir::Cache::archives={debs}",
            "--no-install-recommends", "install", "-d", *PACKAGES, arch=arch)
    if p.returncode != 0:
        raise MatrixError(f"apt-get install -d for the {arch} userland failed:\n"
                          f"{p.stderr.strip()[-2000:]}")


def _install_wheel(wheel: Path, root: Path) -> None:
    """The wheel unpacked into a venv of the guest's Python (what pip does
    for a binary wheel: its files into site-packages), with the system
    site-packages (cffi backend, pytest) visible."""
    venv = root / VENV.lstrip("/")
    site = venv / "lib" / f"python{PY_VERSION}" / "site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "pyvenv.cfg").write_text(f"home = {os.path.dirname(PYTHON)}\n"
                                     f"include-system-site-packages = true\n"
                                     f"version = {PY_VERSION}\n")
    for name in ("python", "python3", f"python{PY_VERSION}"):
        (venv / "bin" / name).symlink_to(PYTHON)
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith("/") or ".." in member.split("/"):
                raise MatrixError(f"{wheel.name}: unsafe path {member!r}")
        z.extractall(site)


def base_root(arch: str) -> Path:
    """The root directory of Debian's PACKAGES for `arch`, unpacked (no
    venv): built once per package list, then reused."""
    base = BUILD / f"userland-{DEB_ARCH[arch]}"
    root, debs = base / "root", base / "debs"
    stamp = base / "unpacked"
    wanted = " ".join(PACKAGES)
    if stamp.exists() and stamp.read_text().strip() == wanted and root.is_dir():
        return root
    log(f"{arch} userland: Debian's {', '.join(PACKAGES)}")
    for old in (stamp, base / "built"):   # "built": the stamp of a venv in this root
        if old.exists():
            old.unlink()
    debs.mkdir(parents=True, exist_ok=True)
    _download(arch, debs)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    # mount points vm/init.sh mounts on (a read-only share: made here)
    for d in ("proc", "sys", "dev", "tmp", "run", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in BUSYBOX_LINKS:
        path = root / link
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.symlink_to("/bin/busybox")
    if not (root / "bin" / "busybox").exists() or not (root / PYTHON.lstrip("/")).exists():
        raise MatrixError(f"{root}: the {arch} userland lacks busybox or {PYTHON}")
    stamp.write_text(wanted + "\n")
    return root


def userland(arch: str) -> Tuple[Path, str, str]:
    """(root directory, Python in it, what it was built from): base_root()
    with pymemcg's wheel in a venv, rebuilt when the wheel changes."""
    wheel = find_wheel(arch)
    root = base_root(arch)
    stamp = root.parent / "built"
    wanted = f"{' '.join(PACKAGES)} {wheel.name} {sha256_file(wheel)}"
    if not (stamp.exists() and stamp.read_text().strip() == wanted):
        log(f"{arch} userland: {wheel.name} into {VENV}")
        venv = root / VENV.lstrip("/")
        if venv.exists():
            shutil.rmtree(venv)
        _install_wheel(wheel, root)
        stamp.write_text(wanted + "\n")
    return root, f"{VENV}/bin/python", wanted


if __name__ == "__main__":
    # python3 vm/userland.py ARCH: build the packages' root, print its path
    if len(sys.argv) != 2 or sys.argv[1] not in DEB_ARCH:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(DEB_ARCH)}}}")
    try:
        print(base_root(sys.argv[1]))
    except MatrixError as e:
        sys.exit(f"userland: error: {e}")
