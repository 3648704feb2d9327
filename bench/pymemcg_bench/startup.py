"""What starting costs, each in a fresh process (what a process learns about
the kernel, and loads, is kept for its lifetime): a Reader made and its
first read() done, its first read_tree() after that, `pymemcg snapshot`
from start to exit, and the peak memory that loading every program
(read, read_tree, read_many) charges to a memory cgroup of its own."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Dict, List

from . import log

# one child's start, as JSON: seconds from before Reader() to after its first
# read(), then the first read_tree()
TIMED_CHILD = """
import json, sys, time
import pymemcg
path = sys.argv[1]
t0 = time.perf_counter()
r = pymemcg.Reader(backend="bpf", shared_pins=False)
r.read(path)
t1 = time.perf_counter()
r.read_tree(path)
t2 = time.perf_counter()
print(json.dumps({"first_read": t1 - t0, "first_tree": t2 - t1}))
"""

# loads everything between two lines on stdin, in the cgroup it was started in
LOADING_CHILD = """
import sys
import pymemcg
path = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
r = pymemcg.Reader(backend="bpf", shared_pins=False)
r.read(path)
r.read_tree(path)
r.read_many([path, path])
print("done", flush=True)
sys.stdin.readline()
"""


def _median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def peak_charged(cgroup_base: str, path: str, version: int) -> int:
    """Bytes: the highest usage of a new cgroup under cgroup_base while a
    child in it loaded every program, less its usage just before."""
    cg = os.path.join(cgroup_base, f"pymemcg-bench-startup-{uuid.uuid4().hex[:8]}")
    os.mkdir(cg)
    usage, peak = (("memory.current", "memory.peak") if version == 2
                   else ("memory.usage_in_bytes", "memory.max_usage_in_bytes"))

    def read(name: str) -> int:
        with open(os.path.join(cg, name)) as f:
            return int(f.read())

    def enter() -> None:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    proc = subprocess.Popen([sys.executable, "-c", LOADING_CHILD, path], preexec_fn=enter,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the loading child did not start")
        if version == 1:
            with open(os.path.join(cg, peak), "w") as f:
                f.write("0")   # v2's memory.peak counts from the child's start
        before = read(usage)
        proc.stdin.write("\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "done":
            raise RuntimeError("the loading child failed")
        charged = read(peak) - before
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
        return charged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for _ in range(100):   # the child's pages leave with it, not at once
            try:
                os.rmdir(cg)
                break
            except OSError:
                time.sleep(0.05)


def load_average() -> float:
    """The 1-minute load average: how many others wanted the CPUs meanwhile."""
    return os.getloadavg()[0]


def measure_startup(cgroup_base: str, path: str, version: int, rounds: int) -> Dict[str, float]:
    """Medians over `rounds` fresh processes, in seconds; and the peak, in bytes.
    The children may write bytecode, as an installed package has it: the
    first, untimed, compiles what the others then load."""
    log(f"start-up: {rounds} fresh processes each way")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", TIMED_CHILD, path], check=True, capture_output=True,
                   env=env)
    subprocess.run([sys.executable, "-m", "pymemcg", "snapshot", "--backend", "bpf", path],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    load_before = load_average()
    reads: List[float] = []
    trees: List[float] = []
    snapshots: List[float] = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", TIMED_CHILD, path], check=True,
                             capture_output=True, text=True, env=env).stdout
        times = json.loads(out)
        reads.append(times["first_read"])
        trees.append(times["first_tree"])
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pymemcg", "snapshot", "--backend", "bpf", path],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        snapshots.append(time.perf_counter() - t0)
    return {"first_read": _median(reads), "first_tree": _median(trees),
            "snapshot": _median(snapshots),
            "load_before": load_before, "load_after": load_average(),
            "peak": float(max(peak_charged(cgroup_base, path, version) for _ in range(3)))}


def report_startup(result: Dict[str, float], rounds: int, path: str) -> List[str]:
    """The start-up table, with the goals each line is held to."""
    def ms(s: float) -> str:
        return f"{s * 1000:.0f} ms"

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"
    peak_mib = result["peak"] / (1 << 20)
    return [
        "## Start-up",
        "",
        f"Each in a fresh process, medians of {rounds} (`{path}`); the peak is the highest "
        f"of 3. Load average (1 min) {result['load_before']:.2f} before, "
        f"{result['load_after']:.2f} after, on {os.cpu_count()} CPUs.",
        "",
        "| | measured | goal | |",
        "|---|---|---|---|",
        f"| `Reader()` to its first `read()` done | {ms(result['first_read'])} | 100 ms | "
        f"{met(result['first_read'] <= 0.1)} |",
        f"| then its first `read_tree()` | {ms(result['first_tree'])} | 100 ms | "
        f"{met(result['first_tree'] <= 0.1)} |",
        f"| `pymemcg snapshot`, start to exit | {ms(result['snapshot'])} | 300 ms | "
        f"{met(result['snapshot'] <= 0.3)} |",
        f"| peak memory charged while loading every program | {peak_mib:.1f} MiB | 32 MiB | "
        f"{met(peak_mib <= 32)} |",
        "",
    ]
