"""Part 3: where the time goes, from perf profiles (cpu-clock, call graphs)
of each fast path run alone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import REPO, log
from .c_side import CBench
from .cgroups import BenchCgroups, make_tree, remove_tree


# --- part 3: where the time goes ---

@dataclass
class Profile:
    """One perf profile: sample shares (percent) by DSO, by symbol, inclusive."""

    title: str
    command: str
    samples: str              # as perf says it: '12K'
    dso: List[Tuple[float, str]]
    self_syms: List[Tuple[float, str]]
    inclusive: Dict[str, float]


#: (label, symbol prefix) of kernel functions whose inclusive share tells a story
LANDMARKS = [
    ("read() syscalls", "ksys_read"),
    ("memory.stat: making the text (memory_stat_show)", "memory_stat_show"),
    ("  of which printf formatting (vsnprintf)", "vsnprintf"),
    ("open() of files (do_sys_openat2)", "do_sys_openat2"),
    ("directory listings (iterate_dir)", "iterate_dir"),
    ("iterator creation: bpf(BPF_ITER_CREATE) (__sys_bpf)", "__sys_bpf"),
    ("  of which the anon-inode file (anon_inode_getfile)", "anon_inode_getfile"),
    ("  of which the seq_file and its private data (prepare_seq_file)", "prepare_seq_file"),
    ("iterator read: the walk (bpf_seq_read)", "bpf_seq_read"),
    ("  of which the BPF program runs (bpf_iter_run_prog)", "bpf_iter_run_prog"),
    ("  of which the 32 KiB seq buffer (__kvmalloc_node)", "__kvmalloc_node"),
    ("close() and the file's release (__x64_sys_close)", "__x64_sys_close"),
]

_PCT = r"\s+([\d.]+)%"


def _env_finding_this_package() -> Dict[str, str]:
    """The environment, with this package's directory first on PYTHONPATH, so
    that `python -m pymemcg_bench loop` runs from wherever the run started."""
    here = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + rest if rest else "")}


def perf_works() -> Tuple[bool, str]:
    """Can `perf record -e cpu-clock` sample here? (ok, why not)."""
    if shutil.which("perf") is None:
        return False, "perf is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o",
                               os.path.join(tmp, "p"), "--", "true"], capture_output=True,
                              text=True)
    if proc.returncode != 0:
        return False, f"perf record failed: {proc.stderr.strip()[-300:]}"
    return True, ""


def perf_profile(title: str, argv: List[str], delay_ms: int = 500) -> Profile:
    """perf record (cpu-clock, call graphs) of argv, skipping its first delay_ms."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        rec = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-g",
                              "-D", str(delay_ms), "-o", data, "--"] + argv,
                             capture_output=True, text=True, env=_env_finding_this_package())
        if rec.returncode != 0:
            raise RuntimeError(f"perf record {argv[0]} failed: {rec.stderr.strip()[-300:]}")

        def report(*opts: str) -> str:
            return subprocess.run(["perf", "report", "-i", data, "--stdio", "-g", "none"]
                                  + list(opts), capture_output=True, text=True).stdout

        head = report("--no-children", "--sort", "dso")
        samples = re.search(r"# Samples: (\d+\w?)", head)
        dso = [(float(p), d.strip()) for p, d in re.findall(r"^" + _PCT + r"\s+(\S.*)$", head, re.M)]
        syms = [(float(p), s.strip()) for p, s in
                re.findall(r"^" + _PCT + r"\s+\S+\s+\[[.k]\]\s+(\S+)", report(
                    "--no-children", "--sort", "dso,sym"), re.M)]
        inclusive: Dict[str, float] = {}
        for p, _self, s in re.findall(r"^" + _PCT + _PCT + r"\s+\[[.k]\]\s+(\S+)",
                                      report("--children", "--sort", "sym"), re.M):
            inclusive.setdefault(s, float(p))
    command = " ".join(argv).replace(sys.executable, "python").replace(str(REPO) + "/", "")
    return Profile(title, command, samples.group(1) if samples else "0", dso, syms, inclusive)


def landmark(profile: Profile, prefix: str) -> float:
    """Inclusive share (percent) of the first symbol named `prefix` or `prefix`_*."""
    for name, pct in profile.inclusive.items():
        if name == prefix or name.startswith(prefix + "_"):
            return pct
    return 0.0


def kernel_share(profile: Profile) -> float:
    """Percent of samples in the kernel, BPF programs included."""
    return sum(p for p, d in profile.dso if d.startswith("[kernel") or d.startswith("bpf_prog_"))


def measure_profiles(cbench: Optional[CBench], mount: str, cgroups: BenchCgroups,
                     est: Dict[str, float], seconds: float) -> List[Profile]:
    """perf profiles of the fast paths: C one cgroup both ways, Python Reader.read and
    pread + parse, and the tree reads of 1,000 cgroups.

    est: seconds per operation of each job, measured earlier (keys as below);
    each job runs for about `seconds` past its start-up.
    """
    me = [sys.executable, "-m", "pymemcg_bench", "loop"]

    def n(key: str) -> int:
        return max(1, int((seconds + 1.0) / est[key]))

    root = cgroups.path("profile")
    jobs = []
    if cbench is not None:
        jobs += [("C: memory.stat lseek + read, root cgroup",
                  cbench.argv("single", mount, n("c-stat"), 1, ["stat-seek"])),
                 ("C: BPF iterator session (create, read, close), root cgroup",
                  cbench.argv("single", mount, n("c-bpf"), 1, ["bpf"]))]
        if "c-fetch" in est:
            jobs.append(("C: BPF_PROG_RUN of memcg_fetch, root cgroup",
                         cbench.argv("single", mount, n("c-fetch"), 1, ["bpf-fetch"])))
    jobs += [("Python: Reader.read, root cgroup", me + ["read", mount, str(n("py-read"))]),
             ("Python: os.pread + parse of memory.stat, root cgroup",
              me + ["pread-parse", mount, str(n("py-parse"))])]
    if cbench is not None:
        jobs += [("C: walk + read of 1,000 memory.stat files",
                  cbench.argv("tree", root, n("c-stat-walk"), 1, ["stat-walk"])),
                 ("C: BPF walk of 1,000 cgroups (one session + overflow copy)",
                  cbench.argv("tree", root, n("c-bpf-walk"), 1, ["bpf-walk"])),
                 ("C: the iterator's walk of 1,000 cgroups with a null program (the floor)",
                  cbench.argv("tree", root, n("c-null-walk"), 1, ["null-walk"]))]
    jobs += [("Python: Reader.read_tree of 1,000 cgroups", me + ["tree", root, str(n("bpf"))]),
             ("Python: walk + parse of 1,000 memory.stat files",
              me + ["text-tree", root, str(n("text"))])]
    out = []
    make_tree(root, 1000)
    try:
        for title, argv in jobs:
            log(f"profile: {title}")
            out.append(perf_profile(title, argv))
    finally:
        failed = remove_tree(root)
        if failed:
            log("could NOT remove: " + "; ".join(failed))
    return out
