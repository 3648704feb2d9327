#!/usr/bin/env python3
"""oomd.py: a userspace OOM killer that decides as systemd-oomd does, on pymemcg.

    oomd.py --pressure /system.slice                 # 60% full avg10 for 30 s: dry run
    oomd.py --pressure /work:50:5 --swap /user.slice --act
    oomd.py --files ...                              # the same, reading the cgroup files

Cgroup v2 only. The rules are systemd-oomd's (src/oom/oomd-manager.c and
oomd-util.c): every second, a --pressure cgroup whose memory.pressure "full"
avg10 stayed above its limit for its duration, and that had reclaim activity
within 30 s, loses the candidate below it with the highest pgscan rate (then
the largest memory.current); every 150 ms, when memory available and swap free
are both below 10%, the --swap cgroups lose their largest swap user (above 5%
of swap). Candidates are the leaves below a monitored cgroup and the cgroups
with memory.oom.group set (nothing below those). user.oomd_omit on a candidate
(owned by root or by the monitored cgroup's owner) keeps it out; user.oomd_avoid
puts it last. After a pressure kill nothing more is killed for 15 s. Dry run
unless --act, which writes cgroup.kill. OOM kills by the kernel are logged as
they happen (pymemcg.oom.OomEvents).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import sys
import time
from dataclasses import dataclass
from typing import (Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence,
                    Tuple, Union)

import pymemcg
from pymemcg.cgroupfs import memory_mount
from pymemcg.oom import OomEvents

PRESSURE_INTERVAL_S = 1.0          # MEM_PRESSURE_INTERVAL_USEC
SWAP_INTERVAL_S = 0.15             # SWAP_INTERVAL_USEC
DEFAULT_LIMIT_PERCENT = 60.0       # DEFAULT_MEM_PRESSURE_LIMIT_PERCENT
DEFAULT_DURATION_S = 30.0          # DEFAULT_MEM_PRESSURE_DURATION_USEC
MIN_DURATION_S = 1.0               # oomd.conf refuses shorter durations
SWAP_USED_LIMIT_PERCENT = 90       # DEFAULT_SWAP_USED_LIMIT_PERCENT
CANDIDATE_SWAP_PERCENT = 5         # THRESHOLD_SWAP_USED_PERCENT
RECLAIM_WINDOW_S = 30.0            # RECLAIM_DURATION_USEC
POST_ACTION_DELAY_S = 15.0         # POST_ACTION_DELAY_USEC
NONE, AVOID, OMIT = 0, 1, 2        # ManagedOOMPreference, in systemd's sort order
PGSCAN = ("pgscan_kswapd", "pgscan_direct", "pgscan_khugepaged", "pgscan_proactive")
STATS = ("pressure_full_avg10_x100", "usage", "swap_usage", "memory_min", "memory_low",
         "oom_group") + PGSCAN
V2_FILES = {"pressure": "memory.pressure", "stat": "memory.stat", "current": "memory.current",
            "swap": "memory.swap.current", "min": "memory.min", "low": "memory.low",
            "oom_group": "memory.oom.group"}
log = logging.getLogger("oomd")
Number = Union[int, float]         # float: pymemcg.MAX ("max")


@dataclass
class Sample:
    """One cgroup at one poll; path as the hierarchy names it ("/a/b")."""
    path: str
    full_avg10_x100: Optional[int]     # hundredths of a percent
    pgscan: Optional[int]              # pages scanned by reclaim since creation
    current: Optional[int]             # bytes
    swap: Optional[int]                # bytes
    memory_min: Optional[Number]       # bytes
    memory_low: Optional[Number]
    oom_group: bool = False


def under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def candidates_of(root: str, walk: Iterable[Tuple[str, bool]]) -> List[int]:
    """systemd-oomd's candidates below root, as positions in a pre-order walk
    of (path, oom_group): leaves, and oom.group cgroups (nothing below them)."""
    items = list(walk)
    parents = {p.rpartition("/")[0] or "/" for p, _ in items[1:]}
    out: List[int] = []
    cut: Optional[str] = None
    for i, (path, group) in enumerate(items):
        if path == root:
            if root not in parents:
                out.append(i)
        elif cut is None or not under(path, cut):
            cut = path if group else None
            if group or path not in parents:
                out.append(i)
    return out


def full_avg10(text: Optional[str]) -> Optional[int]:
    """memory.pressure's "full avg10=" in hundredths of a percent."""
    for line in (text or "").splitlines():
        if line.startswith("full "):
            whole, _, frac = line.split()[1][len("avg10="):].partition(".")
            return int(whole) * 100 + int(frac)
    return None


def pgscan_of(scans: Sequence[Optional[Number]]) -> Optional[int]:
    """memory.stat's pgscan: the sum of the kernel's pgscan_* items (those a
    kernel does not have are unavailable); unknown without kswapd's and direct's."""
    if scans[0] is None or scans[1] is None:
        return None
    return int(sum(s or 0 for s in scans))


class Source(Protocol):
    name: str

    def monitored(self, paths: Sequence[str]) -> Dict[str, Sample]: ...

    def candidates(self, root: str) -> List[Sample]: ...

    def confirm(self, sample: Sample) -> Optional[int]:
        """The full avg10 to act on, for a watched cgroup read above its limit."""


class PymemcgSource:
    """Numbers through ONE pymemcg Reader: read_many for the monitored
    cgroups, one read_tree per monitored cgroup for its candidates."""
    name = "pymemcg"

    def __init__(self, mount: str, reader: pymemcg.Reader) -> None:
        self.mount, self.reader = mount.rstrip("/"), reader
        self.name = f"pymemcg ({reader.backend} backend)"

    def monitored(self, paths: Sequence[str]) -> Dict[str, Sample]:
        recs = self.reader.read_many([self.mount + p for p in paths])
        return {p: Sample(p, r.get(STATS[0]), pgscan_of([r.get(n) for n in PGSCAN]),  # type: ignore
                          *(r.get(n) for n in STATS[1:5]), bool(r.get("oom_group")))  # type: ignore
                for p, r in zip(paths, recs) if r is not None}

    def confirm(self, sample: Sample) -> Optional[int]:
        """BPF reads a psi group's averages as the kernel last updated them:
        for a group gone idle they stay where they were (docs/pressure.md),
        while memory.pressure, read, decays them first. So above the limit,
        one read of the file (which brings the group up to date) decides."""
        try:
            with open(f"{self.mount}{sample.path}/memory.pressure") as f:
                return full_avg10(f.read())
        except FileNotFoundError:
            return None

    def candidates(self, root: str) -> List[Sample]:
        try:
            snap = self.reader.read_tree(self.mount + root)
        except pymemcg.CgroupNotFound:
            return []
        cols = snap.columns(STATS)
        # a cgroup removed before its name was read has no path: never a candidate
        paths = [p or "" for p in snap.paths]
        full, current, swap, least, low, group = (cols[n] for n in STATS[:6])
        scans = [cols[n] for n in PGSCAN]
        return [Sample(paths[i], full[i], pgscan_of([s[i] for s in scans]),  # type: ignore
                       current[i], swap[i], least[i], low[i], bool(group[i]))  # type: ignore
                for i in candidates_of(snap.root, zip(paths, map(bool, group))) if paths[i]]


class FileSource:
    """The same numbers from the cgroup files, as systemd-oomd reads them."""
    name = "files"

    def __init__(self, mount: str, files: Mapping[str, Optional[str]] = V2_FILES) -> None:
        self.mount, self.files = mount.rstrip("/"), files

    def _read(self, path: str, key: str) -> Optional[str]:
        name = self.files.get(key)
        if name is None:
            return None
        try:
            with open(f"{self.mount}{path}/{name}") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _number(self, path: str, key: str) -> Optional[Number]:
        text = self._read(path, key)
        return None if text is None else pymemcg.MAX if text.strip() == "max" else int(text)

    def sample(self, path: str) -> Sample:
        full, pgscan = full_avg10(self._read(path, "pressure")), None
        for line in (self._read(path, "stat") or "").splitlines():
            if line.startswith("pgscan "):
                pgscan = int(line[7:])
        return Sample(path, full, pgscan, self._number(path, "current"),  # type: ignore
                      self._number(path, "swap"), self._number(path, "min"),  # type: ignore
                      self._number(path, "low"), self._number(path, "oom_group") == 1)

    def monitored(self, paths: Sequence[str]) -> Dict[str, Sample]:
        return {p: self.sample(p) for p in paths if os.path.isdir(self.mount + p)}

    def confirm(self, sample: Sample) -> Optional[int]:
        return sample.full_avg10_x100       # read from the file already

    def candidates(self, root: str) -> List[Sample]:
        try:
            subs = [e.name for e in os.scandir(self.mount + root) if e.is_dir()]
        except FileNotFoundError:    # removed meanwhile
            return []
        if not subs:
            return [self.sample(root)]
        out: List[Sample] = []
        for name in subs:
            path = root.rstrip("/") + "/" + name
            if self._number(path, "oom_group") == 1:
                out.append(self.sample(path))
            elif os.path.isdir(self.mount + path):
                out += self.candidates(path)
        return out


def scan_rate(pgscan: Optional[int], last: Optional[int]) -> int:
    """Pages scanned since `last` (oomd_pgscan_rate): all of them where there
    is no last read, or the count went down (the cgroup was made anew)."""
    now = pgscan or 0
    return now - (last if last is not None and last <= now else 0)


def xattr_true(path: str, name: str) -> bool:
    try:
        value = os.getxattr(path, name).decode().strip().lower()
    except OSError:
        return False
    return value in ("1", "yes", "y", "true", "t", "on")


@dataclass
class Watch:
    """A cgroup watched for pressure (ManagedOOMMemoryPressure=kill)."""
    path: str
    limit_x100: int
    duration_s: float
    hit_start: Optional[float] = None
    pgscan: Optional[int] = None
    last_reclaim: float = float("-inf")


class Oomd:
    """systemd-oomd's decisions over what `source` reads; each poll returns
    the path it killed (or, in a dry run, would have killed), else None."""

    def __init__(self, source: Source, mount: str, watches: List[Watch], swap_roots: List[str],
                 act: bool = False, meminfo: str = "/proc/meminfo") -> None:
        self.source, self.mount, self.act, self.meminfo = source, mount.rstrip("/"), act, meminfo
        self.watches, self.swap_roots = watches, swap_roots
        self.cands: Dict[str, Sample] = {}      # the last candidates, for pgscan rates
        self.prev: Dict[str, Sample] = {}
        self.delay_start: Optional[float] = None

    def preference(self, path: str, prefix: str) -> int:
        """OMIT, AVOID or NONE from the cgroup's xattrs, if its owner may say."""
        full = self.mount + path
        try:
            uid = os.stat(full).st_uid
            if uid != 0 and uid != os.stat(self.mount + prefix).st_uid:
                return NONE
        except OSError:
            return NONE
        return OMIT if xattr_true(full, "user.oomd_omit") else \
            AVOID if xattr_true(full, "user.oomd_avoid") else NONE

    def rate(self, c: Sample) -> int:
        """pgscan since the previous candidates' read."""
        return scan_rate(c.pgscan, self.prev[c.path].pgscan if c.path in self.prev else None)

    def refresh(self, roots: Iterable[str]) -> None:
        self.prev = self.cands
        self.cands = {c.path: c for r in roots for c in self.source.candidates(r)}

    def ranked(self, prefix: str, key: Callable[[Sample], Tuple[int, ...]]) -> List[Sample]:
        prefs = {p: self.preference(p, prefix) for p in self.cands if under(p, prefix)}
        return sorted((self.cands[p] for p, v in prefs.items() if v != OMIT),
                      key=lambda c: (prefs[c.path],) + key(c))

    def poll_pressure(self, now: float) -> Optional[str]:
        """Every PRESSURE_INTERVAL_S; now: monotonic seconds."""
        got = self.source.monitored([w.path for w in self.watches])
        targets = []
        for w in self.watches:
            s = got.get(w.path)
            if s is None:
                continue
            if scan_rate(s.pgscan, w.pgscan) > 0:
                w.last_reclaim = now
            w.pgscan = s.pgscan
            full = s.full_avg10_x100
            if full is not None and full > w.limit_x100:
                full = self.source.confirm(s)
            if full is not None and full > w.limit_x100:
                w.hit_start = now if w.hit_start is None else w.hit_start
                if now - w.hit_start >= w.duration_s:
                    targets.append((w, full))
            else:
                w.hit_start = None
        delayed = self.delay_start is not None and now < self.delay_start + POST_ACTION_DELAY_S
        roots = [w.path for w in self.watches]
        if targets and not delayed:
            refreshed = False
            for w, full in targets:
                if now - w.last_reclaim > RECLAIM_WINDOW_S:
                    continue
                if not refreshed:
                    self.refresh(roots)
                    refreshed = True
                ranked = [c for c in self.ranked(w.path, lambda c: (-self.rate(c), -(c.current or 0)))
                          if c.pgscan or c.current]
                self.dump(ranked, "pgscan rate", self.rate)
                if ranked:
                    self.delay_start = now
                    return self.kill(ranked[0], f"memory pressure of {w.path}: full avg10 "
                                     f"{full / 100:.2f}% > "
                                     f"{w.limit_x100 / 100:.2f}%"
                                     f" for > {w.duration_s:g} s with reclaim activity")
            if not refreshed:
                self.cands = {}
        elif any(w.hit_start is not None for w in self.watches):
            self.refresh(roots)
        else:
            self.cands = {}
        return None

    def poll_swap(self, now: float) -> Optional[str]:
        """Every SWAP_INTERVAL_S; now: monotonic seconds."""
        mem: Dict[str, int] = {}
        with open(self.meminfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                mem[key] = int(value.split()[0]) * 1024
        free_part = (100 - SWAP_USED_LIMIT_PERCENT) / 100
        if not (mem["MemAvailable"] < mem["MemTotal"] * free_part
                and mem["SwapFree"] < mem["SwapTotal"] * free_part):
            return None
        self.refresh(self.swap_roots)
        threshold = mem["SwapTotal"] * CANDIDATE_SWAP_PERCENT // 100
        ranked = [c for c in self.ranked("/", lambda c: (-(c.swap or 0),))
                  if (c.swap or 0) > threshold]
        self.dump(ranked, "swap bytes", lambda c: c.swap or 0)
        return self.kill(ranked[0], f"memory available {mem['MemAvailable']} of "
                         f"{mem['MemTotal']} and swap free {mem['SwapFree']} of "
                         f"{mem['SwapTotal']} below {100 - SWAP_USED_LIMIT_PERCENT}%") \
            if ranked else None

    def dump(self, ranked: List[Sample], what: str, value: Callable[[Sample], int]) -> None:
        log.info("considered %d cgroups, top candidates: %s", len(ranked), ", ".join(
            f"{c.path} ({what} {value(c)}, current {c.current})" for c in ranked[:10]))

    def kill(self, victim: Sample, why: str) -> str:
        if not self.act:
            log.warning("dry run: would kill %s and its descendants: %s", victim.path, why)
            return victim.path
        try:
            with open(f"{self.mount}{victim.path}/cgroup.kill", "w") as f:
                f.write("1")
            log.warning("killed %s and its descendants (cgroup.kill): %s", victim.path, why)
        except FileNotFoundError:
            log.warning("%s was gone before its kill: %s", victim.path, why)
        return victim.path


def watch_arg(text: str) -> Watch:
    """CGROUP[:LIMIT_PERCENT[:DURATION_S]], as ManagedOOMMemoryPressure= and its limit."""
    path, limit, duration = (text.split(":") + ["", ""])[:3]
    seconds = float(duration) if duration else DEFAULT_DURATION_S
    percent = float(limit) if limit else DEFAULT_LIMIT_PERCENT
    if seconds < MIN_DURATION_S or not 0 <= percent <= 100:
        raise argparse.ArgumentTypeError(f"{text}: the limit is 0-100 (%) and the duration at "
                                         f"least {MIN_DURATION_S:g} s, as systemd-oomd takes them")
    return Watch("/" + path.strip("/"), round(percent * 100), seconds)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pressure", type=watch_arg, action="append", default=[],
                    metavar="CGROUP[:LIMIT%[:SECONDS]]")
    ap.add_argument("--swap", action="append", default=[], metavar="CGROUP")
    ap.add_argument("--act", action="store_true", help="kill (cgroup.kill); default: dry run")
    ap.add_argument("--files", action="store_true", help="read the cgroup files, not pymemcg")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s oomd: %(message)s")
    mount = memory_mount()
    if mount is None or mount.version != 2:
        where = f"cgroup v1 at {mount.mountpoint}" if mount else "no memory hierarchy"
        print(f"oomd.py: cgroup v2 only, and this host's memory controller is on {where}: "
              f"memory.pressure, memory.swap.current and cgroup.kill exist only on v2",
              file=sys.stderr)
        return 2
    if not args.pressure and not args.swap:
        ap.error("nothing to watch: give --pressure and/or --swap")
    with contextlib.ExitStack() as stack:
        events = stack.enter_context(OomEvents())
        source = FileSource(mount.mountpoint) if args.files else \
            PymemcgSource(mount.mountpoint, stack.enter_context(pymemcg.Reader(stats=STATS)))
        daemon = Oomd(source, mount.mountpoint, args.pressure, ["/" + p.strip("/")
                                                                for p in args.swap], args.act)
        log.info("watching %s with %s (%s)", ", ".join([w.path for w in args.pressure]
                 + daemon.swap_roots), source.name, "acting" if args.act else "dry run")
        next_pressure = next_swap = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if args.pressure and now >= next_pressure:
                    daemon.poll_pressure(now)
                    next_pressure = max(next_pressure + PRESSURE_INTERVAL_S, now)
                if args.swap and now >= next_swap:
                    daemon.poll_swap(now)
                    next_swap = max(next_swap + SWAP_INTERVAL_S, now)
                wake = min(next_pressure if args.pressure else float("inf"),
                           next_swap if args.swap else float("inf"))
                if select.select([events], [], [], max(0.0, wake - time.monotonic()))[0]:
                    for item in events.read():
                        log.warning("kernel OOM: %s", item.as_dict())
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
