"""The abi3 wheel under every CPython it claims, each with the wheel alone.

    python tests/wheel_pythons.py dist/pymemcg-<v>-cp39-abi3-manylinux_2_28_x86_64.whl

tests/wheel_smoke.sh runs it on the wheel it built. What is claimed comes
from the wheel itself: Requires-Python and the "Programming Language ::
Python :: 3.N" classifiers (pyproject.toml), which must agree: the lowest
classifier is Requires-Python's floor and the versions run without a gap.
Each claimed 3.N runs under the newest pyenv CPython 3.N.* in
$PYENV_ROOT/versions (default /root/.pyenv, as on the development and CI
machines); a claimed version without an interpreter fails, it is never
skipped.

For each interpreter:

1. a fresh venv without pip (`python -m venv --without-pip`): nothing in it
   but the standard library;
2. the interpreter's own pip (`pip --python <venv>`) installs into it the
   wheel and its runtime dependencies pinned for that interpreter
   (packaging/runtime-requirements.txt), every file hash checked, with no
   index and no network (unshare --net), from a wheelhouse under
   build/wheelhouse/ keyed by the requirements' sha256: pip downloads into
   it (by name, version and hash) only what it lacks. In hash-checking mode
   pip refuses a dependency the wheel declares that the pins leave out;
3. with the build tools, headers, libbpf and the host's libelf hidden
   (tests/isolate.sh bare), no network, PATH holding only the venv, from a
   directory outside the checkout, as root on the real kernel:
   `pymemcg verify --format json` must exit 0 with no stat mismatched and
   some compared exactly; every module of the package must import (or, for
   one that needs an extra, raise the pymemcg.Error that names it); and one
   Reader.read through BPF must come from the venv's pymemcg under that
   interpreter.

Then the oldest CPython claimed once more with the oldest runtime
dependencies the wheel declares (packaging/runtime-requirements-oldest.txt,
whose cffi pin must be the wheel's own floor). Every run must serve the same
stats and find the same ones exact. Prints the seconds each step took.

Needs root (namespaces, BPF). Env: PYENV_ROOT; WHEEL_PYTHONS_ISOLATE=0 runs
step 3 without the namespaces (a machine without unshare).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

CHECKOUT = Path(__file__).resolve().parent.parent
REQUIREMENTS = CHECKOUT / "packaging" / "runtime-requirements.txt"
OLDEST_REQUIREMENTS = CHECKOUT / "packaging" / "runtime-requirements-oldest.txt"
WHEELHOUSE = CHECKOUT / "build" / "wheelhouse"
ISOLATE = CHECKOUT / "tests" / "isolate.sh"

Version = Tuple[int, int]

# run in the venv: the package is the venv's, under the expected interpreter;
# every module imports, or (needing an extra the venv lacks) raises a
# pymemcg.Error naming it; one read goes through BPF with neither libelf nor
# libbpf mapped
READ = """
import importlib, os, pkgutil, sys
import pymemcg
for module in pkgutil.walk_packages(pymemcg.__path__, "pymemcg."):
    if module.name != "pymemcg.__main__":
        try:
            importlib.import_module(module.name)
        except pymemcg.Error as e:
            assert "pip install 'pymemcg[" in str(e), (module.name, e)
from pymemcg.cgroupfs import own_memory_cgroup
venv, version, minor = sys.argv[1], sys.argv[2], tuple(map(int, sys.argv[3].split(".")))
assert sys.implementation.name == "cpython", sys.implementation
assert sys.version_info[:2] == minor, sys.version
assert os.path.realpath(pymemcg.__file__).startswith(os.path.realpath(venv) + "/"), pymemcg.__file__
assert pymemcg.__version__ == version, pymemcg.__version__
with pymemcg.Reader(stats=["anon", "file", "usage", "pgfault"], backend="bpf") as r:
    rec = r.read(own_memory_cgroup())
    assert r.backend == "bpf", r.backend
    assert all(type(rec[n]) is int and rec[n] >= 0 for n in rec.keys()), rec.as_dict()
    assert rec["usage"] > 0 and rec["pgfault"] > 0, rec.as_dict()
maps = open("/proc/self/maps").read()
libs = sorted({l.split()[-1] for l in maps.splitlines() if "libelf" in l or "libbpf" in l})
assert not libs, libs
print(sys.version.split()[0], "read", rec.as_dict())
"""


class Failed(Exception):
    """A check failed; the message says which and what was seen."""


@dataclass
class Claim:
    """What the wheel says about itself."""

    version: str                  # pymemcg's
    requires_python: str          # e.g. ">=3.9"
    pythons: List[Version]        # from the classifiers, ascending
    requires_dist: List[str]


def read_claim(wheel: Path) -> Claim:
    """The wheel's METADATA: Requires-Python, classifiers, Requires-Dist."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(name).decode())
    pythons = sorted(
        (int(m.group(1)), int(m.group(2)))
        for c in meta.get_all("Classifier", [])
        for m in [re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", c)] if m)
    return Claim(meta["Version"], meta.get("Requires-Python", ""), pythons,
                 meta.get_all("Requires-Dist", []))


def check_claim(claim: Claim) -> None:
    """The classifiers and Requires-Python say the same thing."""
    if not claim.pythons:
        raise Failed("the wheel names no Python version in its classifiers")
    floor = re.fullmatch(r">=\s*(\d+)\.(\d+)", claim.requires_python)
    if not floor:
        raise Failed(f"Requires-Python {claim.requires_python!r}: expected >=3.N")
    if (int(floor.group(1)), int(floor.group(2))) != claim.pythons[0]:
        raise Failed(f"Requires-Python {claim.requires_python} but the oldest classifier is "
                     f"{fmt(claim.pythons[0])}")
    want = [(3, m) for m in range(claim.pythons[0][1], claim.pythons[-1][1] + 1)]
    if claim.pythons != want:
        raise Failed(f"the classifiers skip a version: {[fmt(v) for v in claim.pythons]}")


def check_oldest_pins(claim: Claim) -> None:
    """packaging/runtime-requirements-oldest.txt pins each dependency the
    wheel declares at the floor it declares."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([0-9.]+)", OLDEST_REQUIREMENTS.read_text(),
                           re.M))
    for dist in claim.requires_dist:
        if "extra ==" in dist:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", dist.strip())
        if not m:
            raise Failed(f"Requires-Dist {dist!r}: expected NAME>=VERSION")
        name, floor = m.groups()
        pinned = pins.get(name)
        if pinned is None or padded(pinned) != padded(floor):
            raise Failed(f"{OLDEST_REQUIREMENTS.name} pins {name}=={pinned}, "
                         f"but the wheel declares {dist}")


def padded(version: str) -> Tuple[int, ...]:
    """(1, 15, 0) for "1.15" and "1.15.0" alike."""
    parts = tuple(int(p) for p in version.split("."))
    return parts + (0,) * (3 - len(parts))


def fmt(v: Version) -> str:
    return f"{v[0]}.{v[1]}"


def interpreter(minor: Version) -> Path:
    """pyenv's newest CPython minor.* (e.g. 3.9.18 for 3.9); Failed if none."""
    root = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
    found = []
    for d in root.glob(f"{fmt(minor)}.*"):
        m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", d.name)
        exe = d / "bin" / f"python{fmt(minor)}"
        if m and exe.is_file():
            found.append((int(m.group(3)), exe))
    if not found:
        raise Failed(f"no CPython {fmt(minor)} under {root}, though the wheel claims it: "
                     f"install it (`pyenv install {fmt(minor)}`) or drop its classifier")
    return max(found)[1]


def run(cmd: List[str], what: str, cwd: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """cmd, which must exit 0; Failed with its output otherwise."""
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise Failed(f"{what}: exit {p.returncode}\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p


def namespaces() -> bool:
    """Whether to run in new network and mount namespaces (WHEEL_PYTHONS_ISOLATE)."""
    return os.environ.get("WHEEL_PYTHONS_ISOLATE", "1") != "0"


def isolated(cmd: List[str], venv: Path, work: Path) -> List[str]:
    """cmd with no network, the build tools hidden and PATH = the venv's bin."""
    env = ["env", "-i", f"HOME={work}", f"PATH={venv}/bin", "LANG=C.UTF-8",
           "PYMEMCG_REQUIRE_BPF=1"]
    if not namespaces():
        return env + cmd
    return ["unshare", "--net", "--mount", "--propagation", "private",
            "/bin/sh", str(ISOLATE), "bare"] + env + cmd


def wheelhouse(requirements: Path) -> Path:
    """build/wheelhouse/<sha256 of the requirements, 16 digits>."""
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    path = WHEELHOUSE / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def install(base: Path, venv: Path, wheel: Path, requirements: Path, work: Path) -> str:
    """The wheel and its pinned dependencies into venv, with base's own pip,
    offline and hash checked; downloads what the wheelhouse lacks first.
    Returns "offline" or "downloaded"."""
    house = wheelhouse(requirements)
    wanted = work / f"install-{venv.name}.txt"
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    wanted.write_text(f"-r {requirements}\n"
                      f"pymemcg @ {wheel.resolve().as_uri()} --hash=sha256:{digest}\n")
    pip = [base, "-m", "pip", "--python", venv / "bin" / "python"]
    offline = (["unshare", "--net"] if namespaces() else []) + pip + [
        "--isolated", "install", "-q", "--disable-pip-version-check", "--no-index",
        "--find-links", house, "--require-hashes", "--only-binary", ":all:", "-r", wanted]
    if subprocess.run([str(c) for c in offline], capture_output=True).returncode == 0:
        return "offline"
    run(pip + ["download", "-q", "--disable-pip-version-check", "--only-binary", ":all:",
               "--require-hashes", "-d", house, "-r", requirements],
        f"pip download of {requirements.name} for {venv.name}")
    run(offline, f"pip install of the wheel into {venv.name}")
    return "downloaded"


def check_one(name: str, minor: Version, wheel: Path, claim: Claim, requirements: Path,
              work: Path) -> dict:
    """One interpreter: venv, install, verify, read. Returns verify's counts
    and exact stats, and the seconds of each step."""
    base = interpreter(minor)
    venv = work / name
    times = {}
    t = time.monotonic()
    run([base, "-m", "venv", "--without-pip", venv], f"{name}: python -m venv")
    times["venv"] = time.monotonic() - t
    t = time.monotonic()
    how = install(base, venv, wheel, requirements, work)
    times["install"] = time.monotonic() - t
    installed = sorted(p.name for p in (venv / "lib" / f"python{fmt(minor)}" / "site-packages")
                       .iterdir() if p.name.endswith(".dist-info"))
    outside = work / "outside"
    outside.mkdir(exist_ok=True)
    t = time.monotonic()
    p = subprocess.run(isolated(["pymemcg", "verify", "--format", "json"], venv, work),
                       cwd=outside, capture_output=True, text=True)
    times["verify"] = time.monotonic() - t
    if p.returncode != 0:
        raise Failed(f"{name}: pymemcg verify exited {p.returncode}\n{p.stdout[-4000:]}"
                     f"{p.stderr[-4000:]}")
    result = json.loads(p.stdout)
    counts = result["counts"]
    if not result["ok"] or counts["mismatch"] != 0 or counts["exact"] == 0 \
            or not result["backend"].startswith("bpf"):
        raise Failed(f"{name}: pymemcg verify: ok={result['ok']} backend={result['backend']} "
                     f"counts={counts}")
    t = time.monotonic()
    read = run(isolated(["python", "-c", READ, venv, claim.version, fmt(minor)], venv, work),
               f"{name}: import pymemcg and read through BPF", cwd=outside)
    times["read"] = time.monotonic() - t
    exact = sorted(s["name"] for s in result["stats"] if s["outcome"] == "exact")
    print(f"ok: {name} ({base}): {', '.join(installed)} installed {how}; verify: "
          f"{counts['exact']} exact, 0 mismatched of {counts['served']} served; "
          f"{read.stdout.strip()}")
    print(f"    {name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
          + f", total {sum(times.values()):.1f} s")
    return {"served": counts["served"], "exact": exact}


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    wheel = Path(argv[0])
    claim = read_claim(wheel)
    failures = []
    try:
        check_claim(claim)
        check_oldest_pins(claim)
        print(f"ok: {wheel.name} claims CPython {', '.join(fmt(v) for v in claim.pythons)} "
              f"(Requires-Python {claim.requires_python}, classifiers); "
              f"Requires-Dist {[d for d in claim.requires_dist if 'extra ==' not in d]}")
    except Failed as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    runs = [(f"cpython-{fmt(v)}", v, REQUIREMENTS) for v in claim.pythons]
    runs.append((f"cpython-{fmt(claim.pythons[0])}-oldest-deps", claim.pythons[0],
                 OLDEST_REQUIREMENTS))
    seen = {}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pymemcg-wheel-pythons.") as tmp:
        for name, minor, requirements in runs:
            try:
                seen[name] = check_one(name, minor, wheel, claim, requirements, Path(tmp))
            except Failed as e:
                failures.append(name)
                print(f"FAIL: {e}", file=sys.stderr)
    if seen and len({json.dumps(s, sort_keys=True) for s in seen.values()}) != 1:
        failures.append("agreement")
        print(f"FAIL: the interpreters disagree on what BPF serves or what is exact: {seen}",
              file=sys.stderr)
    elif seen:
        first = next(iter(seen.values()))
        print(f"ok: every interpreter served the same {first['served']} stats and found the "
              f"same {len(first['exact'])} exact")
    print(f"wheel under {len(runs)} interpreter runs: {time.monotonic() - start:.0f} s, "
          f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
