"""The C side: bench/memcg_bench built by `make bench-c` and run with this
kernel's specs of the selected stats."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pymemcg import __version__
from pymemcg.cgroupfs import memory_mount
from pymemcg.cli.bench import Cost

from . import REPO, STATS

C_SOURCE = REPO / "bench" / "memcg_bench.c"
C_BINARY = REPO / "build" / "memcg_bench"


def spec_lines(stats: Sequence[str] = STATS) -> List[str]:
    """'name kind slot item flags scale' per stat, as this kernel resolves it.

    The selection bench/memcg_bench loads, the same that Reader(stats) loads.
    """
    from pymemcg import slots
    from pymemcg.kernel_probe import kernel_facts
    from pymemcg.memory_stat import PAGE_SIZE
    mount = memory_mount()
    version = mount.version if mount else 2
    lines = [f"# pymemcg {__version__}, kernel {os.uname().release}, cgroup v{version}: "
             f"name kind slot item flags scale"]
    for r in slots.resolve(list(stats), kernel_facts(), version, PAGE_SIZE):
        lines.append(f"{r.stat.name} {r.kind} {r.slot} {r.item} {r.flags} {r.scale}")
    return lines


def build_c() -> Tuple[Optional[Path], str]:
    """(path of bench/memcg_bench built by `make bench-c`, or None, and why not)."""
    if not C_SOURCE.exists():
        return None, f"{C_SOURCE} is missing (not a source checkout)"
    try:
        proc = subprocess.run(["make", "-s", "-C", str(REPO), "bench-c"], capture_output=True,
                              text=True)
    except OSError as e:
        return None, f"make failed to run: {e}"
    if proc.returncode != 0 or not C_BINARY.exists():
        return None, f"`make bench-c` failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
    return C_BINARY, ""


class CBench:
    """Runs bench/memcg_bench with this kernel's specs of STATS."""

    def __init__(self, binary: Path) -> None:
        self.binary = str(binary)
        self.specs = str(binary.parent / "bench-specs.txt")
        with open(self.specs, "w") as f:
            f.write("\n".join(spec_lines()) + "\n")

    def argv(self, mode: str, path: str, count: int, rounds: int,
             methods: Optional[Sequence[str]] = None, capacity: int = 0) -> List[str]:
        argv = [self.binary]
        if methods:
            argv += ["-m", ",".join(methods)]
        if capacity:
            argv += ["-c", str(capacity)]
        return argv + [mode, self.specs, path, str(count), str(rounds)]

    def run(self, mode: str, path: str, count: int, rounds: int,
            methods: Optional[Sequence[str]] = None, capacity: int = 0
            ) -> Tuple[Dict[str, Cost], Dict[str, Dict[str, str]]]:
        """Costs per method, and the 'method=' and 'record' lines as dicts."""
        proc = subprocess.run(self.argv(mode, path, count, rounds, methods, capacity),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memcg_bench {mode} {path} failed: {proc.stderr.strip()}")
        costs: Dict[str, Cost] = {}
        info: Dict[str, Dict[str, str]] = {}
        for line in proc.stdout.splitlines():
            head, _, rest = line.partition(" ")
            if head == "skip":  # "skip method=NAME reason=free text"
                info.setdefault("skipped", {})[rest.split()[0].partition("=")[2]] = \
                    rest.partition("reason=")[2]
                continue
            kv = dict(item.split("=", 1) for item in rest.split())
            if head == "record":
                info["record"] = kv
            elif head.startswith("method="):
                kv["method"] = head[len("method="):]
                info[kv["method"]] = kv
                costs[kv["method"]] = Cost(int(kv["count"]), float(kv["real"]), float(kv["user"]),
                                           float(kv["sys"]),
                                           [float(x) for x in kv["rounds"].split(",")])
        return costs, info
