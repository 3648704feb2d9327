"""The pymemcg command line (also `python -m pymemcg`).

    pymemcg snapshot [ROOT] [--stats a,b,c|all] [--local] [--format table|json|csv]
                     [--backend auto|bpf|text]
    pymemcg top [ROOT] [--sort STAT] [--interval S] [--stats ...] [--batch] [-n N]
    pymemcg watch [ROOT] [--interval S] [--count N] [--per cgroup|snapshot] [--stats ...]
    pymemcg export [ROOT] [--listen ADDR:PORT] [--stats ...]     (the `prometheus` extra)
    pymemcg doctor [--format text|json]
    pymemcg stats [--format table|json]
    pymemcg verify [--format table|json] [--parent DIR]
    pymemcg bench [...]                                           (python -m pymemcg.bench)
    pymemcg --version

Exit status: 0 on success, and when top, watch or export is stopped (q,
Ctrl-C, SIGTERM); 2 for user errors (pymemcg.Error, printed as
`pymemcg: <message>`, and bad arguments); doctor exits 1 when only the text
backend works here; verify exits 1 when a stat
differs from the kernel's files. Colour only on a terminal (--color, NO_COLOR).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from . import __version__, catalog
from .cgroupfs import memory_mount, own_memory_cgroup
from .decode import Record, Snapshot
from .errors import Error, NoMemoryController, UnknownStat
from .reader import Reader, stats as list_stats

PROG = "pymemcg"

#: what `snapshot` shows when --stats is not given
SNAPSHOT_STATS = ("usage", "anon", "file", "shmem", "kernel_stack", "pgfault", "pgmajfault",
                  "oom_kill")
#: what `top` shows when --stats is not given (counts are shown per second)
TOP_STATS = ("usage", "anon", "file", "shmem", "kernel", "pgfault", "pgmajfault", "oom_kill")
#: what `watch` writes when --stats is not given
WATCH_STATS = catalog.DEFAULT_STATS

EXIT_OK = 0
EXIT_DEGRADED = 1       # doctor: BPF does not work here, text does
EXIT_MISMATCH = 1       # verify: a stat differs from the kernel's files
EXIT_USAGE = 2          # argparse uses 2 as well
EXIT_INTERRUPTED = 130

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


# --- colour ---

_SGR = {"bold": "1", "dim": "2", "reverse": "7", "red": "31", "green": "32", "yellow": "33",
        "blue": "34", "cyan": "36"}


def colour_wanted(stream: TextIO, mode: str = "auto") -> bool:
    """--color always/never, or auto: a terminal, NO_COLOR unset, TERM not 'dumb'."""
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Style:
    """ANSI styling that is a no-op when colour is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        return "\x1b[" + ";".join(_SGR[s] for s in styles) + "m" + text + "\x1b[0m"


# --- formatting helpers ---

def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; below 1 KiB plain bytes ('512 B')."""
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _BYTE_UNITS:
        value /= 1024
        if abs(round(value, 1)) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_value(name: str, value: Optional[int]) -> str:
    """A table cell: human units for byte stats, plain numbers for counts, '-' if unavailable."""
    if value is None:
        return "-"
    if catalog.STATS[name].unit == catalog.BYTES:
        return human_bytes(value)
    return str(value)


def format_rate(rate: Optional[float]) -> str:
    """Events per second: '0', '3.5', '812', '12.3k', '4.1M'; '-' before a second sample."""
    if rate is None:
        return "-"
    if rate == 0:
        return "0"
    if rate < 10:
        return f"{rate:.1f}"
    if rate < 10000:
        return f"{rate:.0f}"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if rate < scale * 1000 or unit == "G":
            return f"{rate / scale:.1f}{unit}"
    raise AssertionError("unreachable")


def parse_stat_list(text: str, local: bool = False) -> List[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (names are checked by the Reader); 'all' -> every
    stat this host can serve."""
    if text.strip() == "all":
        return [s.name for s in list_stats(local=local) if s.available]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UnknownStat("--stats names no stat: give a comma-separated list, e.g. "
                          "--stats anon,file,usage, or all (see `pymemcg stats`)")
    return names


def _selection(args: argparse.Namespace, default: Sequence[str]) -> List[str]:
    if args.stats is None:
        return list(default)
    return parse_stat_list(args.stats, local=getattr(args, "local", False))


def _kernel_release() -> str:
    return os.uname().release


def _display_path(rec: Record) -> str:
    # a cgroup created during the walk whose name could not be learned has no path
    return rec.path if rec.path is not None else f"?id={rec.id}"


def _default_root(root: Optional[str]) -> str:
    if root is not None:
        return root
    mount = memory_mount()
    if mount is None:
        raise NoMemoryController("no cgroup hierarchy on this host has the memory "
                                 "controller: mount one, or pass ROOT")
    return mount.mountpoint


def open_reader(names: Sequence[str], local: bool, backend: str, flush: bool = False) -> Reader:
    """A Reader; the BPF -> text fallback warning is said once, in our own words."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = Reader(stats=names, local=local, backend=backend, flush=flush)
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    return reader


class Stop(Exception):
    """SIGTERM or SIGHUP arrived: leave the loop and clean up (unpin) as on Ctrl-C."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP, unless ignored as under nohup) into Stop inside
    long-running commands, so that the Reader closes and unpins its links
    instead of the process dying mid-way."""
    def handler(signum, frame):
        raise Stop()
    installed = []
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            installed.append((sig, signal.signal(sig, handler)))
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    try:
        yield
    finally:
        for sig, old in installed:
            signal.signal(sig, old)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value


# --- snapshot ---

def write_table(out: TextIO, snap: Snapshot, names: Sequence[str], backend: str,
                version: int, style: Optional[Style] = None) -> None:
    """Summary line, then one row per cgroup with the path indented by level."""
    style = style or Style(False)
    out.write(f"backend {backend}, {len(snap.records)} cgroups, kernel {_kernel_release()}, "
              f"cgroup v{version}\n")
    base = snap.records[0].level if snap.records else 0
    header = ["cgroup"] + list(names)
    rows = []
    for rec in snap.records:
        values = rec.as_dict()
        indent = "  " * max(rec.level - base, 0)
        rows.append([indent + _display_path(rec)] + [format_value(n, values[n]) for n in names])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = [[header[0].ljust(widths[0])] + [h.rjust(w) for h, w in zip(header[1:], widths[1:])]]
    for r in rows:
        lines.append([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
    for i, cells in enumerate(lines):
        line = "  ".join(cells).rstrip()
        out.write((style(line, "bold") if i == 0 else line) + "\n")


def record_json(rec: Record) -> Dict[str, object]:
    return {"id": rec.id, "parent_id": rec.parent_id, "path": rec.path, "level": rec.level,
            "stats": rec.as_dict()}


def snapshot_json(snap: Snapshot, names: Sequence[str], backend: str, version: int,
                  root: str, local: bool) -> Dict[str, object]:
    """The snapshot as JSON-ready data: exact integers, None (null) where unavailable."""
    return {
        "backend": backend,
        "kernel": _kernel_release(),
        "cgroup_version": version,
        "root": root,
        "local": local,
        "stats": list(names),
        "units": {n: catalog.STATS[n].unit for n in names},
        "cgroups": [record_json(rec) for rec in snap.records],
    }


def write_csv(out: TextIO, snap: Snapshot, names: Sequence[str]) -> None:
    """Header, then id, path, level and exact integers (empty where unavailable)."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["id", "parent_id", "path", "level"] + list(names))
    for rec in snap.records:
        values = rec.as_dict()
        w.writerow([rec.id, rec.parent_id, rec.path if rec.path is not None else "", rec.level]
                   + ["" if values[n] is None else values[n] for n in names])


def cmd_snapshot(args: argparse.Namespace, out: TextIO) -> int:
    names = _selection(args, SNAPSHOT_STATS)
    root = _default_root(args.root)
    with open_reader(names, args.local, args.backend, args.flush) as reader:
        snap = reader.read_tree(root)
        backend, version = reader.backend, reader.cgroup_version
    if args.format == "json":
        json.dump(snapshot_json(snap, names, backend, version, root, args.local), out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        write_csv(out, snap, names)
    else:
        write_table(out, snap, names, backend, version, Style(colour_wanted(out, args.color)))
    return EXIT_OK


# --- stats ---

def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    infos = list_stats(local=args.local)
    if args.format == "json":
        json.dump([{"name": s.name, "unit": s.unit, "available": s.available,
                    "backend": s.backend, "via": s.via, "meaning": s.meaning} for s in infos],
                  out, indent=2)
        out.write("\n")
        return EXIT_OK
    header = ["name", "unit", "available", "backend", "via"]
    rows = [[s.name, s.unit, "yes" if s.available else "no", s.backend or "-", s.via]
            for s in infos]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header) - 1)]
    for r in [header] + rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] + "\n")
    return EXIT_OK


# --- watch: JSON lines ---

def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    """One JSON object per cgroup per snapshot (default), or one per snapshot.

    per cgroup:   {"seq": 0, "time": 1764115200.25, "id": 1, "parent_id": 0, "path": "/",
                   "level": 0, "stats": {"usage": null, "anon": 4521984, ...}}
    per snapshot: {"seq": 0, "time": ..., "backend": "bpf", "root": "...", "cgroups": [...]}

    seq numbers the snapshots from 0; time is the Unix time the walk started;
    sizes are bytes and events cumulative counts, null where unavailable.
    """
    names = _selection(args, WATCH_STATS)
    root = _default_root(args.root)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with stop_on_sigterm():
        try:
            with open_reader(names, args.local, args.backend, args.flush) as reader:
                _watch_loop(reader, root, args, out, dumps)
        except (KeyboardInterrupt, Stop):
            pass
    return EXIT_OK


def _watch_loop(reader: Reader, root: str, args: argparse.Namespace, out: TextIO,
                dumps: Callable[[object], str]) -> None:
    seq = 0
    due = time.monotonic()
    while True:
        now = time.time()
        snap = reader.read_tree(root)
        if args.per == "snapshot":
            out.write(dumps({"seq": seq, "time": now, "backend": reader.backend, "root": root,
                             "local": args.local,
                             "cgroups": [record_json(r) for r in snap.records]}) + "\n")
        else:
            for rec in snap.records:
                out.write(dumps({"seq": seq, "time": now, **record_json(rec)}) + "\n")
        out.flush()
        seq += 1
        if args.count is not None and seq >= args.count:
            return
        due += args.interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            due = time.monotonic()  # fell behind: no burst of catch-up reads


# --- top: a live view ---

@dataclass
class TopRow:
    path: str
    id: int
    level: int
    values: Dict[str, Optional[float]]   # bytes for sizes, per-second rates for counts


class TopView:
    """The state of `pymemcg top`: the last snapshot as rows, with rates for
    cumulative counts (per second between the last two refreshes), sorted."""

    def __init__(self, reader: Reader, root: str, names: Sequence[str], sort: str,
                 interval: float, reverse: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reader, self.root, self.names = reader, root, list(names)
        self.rates = {n for n in self.names if catalog.STATS[n].unit == catalog.COUNT}
        if sort not in self.names and sort != "cgroup":
            raise UnknownStat(f"--sort {sort}: sort by one of the shown stats "
                              f"({', '.join(self.names)}) or by cgroup")
        self.sort, self.reverse, self.interval = sort, reverse, interval
        self.clock = clock
        self.rows: List[TopRow] = []
        self.refreshes = 0
        self.taken_at = 0.0           # wall clock of the last refresh
        self._prev: Dict[int, Dict[str, Optional[int]]] = {}
        self._prev_t: Optional[float] = None

    def refresh(self) -> None:
        snap = self.reader.read_tree(self.root)
        now = self.clock()
        dt = None if self._prev_t is None else now - self._prev_t
        rows, current = [], {}
        for rec in snap.records:
            raw = rec.as_dict()
            prev = self._prev.get(rec.id)
            shown: Dict[str, Optional[float]] = {}
            for n in self.names:
                v = raw.get(n)
                if n in self.rates:
                    p = prev.get(n) if prev is not None else None
                    # a counter that went down was reset (v1 failcnt): no rate this time
                    shown[n] = None if (v is None or p is None or not dt or dt <= 0 or v < p) \
                        else (v - p) / dt
                else:
                    shown[n] = v
            current[rec.id] = raw
            rows.append(TopRow(_display_path(rec), rec.id, rec.level, shown))
        self._prev, self._prev_t = current, now
        self.rows = rows
        self.refreshes += 1
        self.taken_at = time.time()
        self.sort_rows()

    def sort_rows(self) -> None:
        if self.sort == "cgroup":
            self.rows.sort(key=lambda r: r.path, reverse=self.reverse)
            return
        known = [r for r in self.rows if r.values.get(self.sort) is not None]
        unknown = [r for r in self.rows if r.values.get(self.sort) is None]
        # largest first; ties and unknowns in path order; unknowns always last
        known.sort(key=lambda r: r.path)
        known.sort(key=lambda r: r.values[self.sort], reverse=not self.reverse)
        unknown.sort(key=lambda r: r.path)
        self.rows = known + unknown

    def cycle_sort(self, step: int) -> None:
        keys = self.names + ["cgroup"]
        self.sort = keys[(keys.index(self.sort) + step) % len(keys)]
        self.sort_rows()

    # --- rendering (pure: tests call it without a terminal) ---

    def label(self, name: str) -> str:
        return name.upper() + ("/s" if name in self.rates else "")

    def cell(self, name: str, value: Optional[float]) -> str:
        if name in self.rates:
            return format_rate(value)
        return format_value(name, None if value is None else int(value))

    def render(self, width: Optional[int] = None, height: Optional[int] = None,
               keys_help: bool = True) -> List[Tuple[str, str]]:
        """Lines as (text, kind); kind is title, help, header or row.
        width/height None: no truncation (batch mode)."""
        order = "ascending" if (self.sort == "cgroup") != self.reverse else "descending"
        title = (f"pymemcg top - {self.root} - {self.reader.backend}, cgroup "
                 f"v{self.reader.cgroup_version} - {len(self.rows)} cgroups - every "
                 f"{self.interval:g}s - {time.strftime('%H:%M:%S', time.localtime(self.taken_at))}")
        help_line = f"sort: {self.sort} ({order})"
        if keys_help:
            help_line += "   q quit  < > sort column  r reverse  + - interval  space refresh"
        widths = self._widths()
        header_cells = [self.label(n).rjust(w) for n, w in zip(self.names, widths)]
        header = "  ".join(header_cells) + "  CGROUP"
        lines: List[Tuple[str, str]] = [(title, "title"), (help_line, "help"), (header, "header")]
        for r in self.rows:
            cells = [self.cell(n, r.values.get(n)).rjust(w) for n, w in zip(self.names, widths)]
            lines.append(("  ".join(cells) + "  " + r.path, "row"))
        if height is not None and len(lines) > height:
            hidden = len(lines) - height + 1
            lines = lines[:height - 1] + [(f"... {hidden} more cgroups (a taller window shows "
                                          f"them)", "help")]
        if width is not None:
            lines = [(_fit(text, width) if kind == "row" else text[:width], kind)
                     for text, kind in lines]
        return lines

    def _widths(self) -> List[int]:
        return [max([6, len(self.label(n))] + [len(self.cell(n, r.values.get(n)))
                                               for r in self.rows])
                for n in self.names]

    def sort_span(self) -> Tuple[int, int]:
        """(column, width) of the sorted column's header label, for highlighting."""
        x = 0
        for n, w in zip(self.names, self._widths()):
            if n == self.sort:
                return x, w
            x += w + 2
        return x, len("CGROUP")   # sorted by cgroup: the last column


def _fit(text: str, width: int) -> str:
    """Cut a row (numbers, then the path) to the width: the path loses its middle,
    marked '..', so that both its top and its leaf stay readable."""
    if len(text) <= width:
        return text
    numbers, sep, path = text.rpartition("  ")
    room = width - len(numbers) - len(sep)
    if not sep or room < 8:
        return text[:width]
    head = room // 3
    tail = room - head - 2
    return numbers + sep + path[:head] + ".." + path[len(path) - tail:]


def _top_batch(view: TopView, out: TextIO, iterations: Optional[int], style: Style) -> int:
    done = 0
    due = time.monotonic()
    while True:
        view.refresh()
        for text, kind in view.render(keys_help=False):
            out.write((style(text, "bold") if kind in ("title", "header") else text) + "\n")
        out.write("\n")
        out.flush()
        done += 1
        if iterations is not None and done >= iterations:
            return EXIT_OK
        due += view.interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            due = time.monotonic()


def _top_curses(stdscr, view: TopView, iterations: Optional[int], colour: bool) -> None:
    import curses

    try:
        curses.curs_set(0)
    except curses.error:
        pass
    attrs = {"title": curses.A_BOLD, "help": curses.A_DIM, "header": curses.A_REVERSE,
             "row": curses.A_NORMAL}
    sort_attr = curses.A_REVERSE | curses.A_BOLD
    if colour and curses.has_colors():
        try:
            curses.start_color()
            curses.use_default_colors()
            curses.init_pair(1, curses.COLOR_BLACK, curses.COLOR_CYAN)
            curses.init_pair(2, curses.COLOR_CYAN, -1)
            attrs["header"] = curses.color_pair(1)
            attrs["title"] = curses.color_pair(2) | curses.A_BOLD
            sort_attr = curses.color_pair(1) | curses.A_BOLD | curses.A_UNDERLINE
        except curses.error:
            pass
    done = 0
    next_at = time.monotonic()
    while True:
        if time.monotonic() >= next_at:
            view.refresh()
            done += 1
            next_at = time.monotonic() + view.interval
        height, width = stdscr.getmaxyx()
        stdscr.erase()
        lines = view.render(width - 1, height)
        for y, (text, kind) in enumerate(lines):
            try:
                stdscr.addnstr(y, 0, text, width - 1, attrs.get(kind, curses.A_NORMAL))
            except curses.error:
                pass
        x, w = view.sort_span()
        if len(lines) > 2 and x < width - 1:
            try:
                stdscr.addnstr(2, x, lines[2][0][x:x + w], width - 1 - x, sort_attr)
            except curses.error:
                pass
        stdscr.refresh()
        if iterations is not None and done >= iterations:
            return
        stdscr.timeout(max(int((next_at - time.monotonic()) * 1000), 0))
        ch = stdscr.getch()
        if ch in (ord("q"), ord("Q")):
            return
        if ch in (ord(">"), ord("."), curses.KEY_RIGHT):
            view.cycle_sort(1)
        elif ch in (ord("<"), ord(","), curses.KEY_LEFT):
            view.cycle_sort(-1)
        elif ch in (ord("r"), ord("R")):
            view.reverse = not view.reverse
            view.sort_rows()
        elif ch == ord("+"):
            view.interval = min(view.interval * 2, 3600.0)
            next_at = time.monotonic() + view.interval
        elif ch == ord("-"):
            view.interval = max(view.interval / 2, 0.1)
            next_at = min(next_at, time.monotonic() + view.interval)
        elif ch == ord(" "):
            next_at = time.monotonic()


def cmd_top(args: argparse.Namespace, out: TextIO) -> int:
    names = _selection(args, TOP_STATS)
    sort = args.sort if args.sort is not None else ("usage" if "usage" in names else names[0])
    if sort not in names and sort != "cgroup":
        raise UnknownStat(f"--sort {sort}: sort by one of the shown stats ({', '.join(names)}) "
                          f"or by cgroup; --stats adds stats")
    root = _default_root(args.root)
    interactive = not args.batch and _isatty(out) and _isatty(sys.stdin)
    with stop_on_sigterm():
        try:
            with open_reader(names, args.local, args.backend, args.flush) as reader:
                view = TopView(reader, root, names, sort, args.interval, reverse=args.reverse)
                if not interactive:
                    return _top_batch(view, out, args.iterations,
                                      Style(colour_wanted(out, args.color)))
                import curses
                os.environ.setdefault("ESCDELAY", "25")
                curses.wrapper(_top_curses, view, args.iterations, colour_wanted(out, args.color))
        except (KeyboardInterrupt, Stop):
            pass  # curses.wrapper has restored the terminal already
    return EXIT_OK


def _isatty(stream: Optional[TextIO]) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- doctor ---

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
MIN_ITER_KERNEL = (6, 1)


@dataclass
class Check:
    name: str
    status: str          # ok, info, warn, fail
    detail: str
    remedy: str = ""
    data: Dict[str, object] = field(default_factory=dict)


def _kernel_version(release: str) -> Tuple[int, int]:
    import re
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def doctor_checks() -> Tuple[List[Check], Dict[str, object]]:
    """Everything `pymemcg doctor` looks at, and a summary."""
    from . import layout
    checks: List[Check] = []
    release = _kernel_release()
    version = _kernel_version(release)

    # kernel
    if version >= MIN_ITER_KERNEL:
        checks.append(Check("kernel", "ok", f"Linux {release}: has cgroup iterators (6.1+)"))
    else:
        checks.append(Check("kernel", "fail", f"Linux {release}: cgroup iterators came in 6.1",
                            "run a 6.1+ kernel for the BPF backend; the text backend works on "
                            "any kernel"))

    # BTF
    btf = "/sys/kernel/btf/vmlinux"
    if os.path.exists(btf):
        size = os.path.getsize(btf)
        checks.append(Check("btf", "ok", f"{btf} ({human_bytes(size)})"))
    else:
        checks.append(Check("btf", "fail", f"{btf} is missing: the kernel exposes no BTF",
                            "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution "
                            "kernels since 2021 are)"))

    # kernel facts from BTF: kfuncs, item tables
    facts, facts_error = None, ""
    try:
        from .kernel_facts import kernel_facts
        facts = kernel_facts()
    except Exception as e:  # no BTF, extension missing, ...
        facts_error = " ".join(str(e).split())
    if facts is None:
        checks.append(Check("memcg kfuncs", "warn", f"cannot read the kernel's BTF: {facts_error}",
                            "see the btf line"))
    else:
        select = getattr(layout, "select_backend", None)
        flavour = select(facts) if select is not None else None
        have = [k for k in layout.MEMCG_KFUNCS if k in facts.kfuncs]
        missing = [k for k in layout.MEMCG_KFUNCS if k not in facts.kfuncs]
        if not missing:
            checks.append(Check("memcg kfuncs", "ok", f"all {len(have)} present (Linux 7.0+); "
                                f"BPF flavour: {flavour or 'kfunc'}; Reader(flush=True) "
                                f"works here",
                                data={"present": have, "flavour": flavour}))
        elif not have:
            checks.append(Check("memcg kfuncs", "info",
                                f"none of the {len(missing)} (bpf_get_mem_cgroup, "
                                f"bpf_mem_cgroup_page_state, ...): they came in Linux 7.0",
                                "nothing to do: the CO-RE backend reads struct mem_cgroup "
                                "directly instead",
                                data={"present": [], "missing": missing, "flavour": flavour}))
        else:
            checks.append(Check("memcg kfuncs", "warn",
                                f"{len(have)} of {len(layout.MEMCG_KFUNCS)}; missing "
                                f"{', '.join(missing)}",
                                "nothing to do: the CO-RE backend does not need them",
                                data={"present": have, "missing": missing,
                                      "flavour": flavour}))

    # item tables: where the memory.stat items (state[]/events[] slots) come from
    from .kernel_facts import KALLSYMS_TABLES, kallsyms_lists
    kallsyms = kallsyms_lists()
    if kallsyms is None:
        ks = "/proc/kallsyms is unreadable"
    elif kallsyms:
        ks = f"/proc/kallsyms names {', '.join(kallsyms)}"
    else:
        ks = (f"/proc/kallsyms has no {', '.join(KALLSYMS_TABLES)} (static data, listed only "
              f"with CONFIG_KALLSYMS_ALL=y)")
    infos = list_stats()
    items = [s for s in infos if catalog.STATS[s.name].kind in (catalog.STATE, catalog.EVENT)]
    through_bpf = [s for s in items if s.available and s.backend == "bpf"]
    vias: Dict[str, int] = {}
    for s in through_bpf:
        how_one = s.via.split(": ", 1)[-1]   # "table: table 6.18 (...)" -> "table 6.18 (...)"
        vias[how_one] = vias.get(how_one, 0) + 1
    how = "; ".join(f"{n} by {via}" for via, n in sorted(vias.items(), key=lambda kv: -kv[1]))
    data = {"kallsyms": kallsyms, "through_bpf": len(through_bpf), "items": len(items),
            "via": vias}
    if through_bpf:
        checks.append(Check("item tables", "ok",
                            f"{len(through_bpf)} of {len(items)} memory.stat items through BPF "
                            f"({how}); {ks}", data=data))
    else:
        why = next((s.via for s in items), "")
        checks.append(Check("item tables", "warn",
                            f"no memory.stat item is readable through BPF ({why}); {ks}",
                            "through BPF only page counters and memory.events are served here: "
                            "use backend='text' for memory.stat sizes and events, or add this "
                            "release's lists to pymemcg/kernel_tables.py", data=data))

    # privileges
    euid = os.geteuid()
    caps = _effective_caps()
    has = {name: bool(caps >> bit & 1) for name, bit in
           (("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))}
    unpriv = _read_int("/proc/sys/kernel/unprivileged_bpf_disabled")
    capstr = ", ".join(n for n, ok in has.items() if ok) or "none of CAP_SYS_ADMIN/CAP_BPF/CAP_PERFMON"
    privileged = has["CAP_SYS_ADMIN"] or (has["CAP_BPF"] and has["CAP_PERFMON"])
    detail = f"euid {euid}, capabilities: {capstr}; kernel.unprivileged_bpf_disabled={unpriv}"
    if privileged:
        checks.append(Check("privileges", "ok", detail, data={"euid": euid, **has}))
    else:
        checks.append(Check("privileges", "fail", detail,
                            "run as root, or give the process CAP_BPF and CAP_PERFMON (systemd: "
                            "AmbientCapabilities=CAP_BPF CAP_PERFMON); CAP_SYS_ADMIN mounts bpffs",
                            data={"euid": euid, **has}))

    # bpffs: only shared pins need it; a Reader's own links are fds
    from .bpffs import BPFFS, is_bpffs
    from .pins import SHARED_PIN_DIR
    try:
        mounted = is_bpffs(BPFFS)
    except OSError:
        mounted = False
    if mounted:
        try:
            pins = len(os.listdir(SHARED_PIN_DIR))
        except OSError:
            pins = 0
        writable = os.access(BPFFS, os.W_OK)
        checks.append(Check("bpffs", "ok", f"mounted at {BPFFS}"
                            f"{'' if writable else ' read-only'}; {pins} shared pins in "
                            f"{SHARED_PIN_DIR}", data={"mounted": True, "pins": pins,
                                                       "writable": writable}))
    else:
        checks.append(Check("bpffs", "ok", f"nothing mounted at {BPFFS}: Readers need none; "
                            f"`pymemcg pin` (shared pins) mounts it as root",
                            data={"mounted": False}))

    # cgroups
    mount = memory_mount()
    if mount is None:
        checks.append(Check("cgroup", "fail", "no cgroup hierarchy has the memory controller",
                            "mount cgroup v2 with the memory controller enabled, or v1 with "
                            "-o memory"))
    else:
        own = own_memory_cgroup()
        checks.append(Check("cgroup", "ok", f"v{mount.version}, memory controller at "
                            f"{mount.mountpoint}; this process is in {own}",
                            data={"version": mount.version, "mountpoint": mount.mountpoint,
                                  "own": own}))

    # the backends, tried for real
    backends: Dict[str, Optional[str]] = {}
    target = own_memory_cgroup() if mount is not None else None
    for backend in ("bpf", "text"):
        if target is None:
            backends[backend] = "no memory cgroup to read"
            continue
        try:
            with Reader(stats=["usage", "anon", "pgfault"], backend=backend,
                        shared_pins=False) as r:
                r.read(target)
                start = time.perf_counter()
                r.read(target)
                took = time.perf_counter() - start
                method = r.read_method
            backends[backend] = None
            checks.append(Check(f"{backend} backend", "ok",
                                f"read {target} in {took * 1e6:.0f} us ({method})",
                                data={"read_method": method}))
        except Error as e:
            msg = " ".join(str(e).split("\n--- verifier log")[0].split())
            backends[backend] = msg
            checks.append(Check(f"{backend} backend", "fail", msg,
                                "see the lines above" if backend == "bpf" else ""))

    # stats
    by = {"bpf": [s.name for s in infos if s.available and s.backend == "bpf"],
          "text": [s.name for s in infos if s.available and s.backend == "text"],
          "unavailable": [s.name for s in infos if not s.available]}
    why = {s.name: s.via for s in infos if not s.available}
    if backends.get("bpf") is None:
        detail = (f"{len(by['bpf'])} served through BPF (`pymemcg verify` compares them with "
                  f"the kernel's files), {len(by['text'])} through memory.stat text only, "
                  f"{len(by['unavailable'])} unavailable here")
        status = "ok" if by["bpf"] else "warn"
    else:
        # BPF does not load: what the text backend serves is what this host gets
        from .memory_stat import printed_keys, text_availability
        version_here = mount.version if mount is not None else 2
        keys = printed_keys(mount.mountpoint) if mount is not None else None
        text_ok = [s.name for s in infos
                   if text_availability(s.name, version_here, False, keys)[0]]
        by["unavailable"] = [s.name for s in infos if s.name not in text_ok]
        detail = (f"{len(text_ok)} through memory.stat text (BPF does not load here; it would "
                  f"serve {len(by['bpf'])}), {len(by['unavailable'])} unavailable")
        by["bpf"], by["text"] = [], text_ok
        status = "warn"
    if by["unavailable"]:
        names = by["unavailable"]
        detail += f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
    checks.append(Check("stats", status, detail,
                        "`pymemcg stats` lists each stat and why" if by["unavailable"] else "",
                        data={**by, "why": why}))

    works = "bpf" if backends.get("bpf") is None else "text" if backends.get("text") is None \
        else None
    summary = {"version": __version__, "kernel": release, "backend": works,
               "cgroup_version": mount.version if mount else None,
               "backend_errors": {k: v for k, v in backends.items() if v}}
    return checks, summary


def _wrapper(out: TextIO, indent: str) -> Callable[[str], str]:
    """On a terminal, wrap text to its width under `indent`; elsewhere one line each."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return lambda text: text
    import shutil
    import textwrap
    width = max(shutil.get_terminal_size().columns - len(indent), 30)

    def wrap(text: str) -> str:
        return ("\n" + indent).join(textwrap.wrap(text, width, break_on_hyphens=False)) or text
    return wrap


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    checks, summary = doctor_checks()
    status = EXIT_OK if summary["backend"] == "bpf" else \
        EXIT_DEGRADED if summary["backend"] == "text" else EXIT_USAGE
    if args.format == "json":
        json.dump({**summary, "checks": [{"name": c.name, "status": c.status, "detail": c.detail,
                                          "remedy": c.remedy, **({"data": c.data} if c.data else {})}
                                         for c in checks]}, out, indent=2)
        out.write("\n")
        return status
    style = Style(colour_wanted(out, args.color))
    colours = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "red"}
    out.write(style(f"pymemcg {__version__} doctor", "bold") +
              f": Linux {summary['kernel']}, cgroup v{summary['cgroup_version']}\n\n")
    name_w = max(len(c.name) for c in checks)
    indent = " " * (2 + 5 + 1 + name_w + 2)
    wrap = _wrapper(out, indent)
    for c in checks:
        tag = style(f"{c.status:<5}", colours[c.status], "bold")
        out.write(f"  {tag} {c.name:<{name_w}}  {wrap(c.detail)}\n")
        if c.remedy and c.status != "ok":
            out.write(f"{indent}{wrap('-> ' + c.remedy)}\n")
    out.write("\n")
    if summary["backend"] == "bpf":
        out.write(style("verdict: the BPF backend works here", "green", "bold") +
                  "; Reader(backend=\"auto\") uses it.\n")
    elif summary["backend"] == "text":
        out.write(style("verdict: BPF does not work here", "yellow", "bold") +
                  f" ({summary['backend_errors'].get('bpf')}); Reader(backend=\"auto\") falls "
                  f"back to memory.stat text with a FallbackWarning.\n")
    else:
        out.write(style("verdict: no backend works here", "red", "bold") + "; see above.\n")
    return status


# --- export: Prometheus ---

DEFAULT_LISTEN = "127.0.0.1:9756"


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from .prometheus import MemcgCollector, listen_url, make_server, parse_listen
    host, port = parse_listen(args.listen)
    names = _selection(args, catalog.DEFAULT_STATS)
    root = _default_root(args.root)
    with stop_on_sigterm():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                collector = MemcgCollector(root, names, local=args.local, backend=args.backend,
                                           cadvisor=not args.no_cadvisor and not args.local,
                                           flush=args.flush)
            for w in caught:
                print(f"{PROG}: warning: {w.message}", file=sys.stderr)
            with collector:
                server = make_server(collector, host, port)
                try:
                    print(f"{PROG}: serving memory metrics of {root} on {listen_url(server)} "
                          f"(backend {collector.reader.backend}); Ctrl-C stops",
                          file=sys.stderr, flush=True)
                    server.serve_forever()
                finally:
                    server.server_close()
        except (KeyboardInterrupt, Stop):
            pass
    return EXIT_OK


# --- verify: the BPF values against the kernel's files, on this host ---

def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    from .verify import format_table, to_json, verify
    with stop_on_sigterm():
        try:
            result = verify(args.parent)
        except Stop:
            return EXIT_INTERRUPTED
    out.write(to_json(result) if args.format == "json" else format_table(result))
    return EXIT_OK if result.ok else EXIT_MISMATCH


# --- entry point ---

def cmd_pin(args: argparse.Namespace, out: TextIO) -> int:
    from . import pins
    import grp
    import pwd
    owner = pwd.getpwnam(args.owner).pw_uid if not args.owner.isdigit() else int(args.owner)
    group = grp.getgrnam(args.group).gr_gid if not args.group.isdigit() else int(args.group)
    try:
        mode = int(args.mode, 8)
    except ValueError:
        raise pins.InvalidPin(f"--mode {args.mode}: give an octal mode such as 640") from None
    root = _default_root(args.root)
    info = pins.pin(root, args.name, _selection(args, SNAPSHOT_STATS), tree=not args.self_only,
                    local=args.local, owner=owner, group=group, mode=mode,
                    directory=args.dir, meta_dir=args.meta_dir)
    out.write(f"pinned {info.path} ({'tree' if info.tree else 'cgroup'} {info.root}, "
              f"{len(info.stats)} stats, owner {info.owner}:{info.group} mode {info.mode:o})\n")
    return 0


def cmd_unpin(args: argparse.Namespace, out: TextIO) -> int:
    from . import pins
    if not args.paths and not args.stale:
        print(f"{PROG}: name the pins to remove, or give --stale to remove those whose cgroup "
              f"is gone", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    for name in args.paths:
        path = pins.pin_path(name, args.dir)
        removed = pins.unpin(path, args.meta_dir)
        for p in removed:
            out.write(f"{'unpinned' if p == path else 'removed'} {p}\n")
        if not removed:
            print(f"{PROG}: no pin {path} and no metadata for it in {args.meta_dir}: nothing "
                  f"to remove (a name is looked up in --dir; `{PROG} pins` lists them)",
                  file=sys.stderr)
            status = EXIT_USAGE
    if args.stale:
        for path in pins.prune(args.dir, args.meta_dir, args.other_builds):
            out.write(f"removed stale {path}\n")
    return status


def cmd_pins(args: argparse.Namespace, out: TextIO) -> int:
    from . import pins
    import shlex
    for info in pins.pins(args.dir, args.meta_dir):
        if info.orphan:
            meta = "" if args.meta_dir == pins.META_DIR else \
                f" --meta-dir {shlex.quote(args.meta_dir)}"
            out.write(f"{info.path}  ORPHAN: {info.orphan}; it still serves whoever may read it "
                      f"({info.owner}:{info.group} {info.mode:o}); remove it with "
                      f"`{PROG} unpin {shlex.quote(info.path)}{meta}`\n")
            continue
        out.write(f"{info.path}  {'tree' if info.tree else 'cgroup'} {info.root}  "
                  f"{','.join(info.stats)}  {info.owner}:{info.group} {info.mode:o}  "
                  f"{'current' if info.current else 'OTHER BUILD: re-pin'}"
                  f"{'' if info.alive else ', CGROUP GONE: pymemcg unpin --stale'}\n")
    return 0


def _add_common(p: argparse.ArgumentParser, default_stats: Sequence[str], root: bool = True,
                backend: bool = True) -> None:
    if root:
        p.add_argument("root", metavar="ROOT", nargs="?",
                       help="cgroup directory (default: the memory hierarchy's mountpoint)")
    p.add_argument("--stats", metavar="A,B,C",
                   help="comma-separated stat names, or all (default: %s)"
                        % ",".join(default_stats))
    p.add_argument("--local", action="store_true",
                   help="each cgroup's own values instead of hierarchical ones")
    if backend:
        p.add_argument("--backend", choices=("auto", "bpf", "text"), default="auto",
                       help="auto: BPF, else memory.stat text with a warning (default)")
        p.add_argument("--flush", action="store_true",
                       help="fold pending per-CPU updates in before each read, as memory.stat "
                            "does (needs a flush kfunc, Linux 7.0+; else auto falls back to "
                            "text)")


def build_parser() -> argparse.ArgumentParser:
    colour = argparse.ArgumentParser(add_help=False)
    colour.add_argument("--color", "--colour", dest="color", choices=("auto", "always", "never"),
                        default=argparse.SUPPRESS,
                        help="colour: auto (a terminal, NO_COLOR unset), always, never")

    p = argparse.ArgumentParser(prog=PROG, parents=[colour],
                                description="Memory-cgroup statistics through a pinned BPF "
                                            "cgroup iterator (memory.stat as fallback).")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    snap = sub.add_parser("snapshot", parents=[colour],
                          help="read a cgroup tree in one walk and print it",
                          description="Read every cgroup under ROOT (included) in one walk.")
    _add_common(snap, SNAPSHOT_STATS)
    snap.add_argument("--format", choices=("table", "json", "csv"), default="table")
    snap.set_defaults(func=cmd_snapshot)

    top = sub.add_parser("top", parents=[colour], help="a live view of the cgroup tree",
                         description="A live view like systemd-cgtop: one tree read per refresh, "
                                     "counts as rates per second between refreshes. Keys: q quit, "
                                     "< > sort column, r reverse, + - interval, space refresh. "
                                     "Ctrl-C quits too. Off a terminal (or --batch) it prints "
                                     "frames.")
    _add_common(top, TOP_STATS)
    top.add_argument("--sort", metavar="STAT",
                     help="sort by this shown stat (largest first; counts by rate) or by cgroup "
                          "(default: usage)")
    top.add_argument("--reverse", action="store_true", help="smallest first")
    top.add_argument("--interval", "-d", type=_positive_float, default=1.0, metavar="S",
                     help="seconds between refreshes (default 1)")
    top.add_argument("--batch", "-b", action="store_true",
                     help="print frames instead of a full-screen view")
    top.add_argument("--iterations", "-n", type=_positive_int, metavar="N",
                     help="stop after N refreshes")
    top.set_defaults(func=cmd_top)

    watch = sub.add_parser("watch", parents=[colour], help="JSON lines, one snapshot per interval",
                           description="Write JSON lines for other tools: by default one object "
                                       "per cgroup per snapshot ({seq, time, id, parent_id, path, "
                                       "level, stats}); --per snapshot writes one object per "
                                       "snapshot. Exact integers, null where unavailable.")
    _add_common(watch, WATCH_STATS)
    watch.add_argument("--interval", "-i", type=_positive_float, default=1.0, metavar="S",
                       help="seconds between snapshots (default 1)")
    watch.add_argument("--count", "-c", type=_positive_int, metavar="N",
                       help="stop after N snapshots (default: until Ctrl-C)")
    watch.add_argument("--per", choices=("cgroup", "snapshot"), default="cgroup",
                       help="one JSON object per cgroup (default) or per snapshot")
    watch.set_defaults(func=cmd_watch)

    export = sub.add_parser("export", parents=[colour],
                            help="serve Prometheus metrics (cAdvisor names + memcg_<stat>)",
                            description="Serve Prometheus metrics over HTTP: cAdvisor's "
                                        "container_memory_* names with an id label, and every "
                                        "selected stat as memcg_<stat> with a cgroup label. One "
                                        "tree read per scrape. Needs `pip install "
                                        "'pymemcg[prometheus]'`.")
    _add_common(export, catalog.DEFAULT_STATS)
    export.add_argument("--listen", "-l", metavar="ADDR:PORT", default=DEFAULT_LISTEN,
                        help=f"address to serve on (default {DEFAULT_LISTEN}; :9756 for every "
                             f"address; port 0 picks a free one)")
    export.add_argument("--no-cadvisor", action="store_true",
                        help="only the memcg_<stat> metrics")
    export.set_defaults(func=cmd_export)

    doctor = sub.add_parser("doctor", parents=[colour],
                            help="which backend works here, why, and what to fix")
    doctor.add_argument("--format", choices=("text", "json"), default="text")
    doctor.set_defaults(func=cmd_doctor)

    st = sub.add_parser("stats", parents=[colour],
                        help="list every stat and how this host serves it")
    st.add_argument("--local", action="store_true", help="availability of local values")
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.set_defaults(func=cmd_stats)

    ver = sub.add_parser("verify", parents=[colour],
                         help="prove here that every BPF stat equals the kernel's own files",
                         description="Make a probe cgroup under this process's memory cgroup, "
                                     "charge known memory in it (and an OOM kill), compare "
                                     "every stat the BPF backend serves with memory.stat and "
                                     "the other cgroup files, and remove the probe. Stats no "
                                     "kernel file prints here are listed as not compared. "
                                     "Exit status 1 on any mismatch. Needs root.")
    ver.add_argument("--format", choices=("table", "json"), default="table")
    ver.add_argument("--parent", metavar="DIR",
                     help="make the probe under this cgroup (default: this process's own)")
    ver.set_defaults(func=cmd_verify)

    from .pins import META_DIR, SHARED_PIN_DIR
    pin = sub.add_parser("pin", parents=[colour],
                         help="pin a link for other processes and users to read",
                         description="Load the program for ROOT and a selection, and pin the "
                                     "link in bpffs with the given owner, group and mode; "
                                     "readers use pymemcg.pins.PinReader (no bpf() needed).")
    _add_common(pin, SNAPSHOT_STATS, backend=False)
    pin.add_argument("--name", required=True, help="the pin's file name")
    pin.add_argument("--self-only", action="store_true", help="ROOT alone, not its subtree")
    pin.add_argument("--owner", default="0", help="user (name or uid; default root)")
    pin.add_argument("--group", default="0", help="group (name or gid; default root)")
    pin.add_argument("--mode", default="600",
                     help="octal mode, never writable by group or others (default 600); the "
                          "metadata is root's, 644")
    pin.add_argument("--dir", default=SHARED_PIN_DIR, help=f"bpffs directory ({SHARED_PIN_DIR})")
    pin.add_argument("--meta-dir", default=META_DIR, help=f"metadata directory ({META_DIR})")
    pin.set_defaults(func=cmd_pin)
    unpin = sub.add_parser("unpin", parents=[colour], help="remove pins and their metadata")
    unpin.add_argument("paths", nargs="*", metavar="PIN",
                       help="a pin's name (as given to pin --name, looked up in --dir) or path")
    unpin.add_argument("--stale", action="store_true",
                       help="also remove pins whose cgroup was removed (the link keeps it "
                            "allocated), orphans (pins without usable metadata) and metadata "
                            "whose pin is gone")
    unpin.add_argument("--other-builds", action="store_true",
                       help="with --stale: also pins that another pymemcg build made")
    unpin.add_argument("--dir", default=SHARED_PIN_DIR)
    unpin.add_argument("--meta-dir", default=META_DIR)
    unpin.set_defaults(func=cmd_unpin)
    lspins = sub.add_parser("pins", parents=[colour],
                            help="list every pin: what each serves, if this build made it, "
                                 "and orphans without metadata")
    lspins.add_argument("--dir", default=SHARED_PIN_DIR)
    lspins.add_argument("--meta-dir", default=META_DIR)
    lspins.set_defaults(func=cmd_pins)

    sub.add_parser("bench", add_help=False,
                   help="the benchmark against memory.stat (python -m pymemcg.bench; "
                        "`pymemcg bench --help`)")
    return p


def _error_text(e: Error) -> str:
    text = str(e).strip()
    return text if "\n" in text else " ".join(text.split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "bench":
            from .bench import main as bench_main
            return bench_main(extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if not hasattr(args, "color"):
            args.color = "auto"
        return args.func(args, sys.stdout)
    except Error as e:
        print(f"{PROG}: {_error_text(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `pymemcg snapshot | head`: stop quietly; keep the interpreter from
        # complaining again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
