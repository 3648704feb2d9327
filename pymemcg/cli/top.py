"""`pymemcg top`: a live view of a cgroup tree like systemd-cgtop; counts as
rates per second between refreshes, pressure totals as the share of time
stalled between refreshes (as `top` shows %CPU). Full-screen (curses) on a
terminal, frames of text elsewhere or with --batch."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from .. import catalog
from ..numa import lookup
from ..decode import MAX, Value
from ..errors import UnknownStat
from ..reader import Reader
from .format import (Style, colour_wanted, display_path, format_percent, format_rate,
                     format_value, isatty, path_text)
from .options import default_root, selection
from .running import EXIT_OK, Stop, next_tick, open_reader, stop_on_sigterm

#: what `top` shows when --stats is not given (counts are shown per second)
TOP_STATS = ("usage", "anon", "file", "shmem", "kernel", "pgfault", "pgmajfault", "oom_kill")

#: what `top` adds to TOP_STATS (without --stats) where this host serves it:
#: memory pressure (the "some" line: time at least one task stalled, shown as
#: % of the interval; "full" is in --stats), then the protections and limits,
#: lowest first. One pressure line and short labels keep a v2 row at 13
#: numbers (133 characters before the path with nothing set, about 150 with
#: all set); v1 serves only soft_limit and limit of these.
TOP_EXTRAS = ("pressure_some_total_us", "memory_min", "memory_low", "memory_high",
              "soft_limit", "limit")

#: header labels shorter than the stat names, so that the extras stay narrow
SHORT_LABELS = {"pressure_some_total_us": "PSI_SOME", "pressure_full_total_us": "PSI_FULL",
                "memory_min": "MIN", "memory_low": "LOW", "memory_high": "HIGH",
                "soft_limit": "SOFT_LIMIT"}


def served(source: str) -> bool:
    """A Reader.sources value: False where it says why the stat is unavailable
    ("unavailable: why", also behind a shared pin's "shared pins: " prefix)."""
    return not (source.startswith("unavailable:") or ": unavailable:" in source)


def top_columns(sources: Dict[str, str]) -> List[str]:
    """TOP_STATS, then each of TOP_EXTRAS that `sources` (Reader.sources of a
    Reader that selected them) says this host serves."""
    return list(TOP_STATS) + [n for n in TOP_EXTRAS if served(sources.get(n, "unavailable:"))]


def check_sort(sort: str, names: Sequence[str]) -> None:
    """`sort` must be a shown stat or 'cgroup'."""
    if sort not in names and sort != "cgroup":
        raise UnknownStat(f"--sort {sort}: sort by one of the shown stats ({', '.join(names)}) "
                          f"or by cgroup; --stats adds stats")


@dataclass
class TopRow:
    path: str
    id: int
    level: int
    # bytes for sizes (MAX: no limit), per-second rates for counts, percent
    # of the interval for pressure totals
    values: Dict[str, Optional[float]]


class TopView:
    """The state of `pymemcg top`: the last snapshot as rows, with rates for
    cumulative counts (per second between the last two refreshes) and for
    pressure totals (microseconds stalled per second, as a percent of the
    interval), sorted."""

    def __init__(self, reader: Reader, root: str, names: Sequence[str], sort: str,
                 interval: float, reverse: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reader, self.root, self.names = reader, root, list(names)
        self.rates = {n for n in self.names if lookup(n).unit == catalog.COUNT}
        self.stalls = {n for n in self.names if lookup(n).unit == catalog.MICROSECONDS}
        check_sort(sort, self.names)
        self.sort, self.reverse, self.interval = sort, reverse, interval
        self.clock = clock
        self.rows: List[TopRow] = []
        self.refreshes = 0
        self.taken_at = 0.0           # wall clock of the last refresh
        self._prev: Dict[int, Dict[str, Optional[Value]]] = {}
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
                if n in self.rates or n in self.stalls:
                    p = prev.get(n) if prev is not None else None
                    # a counter that went down was reset (v1 failcnt): no rate this time
                    rate = None if (v is None or p is None or not dt or dt <= 0 or v < p) \
                        else (v - p) / dt
                    # microseconds stalled per second of the interval, as a percent
                    shown[n] = rate / 1e4 if rate is not None and n in self.stalls else rate
                else:
                    shown[n] = v
            current[rec.id] = raw
            rows.append(TopRow(display_path(rec), rec.id, rec.level, shown))
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
        # `or 0.0`: for the type checker, every value here is known (not None)
        known.sort(key=lambda r: r.values[self.sort] or 0.0, reverse=not self.reverse)
        unknown.sort(key=lambda r: r.path)
        self.rows = known + unknown

    def cycle_sort(self, step: int) -> None:
        keys = self.names + ["cgroup"]
        self.sort = keys[(keys.index(self.sort) + step) % len(keys)]
        self.sort_rows()

    # --- rendering (pure: tests call it without a terminal) ---

    def label(self, name: str) -> str:
        text = SHORT_LABELS.get(name, name.upper())
        return text + ("/s" if name in self.rates else "%" if name in self.stalls else "")

    def cell(self, name: str, value: Optional[float]) -> str:
        if name in self.rates:
            return format_rate(value)
        if name in self.stalls:
            return format_percent(value)
        if value is not None and lookup(name).unit == catalog.PERCENT_X100:
            return format_percent(value / 100)
        return format_value(name, value if value is None or value is MAX else int(value))

    def render(self, width: Optional[int] = None, height: Optional[int] = None,
               keys_help: bool = True) -> List[Tuple[str, str]]:
        """Lines as (text, kind); kind is title, help, header or row.
        width/height None: no truncation (batch mode)."""
        order = "ascending" if (self.sort == "cgroup") != self.reverse else "descending"
        title = (f"pymemcg top - {path_text(self.root)} - {self.reader.backend}, cgroup "
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
        due = next_tick(due, view.interval)


def _top_curses(stdscr: Any, view: TopView, iterations: Optional[int], colour: bool) -> None:
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
    chosen = args.stats is not None
    # without --stats the extras are read too, and shown where the host serves them
    names = selection(args, TOP_STATS) if chosen else list(TOP_STATS + TOP_EXTRAS)
    sort = args.sort if args.sort is not None else ("usage" if "usage" in names else names[0])
    check_sort(sort, names)  # before a Reader loads anything
    root = default_root(args.root)
    interactive = not args.batch and isatty(out) and isatty(sys.stdin)
    with stop_on_sigterm():
        try:
            with open_reader(names, args.local, args.backend, args.flush, for_trees=True) as reader:
                shown = names if chosen else top_columns(reader.sources)
                check_sort(sort, shown)
                view = TopView(reader, root, shown, sort, args.interval, reverse=args.reverse)
                if not interactive:
                    return _top_batch(view, out, args.iterations,
                                      Style(colour_wanted(out, args.color)))
                import curses
                os.environ.setdefault("ESCDELAY", "25")
                curses.wrapper(_top_curses, view, args.iterations, colour_wanted(out, args.color))
        except (KeyboardInterrupt, Stop):
            pass  # curses.wrapper has restored the terminal already
    return EXIT_OK
