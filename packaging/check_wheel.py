"""Checks a release wheel and prints what it needs from a host.

    python packaging/check_wheel.py dist/pymemcg-*-manylinux_2_28_aarch64.whl

For each wheel: its extension's machine matches the wheel's tag, it needs no
shared library but glibc's, every glibc symbol it takes is versioned no newer
than the manylinux tag allows, no other symbol is left undefined but the
Python C API's, it carries pymemcg/py.typed and every Python module of this
checkout's pymemcg/ (each subpackage listed in pyproject.toml), and
`auditwheel show` names the same manylinux policy. Prints
the wheel's size, the extension's size, its NEEDED entries and its newest
GLIBC_ version. Exits non-zero naming what is wrong. Uses objdump (binutils),
which reads the dynamic section and symbols of either architecture's ELF.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# what glibc itself provides (manylinux's allowed libraries that glibc ships)
GLIBC_LIBS = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
              "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
# ELF e_machine of each wheel architecture
MACHINES = {"x86_64": 62, "aarch64": 183}
# the package of the checkout this script is in, whose modules a wheel must carry
PACKAGE = Path(__file__).resolve().parent.parent / "pymemcg"


def missing_modules(names: list[str]) -> list[str]:
    """The checkout's pymemcg/**/*.py that a wheel holding `names` lacks
    (a subpackage left out of pyproject.toml's packages is not built in)."""
    modules = (p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py"))
    return sorted(set(modules) - set(names))


def glibc_version(text: str) -> tuple[int, ...]:
    """(2, 28) of "GLIBC_2.28"."""
    return tuple(int(p) for p in text.split("_", 1)[1].split("."))


def check(wheel: Path) -> list[str]:
    """Problems with one wheel (empty when it is good); prints its facts."""
    m = re.search(r"-cp39-abi3-manylinux_(\d+)_(\d+)_(x86_64|aarch64)\.whl$", wheel.name)
    if not m:
        return [f"{wheel.name}: not a cp39-abi3 manylinux x86_64/aarch64 wheel name"]
    limit, arch = (int(m.group(1)), int(m.group(2))), m.group(3)
    problems = []
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if "pymemcg/py.typed" not in names:
            # without the PEP 561 marker, users' type checkers ignore the annotations
            problems.append("pymemcg/py.typed is not in the wheel")
        missing = missing_modules(names)
        if missing:
            problems.append(f"modules of the checkout not in the wheel: {missing}")
        sos = [n for n in names if n.endswith(".so") or ".so." in n]
        if sos != ["pymemcg/_pymemcg.abi3.so"]:
            problems.append(f"shared objects in the wheel: {sos}, expected only the extension")
            return problems
        so = Path(zf.extract(sos[0], tmp))
        so_size = so.stat().st_size
        machine = int.from_bytes(so.read_bytes()[18:20], "little")
        dynamic = subprocess.run(["objdump", "-p", so], capture_output=True, text=True,
                                 check=True).stdout
        symbols = subprocess.run(["objdump", "-T", so], capture_output=True, text=True,
                                 check=True).stdout
    if machine != MACHINES[arch]:
        problems.append(f"the extension is not {arch}: ELF machine {machine}")
    needed = re.findall(r"^\s*NEEDED\s+(\S+)", dynamic, re.M)
    foreign = sorted(set(needed) - GLIBC_LIBS)
    if foreign:
        problems.append(f"needs libraries outside glibc: {foreign}")
    versions, unversioned = set(), []
    for line in symbols.splitlines():
        if "*UND*" not in line:
            continue
        fields = line.split()
        name = fields[-1]
        version = next((f.strip("()") for f in fields if f.startswith("(GLIBC_")), None)
        if version:
            versions.add(version)
        elif not re.match(r"_?Py|_Py|__gmon_start__|_ITM_|__cxa_finalize|__deregister|__register",
                          name):
            unversioned.append(name)
    newest = max(versions, key=glibc_version) if versions else "none"
    if versions and glibc_version(newest) > limit:
        late = sorted(v for v in versions if glibc_version(v) > limit)
        problems.append(f"symbol versions newer than glibc {limit[0]}.{limit[1]}: {late}")
    if unversioned:
        problems.append(f"undefined symbols that are neither glibc's nor Python's: {unversioned}")
    show = subprocess.run([Path(sys.executable).parent / "auditwheel", "show", wheel],
                          capture_output=True, text=True)
    policy = f"manylinux_{limit[0]}_{limit[1]}_{arch}"
    said = " ".join(show.stdout.split())
    if show.returncode != 0 or f'consistent with the following platform tag: "{policy}"' not in said:
        problems.append(f"auditwheel show does not agree on {policy}: {show.stdout}{show.stderr}")
    print(f"{wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB, extension "
          f"{so_size / 1024:.0f} KiB, NEEDED {needed}, newest symbol version {newest}, "
          f"auditwheel: {policy}")
    return problems


def main(argv: list[str]) -> int:
    """Checks every wheel named; 1 when any has a problem."""
    failed = False
    for arg in argv:
        for problem in check(Path(arg)):
            print(f"{arg}: {problem}", file=sys.stderr)
            failed = True
    return 1 if failed or not argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
