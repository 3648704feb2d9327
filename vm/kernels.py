"""Which kernels the matrix boots, pinned by Debian version and sha256, and
fetching them.

A kernel is one or more Debian binary packages of one version, downloaded by
apt through tools/apt-private: a private apt state in build/vm/apt with the
archives this host's apt configuration names (bookworm and its security
suite carry the 6.1 and 6.12 kernels) plus EXTRA_SUITES (7.2 is in
trixie-backports only). apt checks the Release signatures; every .deb is
then checked against its pinned sha256 and unpacked with `dpkg-deb -x` into
build/vm/kernels/<series>/root (never installed).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

from workspace import BUILD, REPO, MatrixError, log

APT_PRIVATE = REPO / "tools" / "apt-private"
APT_STATE = BUILD / "apt"
# suites on top of the host's own: trixie-backports is where Debian keeps
# its 7.x cloud kernels for Debian 13, which a bookworm host's apt does not know
EXTRA_SUITES = ("trixie-backports",)
DEBS = BUILD / "debs"


# --- The pins: change these (and only these) to move the matrix to other
# --- kernels. `python3 vm/matrix.py latest` prints the newest ones apt knows.
@dataclasses.dataclass(frozen=True)
class Kernel:
    series: str     # "6.1"
    package: str    # the Debian package that names the kernel
    version: str    # its exact Debian version, that of every .deb below
    # (binary package, sha256 of its .deb) of each package unpacked: the
    # image alone, or from Debian 14's packaging on, where linux-image-* is
    # an empty meta package, the kernel, its modules and its base files
    debs: Tuple[Tuple[str, str], ...]


KERNELS: Dict[str, Kernel] = {k.series: k for k in (
    Kernel("6.1", "linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", (
        ("linux-image-6.1.0-56-cloud-amd64",
         "e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee"),)),
    Kernel("6.12", "linux-image-6.12.117+deb12-cloud-amd64", "6.12.117-1~deb12u1", (
        ("linux-image-6.12.117+deb12-cloud-amd64",
         "5195b288dec79e2981d6b84457f38b7ce7310a2d702930ec7d07209c7f78ce37"),)),
    # trixie-backports: it keeps several 7.2.x at a time, unstable only the newest
    Kernel("7.2", "linux-image-7.2.12+deb13-cloud-amd64", "7.2.12-1~bpo13+1", (
        ("linux-binary-7.2.12+deb13-cloud-amd64",
         "aa6720823145e351d3c817c95fe58d89995a2bcba4978ad2418c36a1c272f795"),
        ("linux-modules-7.2.12+deb13-cloud-amd64",
         "2f15b42b88ae56836b5fb3ac74c6cb795047891a5a25e5e69dedf8805b54017d"),
        ("linux-base-7.2.12+deb13-cloud-amd64",
         "e9f6b719bb96f989fce7a61e78580b24de4e824b3c9f656db7c3169dbb45a25a"))),
)}

# How `latest` finds a series in apt's index: the name of its first package
# (capturing the release part of the name) and the packages one kernel is made of
SERIES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "6.1": (r"linux-image-(6\.1\.0-\d+)-cloud-amd64", ("image",)),
    "6.12": (r"linux-image-(6\.12\.\d+\+deb12)-cloud-amd64", ("image",)),
    "7.2": (r"linux-binary-(7\.2\.\d+\+deb13)-cloud-amd64", ("binary", "modules", "base")),
}


def apt(*args: str, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """apt-get (or, with "apt-cache" first, apt-cache) on the private state."""
    return subprocess.run([str(APT_PRIVATE), str(APT_STATE), *EXTRA_SUITES, "--", *args],
                          cwd=cwd, capture_output=True, text=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def kernel_root(k: Kernel) -> Path:
    return BUILD / "kernels" / k.series / "root"


def download(package: str, version: str, sha: str) -> Path:
    """One .deb through apt, checked against its pinned sha256 (kept in
    build/vm/debs, so a second run downloads nothing)."""
    DEBS.mkdir(parents=True, exist_ok=True)
    for deb in DEBS.glob(f"{package}_*.deb"):
        if sha256_file(deb) == sha:
            return deb
    part = DEBS / "partial"
    log(f"downloading {package}={version}")
    for attempt in ("", "update"):
        if attempt:   # the private lists may predate the pin: fetch them again, once
            apt("update")
        if part.exists():
            shutil.rmtree(part)
        part.mkdir()
        p = apt("download", f"{package}={version}", cwd=part)
        got = list(part.glob("*.deb"))
        if p.returncode == 0 and len(got) == 1:
            break
    else:
        raise MatrixError(
            f"apt-get download {package}={version} failed:\n{p.stderr.strip()}\n"
            f"If Debian no longer carries this version, move the pin in vm/kernels.py "
            f"(KERNELS) to one that `python3 vm/matrix.py latest` lists.")
    sha_got = sha256_file(got[0])
    if sha_got != sha:
        raise MatrixError(f"{got[0].name}: sha256 {sha_got}, pinned {sha}")
    deb = DEBS / got[0].name
    got[0].rename(deb)
    shutil.rmtree(part)
    return deb


def fetch(k: Kernel) -> Path:
    """Download (apt) and unpack (dpkg-deb -x) a pinned kernel."""
    root = kernel_root(k)
    stamp = root.parent / "unpacked"
    pin = f"{k.package}={k.version} " + " ".join(f"{p}:{sha}" for p, sha in k.debs)
    if stamp.exists() and stamp.read_text().strip() == pin:
        return root
    files = [download(package, k.version, sha) for package, sha in k.debs]
    if root.parent.exists():
        shutil.rmtree(root.parent)
    root.mkdir(parents=True)
    for deb in files:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    stamp.write_text(pin + "\n")
    return root


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


# ---------------------------------------------------------------- latest

def _version_cmp(a: str, b: str) -> int:
    if a == b:
        return 0
    gt = subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0
    return 1 if gt else -1


def _versions(package: str) -> Dict[str, str]:
    """{version: sha256 of its .deb} of a package in the private index."""
    out = apt("apt-cache", "show", package).stdout
    found: Dict[str, str] = {}
    for stanza in out.split("\n\n"):
        ver = re.search(r"^Version: (.+)$", stanza, re.M)
        sha = re.search(r"^SHA256: (.+)$", stanza, re.M)
        if ver and sha:
            found.setdefault(ver.group(1), sha.group(1))
    return found


def newest(series: str) -> Optional[Kernel]:
    """The newest kernel of `series` whose every package apt carries in one version."""
    pattern, parts = SERIES[series]
    listing = apt("apt-cache", "search", "--names-only", "cloud-amd64")
    if listing.returncode != 0:
        raise MatrixError(f"apt-cache search failed:\n{listing.stderr.strip()}")
    rels = sorted({m.group(1) for line in listing.stdout.splitlines()
                   for m in [re.fullmatch(pattern, line.split(" ", 1)[0])] if m},
                  key=lambda r: [int(x) for x in re.findall(r"\d+", r)])
    for rel in reversed(rels):
        names = [f"linux-{part}-{rel}-cloud-amd64" for part in parts]
        found = [_versions(n) for n in names]
        common = set(found[0]).intersection(*found[1:])
        if common:
            ver = max(common, key=functools.cmp_to_key(_version_cmp))
            return Kernel(series, f"linux-image-{rel}-cloud-amd64", ver,
                          tuple((n, f[ver]) for n, f in zip(names, found)))
    return None


def latest() -> None:
    """Print the newest kernel of every series as a pin for KERNELS."""
    for series in SERIES:
        k = newest(series)
        if k is None:
            print(f"{series}: none complete in apt's index ({', '.join(SERIES[series][1])})")
            continue
        debs = "".join(f'\n        ("{n}",\n         "{sha}"),' for n, sha in k.debs)
        print(f'    # newest {series}; pinned: {KERNELS[series].package} {KERNELS[series].version}\n'
              f'    Kernel("{k.series}", "{k.package}", "{k.version}", ({debs})),')
