"""Which kernels the matrix boots, pinned by Debian version and sha256, and
fetching them: downloaded with `apt-get download` (6.1, 6.12: this host's
bookworm sources) or from Debian's pool over HTTPS (7.2: trixie-backports,
which this host's apt does not know), sha256-checked and unpacked with
`dpkg-deb -x` into build/vm/kernels/<series>/root (never installed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict

from workspace import BUILD, MatrixError, log


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
                f"the pin in vm/kernels.py (KERNELS) to one that `python3 vm/matrix.py latest` "
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
            f"versions its suites carry: move the pin in vm/kernels.py (KERNELS) to one that "
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
