"""The cgroups the benchmark makes for its trees, and their removal: children
first, never stopped half way by a signal, and what a killed run left."""

from __future__ import annotations

import math
import os
import re
import signal
import time
from typing import Dict, List

from . import log

BENCH_PREFIX = "pymemcg-bench-"


def plan_tree(total: int) -> List[str]:
    """Relative paths of `total - 1` cgroups below a top one, parents first.

    About sqrt(total) children of the top and the rest spread over them as
    grandchildren (10,000 = 1 + 99 + 9,900, about 100 x 100).
    """
    if total <= 1:
        return []
    fanout = max(1, math.isqrt(total - 1))
    mids = [f"g{i:03d}" for i in range(fanout)]
    leaves = [f"{mids[i % fanout]}/c{i:05d}" for i in range(total - 1 - fanout)]
    return mids + leaves


def enable_memory(parent: str) -> None:
    """On cgroup v2, let `parent`'s children have the memory controller (and
    its files): +memory in its cgroup.subtree_control. A v1 memory cgroup has
    no such file, and every child has the controller already."""
    control = os.path.join(parent, "cgroup.subtree_control")
    try:
        with open(control) as f:
            if "memory" in f.read().split():
                return
    except FileNotFoundError:
        return
    with open(control, "w") as f:
        f.write("+memory")


def make_tree(top: str, total: int) -> float:
    """mkdir `top` and total - 1 cgroups below it, each with the memory
    controller; returns the seconds it took."""
    t0 = time.perf_counter()
    enable_memory(os.path.dirname(top))
    os.mkdir(top)
    parents = set()
    for rel in plan_tree(total):
        path = os.path.join(top, rel)
        parent = os.path.dirname(path)
        if parent not in parents:
            enable_memory(parent)
            parents.add(parent)
        os.mkdir(path)
    return time.perf_counter() - t0


def remove_tree(top: str) -> List[str]:
    """rmdir the cgroup `top` and every cgroup below it, children first.

    Returns what could not be removed, as 'path: reason' strings. cgroupfs
    directories hold only kernel files, so rmdir of an empty cgroup is all
    it takes; a cgroup whose last task is still exiting is retried.
    """
    dirs = [dirpath for dirpath, _, _ in os.walk(top)]
    dirs.sort(key=lambda p: p.count("/"), reverse=True)
    failed = []
    for path in dirs:
        for attempt in range(20):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if attempt == 19:
                    failed.append(f"{path}: {e.strerror}")
                else:
                    time.sleep(0.05)
    return failed


def remove_stale_trees(base: str) -> None:
    """Remove pymemcg-bench-<pid> trees under `base` left by runs that were killed."""
    for name in os.listdir(base):
        m = re.fullmatch(re.escape(BENCH_PREFIX) + r"(\d+)", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        top = os.path.join(base, name)
        log(f"removing the cgroups an earlier, killed run left under {top}")
        for failure in remove_tree(top):
            log(f"could NOT remove {failure}")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class BenchCgroups:
    """The directory <own memory cgroup>/pymemcg-bench-<pid> for the run's cgroups.

    Made on first use; on exit it is removed with everything below it, and
    no signal may stop that half way.
    """

    def __init__(self, base: str) -> None:
        self.top = os.path.join(base, f"{BENCH_PREFIX}{os.getpid()}")
        self._old: Dict[int, object] = {}

    def path(self, name: str) -> str:
        if not os.path.isdir(self.top):
            os.mkdir(self.top)
        return os.path.join(self.top, name)

    def __enter__(self) -> "BenchCgroups":
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, _raise_interrupt)
        self._old[signal.SIGINT] = signal.getsignal(signal.SIGINT)
        return self

    def __exit__(self, *exc) -> None:
        for sig in self._old:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if os.path.isdir(self.top):
                failed = remove_tree(self.top)
                log("removed the benchmark cgroups" if not failed else
                    "could NOT remove: " + "; ".join(failed))
        finally:
            for sig, handler in self._old.items():
                signal.signal(sig, handler)
