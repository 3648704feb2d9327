"""Which kernels the matrix boots, pinned by Debian version and sha256, and
fetching them.

A kernel is one or more Debian binary packages of one version, downloaded by
apt through tools/apt-private: a private apt state in build/vm/apt with the
archives this host's apt configuration names (bookworm and its security
suite carry the 6.1 and 6.12 kernels) plus EXTRA_SUITES (6.16 to 7.3 are in
trixie-backports only). apt checks the Release signatures; every .deb is
then checked against its pinned sha256 and unpacked with `dpkg-deb -x` into
build/vm/kernels/<series>/root (never installed).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
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
    arch: str = "x86_64"    # as platform.machine() names it (boot.ARCHES)

    @property
    def key(self) -> str:
        """Its name in KERNELS: the series, with the architecture when not x86_64."""
        return self.series if self.arch == "x86_64" else f"{self.series}-{self.arch}"


def _deb13(series: str, release: str, version: str, *debs: Tuple[str, str]) -> Kernel:
    """A trixie-backports kernel: its packages are named after `release`."""
    return Kernel(series, f"linux-image-{release}+deb13-cloud-amd64", version,
                  tuple((f"linux-{part}-{release}+deb13-cloud-amd64", sha) for part, sha in debs))


KERNELS: Dict[str, Kernel] = {k.key: k for k in (
    Kernel("6.1", "linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", (
        ("linux-image-6.1.0-56-cloud-amd64",
         "e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee"),)),
    Kernel("6.12", "linux-image-6.12.117+deb12-cloud-amd64", "6.12.117-1~deb12u1", (
        ("linux-image-6.12.117+deb12-cloud-amd64",
         "5195b288dec79e2981d6b84457f38b7ce7310a2d702930ec7d07209c7f78ce37"),)),
    # trixie-backports: it keeps several point releases of a series at a time
    _deb13("6.16", "6.16.12", "6.16.12-1~bpo13+1",
           ("image", "b56d926c1dc9bbdf151794753df57bd427af2398a033999016dcbbd211e8e461")),
    _deb13("6.17", "6.17.13", "6.17.13-1~bpo13+1",
           ("image", "2ac533a36b0c5107527166716414a4d04b00f7108e419df2084ca5aec268d1ff")),
    _deb13("6.18", "6.18.15", "6.18.15-1~bpo13+1",
           ("image", "5a507681ea8c978d02265a7fec2f02c9588fb48b54b7f71edc1059e86007f3ec")),
    # 6.19, 7.0 and 7.1: the index carries the signed kernel (linux-binary) of
    # every point release but the modules and base packages of none, so the
    # newest is booted from its kernel alone. The guest needs no module of
    # these kernels: virtio-pci, virtiofs, NVMe (the scratch disk) and ext4
    # are built into Debian's cloud kernels, and a guest that lacked one would
    # fail at boot, naming it (vm/init.sh).
    _deb13("6.19", "6.19.14", "6.19.14-1~bpo13+1",
           ("binary", "2c7b515d7846cc4ff80943dde6c22e323214b54bfc3e73e02c470034d953193a")),
    _deb13("7.0", "7.0.13", "7.0.13-1~bpo13+1",
           ("binary", "7e2f91866f9d857e5b08fcd915491b4cff79fbe51cdcb081b42658612074a552")),
    _deb13("7.1", "7.1.13", "7.1.13-1~bpo13+1",
           ("binary", "2feb3588cd790e0fd7f4c425b8ede990b34f80f70703aeb3a6b3c21207e59785")),
    _deb13("7.2", "7.2.12", "7.2.12-1~bpo13+1",
           ("binary", "aa6720823145e351d3c817c95fe58d89995a2bcba4978ad2418c36a1c272f795"),
           ("modules", "2f15b42b88ae56836b5fb3ac74c6cb795047891a5a25e5e69dedf8805b54017d"),
           ("base", "e9f6b719bb96f989fce7a61e78580b24de4e824b3c9f656db7c3169dbb45a25a")),
    _deb13("7.3", "7.3.4", "7.3.4-1~bpo13+1",
           ("binary", "c4fbc8e404958693b28825474c20742d70594d65ca58aea7be6a279c81eb6fa0"),
           ("modules", "359f04c363b7d3c5f9ce999ccb7351e00cc8eec0a30d6bc1cda37734987fc43d"),
           ("base", "e08baa43706ba6e8daff58029b039f46beecfb3b3750c6fa0d6d5ca508a46a43")),
    # arm64 (through an arm64 apt state: apt(arch=...)); 6.1 and 6.12 are
    # the same upstream releases as their x86_64 guests where Debian has them
    Kernel("6.1", "linux-image-6.1.0-57-cloud-arm64", "6.1.192-3", (
        ("linux-image-6.1.0-57-cloud-arm64",
         "51952bf54e96b0bc6263fb51a47b79e206dca0213cd5421162bc55cddbd6e51e"),), "aarch64"),
    Kernel("6.12", "linux-image-6.12.117+deb12-cloud-arm64", "6.12.117-1~deb12u1", (
        ("linux-image-6.12.117+deb12-cloud-arm64",
         "dacb299a09c53cea91e49d7e9e9dc851b9ae1f858c27bea3ebf57831d0447cab"),), "aarch64"),
    Kernel("7.3", "linux-image-7.3.4+deb13-cloud-arm64", "7.3.4-1~bpo13+1", (
        ("linux-binary-7.3.4+deb13-cloud-arm64",
         "34dc0e1a6320440cc3f6e34d12ae099041a2e10555061d50ff4e5af602121788"),
        ("linux-modules-7.3.4+deb13-cloud-arm64",
         "90a6ce3e126d739938996a7493335403de7678abcdbae916c7f4c61ff8de3f32"),
        ("linux-base-7.3.4+deb13-cloud-arm64",
         "6fa3dd2209af21a9a73da38a82102e223c98804cb4b5128062df1819d5c5239a")), "aarch64"),
)}

# How `latest` finds a series in apt's index: the name of its first package
# (capturing the release part of the name; {arch}: Debian's architecture) and
# the packages one kernel is made of
SERIES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "6.1": (r"linux-image-(6\.1\.0-\d+)-cloud-{arch}", ("image",)),
    "6.12": (r"linux-image-(6\.12\.\d+\+deb12)-cloud-{arch}", ("image",)),
    "6.16": (r"linux-image-(6\.16\.\d+\+deb13)-cloud-{arch}", ("image",)),
    "6.17": (r"linux-image-(6\.17\.\d+\+deb13)-cloud-{arch}", ("image",)),
    "6.18": (r"linux-image-(6\.18\.\d+\+deb13)-cloud-{arch}", ("image",)),
    # the kernel alone: see KERNELS
    "6.19": (r"linux-binary-(6\.19\.\d+\+deb13)-cloud-{arch}", ("binary",)),
    "7.0": (r"linux-binary-(7\.0\.\d+\+deb13)-cloud-{arch}", ("binary",)),
    "7.1": (r"linux-binary-(7\.1\.\d+\+deb13)-cloud-{arch}", ("binary",)),
    "7.2": (r"linux-binary-(7\.2\.\d+\+deb13)-cloud-{arch}", ("binary", "modules", "base")),
    "7.3": (r"linux-binary-(7\.3\.\d+\+deb13)-cloud-{arch}", ("binary", "modules", "base")),
}


# Debian's name of each architecture, for its private apt state
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def apt(*args: str, cwd: Optional[Path] = None, arch: str = "x86_64"
        ) -> subprocess.CompletedProcess:
    """apt-get (or, with "apt-cache" first, apt-cache) on the private state of
    an architecture (this host's, or another one's in a state of its own)."""
    state, env = APT_STATE, dict(os.environ)
    if arch != "x86_64":
        state = BUILD / f"apt-{DEB_ARCH[arch]}"
        env["APT_PRIVATE_ARCH"] = DEB_ARCH[arch]
    return subprocess.run([str(APT_PRIVATE), str(state), *EXTRA_SUITES, "--", *args],
                          cwd=cwd, capture_output=True, text=True, env=env)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def kernel_root(k: Kernel) -> Path:
    return BUILD / "kernels" / k.key / "root"


def download(package: str, version: str, sha: str, arch: str = "x86_64") -> Path:
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
            apt("update", arch=arch)
        if part.exists():
            shutil.rmtree(part)
        part.mkdir()
        p = apt("download", f"{package}={version}", cwd=part, arch=arch)
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
    files = [download(package, k.version, sha, k.arch) for package, sha in k.debs]
    if root.parent.exists():
        shutil.rmtree(root.parent)
    root.mkdir(parents=True)
    for deb in files:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    stamp.write_text(pin + "\n")
    return root


def modules_root(root: Path) -> Optional[Path]:
    """lib/modules, or usr/lib/modules in Debian 14's merged-/usr packages;
    None for a kernel unpacked without its modules."""
    for d in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if d.is_dir():
            return d
    return None


def kernel_release(root: Path) -> str:
    """The kernel's release (uname -r), from its modules directory or, for a
    kernel alone, from the name of its boot/vmlinuz-RELEASE."""
    mods = modules_root(root)
    rels = [p.name for p in mods.iterdir()] if mods else \
        [p.name[len("vmlinuz-"):] for p in (root / "boot").glob("vmlinuz-*")]
    if len(rels) != 1:
        raise MatrixError(f"{root}: expected one kernel release, found {rels or 'none'}")
    return rels[0]


def vmlinuz(root: Path) -> Path:
    rel = kernel_release(root)
    mods = modules_root(root)
    for cand in (root / "boot" / f"vmlinuz-{rel}", *([mods / rel / "vmlinuz"] if mods else [])):
        if cand.exists():
            return cand
    raise MatrixError(f"{root}: no vmlinuz for {rel}")


# ---------------------------------------------------------------- latest

def _version_cmp(a: str, b: str) -> int:
    if a == b:
        return 0
    gt = subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0
    return 1 if gt else -1


def _versions(package: str, arch: str) -> Dict[str, str]:
    """{version: sha256 of its .deb} of a package in the private index."""
    out = apt("apt-cache", "show", package, arch=arch).stdout
    found: Dict[str, str] = {}
    for stanza in out.split("\n\n"):
        ver = re.search(r"^Version: (.+)$", stanza, re.M)
        sha = re.search(r"^SHA256: (.+)$", stanza, re.M)
        if ver and sha:
            found.setdefault(ver.group(1), sha.group(1))
    return found


def newest(series: str, arch: str = "x86_64") -> Optional[Kernel]:
    """The newest kernel of `series` for `arch` whose every package apt
    carries in one version."""
    pattern, parts = SERIES[series]
    cloud = f"cloud-{DEB_ARCH[arch]}"
    pattern = pattern.replace("cloud-{arch}", cloud)
    listing = apt("apt-cache", "search", "--names-only", cloud, arch=arch)
    if listing.returncode != 0:
        raise MatrixError(f"apt-cache search failed:\n{listing.stderr.strip()}")
    rels = sorted({m.group(1) for line in listing.stdout.splitlines()
                   for m in [re.fullmatch(pattern, line.split(" ", 1)[0])] if m},
                  key=lambda r: [int(x) for x in re.findall(r"\d+", r)])
    for rel in reversed(rels):
        names = [f"linux-{part}-{rel}-{cloud}" for part in parts]
        found = [_versions(n, arch) for n in names]
        common = set(found[0]).intersection(*found[1:])
        if common:
            ver = max(common, key=functools.cmp_to_key(_version_cmp))
            return Kernel(series, f"linux-image-{rel}-{cloud}", ver,
                          tuple((n, f[ver]) for n, f in zip(names, found)), arch)
    return None


def latest() -> None:
    """Print the newest kernel of every pinned series and architecture as a
    pin for KERNELS."""
    for pinned in KERNELS.values():
        k = newest(pinned.series, pinned.arch)
        if k is None:
            print(f"{pinned.key}: none complete in apt's index "
                  f"({', '.join(SERIES[pinned.series][1])})")
            continue
        debs = "".join(f'\n        ("{n}",\n         "{sha}"),' for n, sha in k.debs)
        arch = "" if k.arch == "x86_64" else f', "{k.arch}"'
        print(f'    # newest {k.key}; pinned: {pinned.package} {pinned.version}\n'
              f'    Kernel("{k.series}", "{k.package}", "{k.version}", ({debs}){arch}),')
