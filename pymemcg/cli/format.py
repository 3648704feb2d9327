"""How the commands write what they read: colour, human units and rates, and a
snapshot as a table, as JSON or as CSV. Every path is written as its text
form (pymemcg.names.escape): valid UTF-8 without control characters, one
text per path, whatever bytes the cgroup's name holds."""

from __future__ import annotations

import csv
import os
from typing import Dict, Optional, Sequence, TextIO

from .. import catalog
from ..numa import lookup
from ..decode import MAX, Record, Snapshot, Value, json_value
from ..names import escape

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

_SGR = {"bold": "1", "dim": "2", "reverse": "7", "red": "31", "green": "32", "yellow": "33",
        "blue": "34", "cyan": "36"}


def isatty(stream: Optional[TextIO]) -> bool:
    """stream.isatty(), False for a stream that is closed or has none."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def colour_wanted(stream: TextIO, mode: str = "auto") -> bool:
    """--color always/never, or auto: a terminal, NO_COLOR unset, TERM not 'dumb'."""
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return isatty(stream)


class Style:
    """ANSI styling that is a no-op when colour is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        return "\x1b[" + ";".join(_SGR[s] for s in styles) + "m" + text + "\x1b[0m"


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


def format_value(name: str, value: Optional[Value]) -> str:
    """A table cell: human units for byte stats, plain numbers for counts, '-' if
    unavailable, 'max' for a limit not set."""
    if value is None:
        return "-"
    if value is MAX:
        return "max"
    if lookup(name).unit == catalog.BYTES:
        return human_bytes(int(value))
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


def format_percent(percent: Optional[float]) -> str:
    """A share of time in percent: '0', '0.4', '12.5', '100.0'; '-' before a second sample."""
    if percent is None:
        return "-"
    if percent == 0:
        return "0"
    return f"{percent:.1f}"


def kernel_release() -> str:
    return os.uname().release


def display_path(rec: Record) -> str:
    """The record's path as text; "?id=N" for a cgroup created during the walk
    whose name could not be learned (no escaped path starts with "?")."""
    return escape(rec.path) if rec.path is not None else f"?id={rec.id}"


def path_text(path: Optional[str]) -> Optional[str]:
    """A path (or None) as its text form, for JSON and CSV."""
    return None if path is None else escape(path)


def write_table(out: TextIO, snap: Snapshot, names: Sequence[str], backend: str,
                version: int, style: Optional[Style] = None) -> None:
    """Summary line, then one row per cgroup with the path indented by level."""
    style = style or Style(False)
    out.write(f"backend {backend}, {len(snap.records)} cgroups, kernel {kernel_release()}, "
              f"cgroup v{version}\n")
    base = snap.records[0].level if snap.records else 0
    header = ["cgroup"] + list(names)
    rows = []
    for rec in snap.records:
        values = rec.as_dict()
        indent = "  " * max(rec.level - base, 0)
        rows.append([indent + display_path(rec)] + [format_value(n, values[n]) for n in names])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = [[header[0].ljust(widths[0])] + [h.rjust(w) for h, w in zip(header[1:], widths[1:])]]
    for r in rows:
        lines.append([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
    for i, cells in enumerate(lines):
        line = "  ".join(cells).rstrip()
        out.write((style(line, "bold") if i == 0 else line) + "\n")


def record_json(rec: Record) -> Dict[str, object]:
    return {"id": rec.id, "parent_id": rec.parent_id, "path": path_text(rec.path),
            "level": rec.level,
            "stats": {n: json_value(v) for n, v in rec.as_dict().items()}}


def snapshot_json(snap: Snapshot, names: Sequence[str], backend: str, version: int,
                  root: str, local: bool) -> Dict[str, object]:
    """The snapshot as JSON-ready data: exact integers, None (null) where
    unavailable, "max" for a limit not set."""
    return {
        "backend": backend,
        "kernel": kernel_release(),
        "cgroup_version": version,
        "root": path_text(root),
        "local": local,
        "stats": list(names),
        "units": {n: lookup(n).unit for n in names},
        "cgroups": [record_json(rec) for rec in snap.records],
    }


def write_csv(out: TextIO, snap: Snapshot, names: Sequence[str]) -> None:
    """Header, then id, path, level and exact integers (empty where
    unavailable, "max" for a limit not set)."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["id", "parent_id", "path", "level"] + list(names))
    for rec in snap.records:
        values = rec.as_dict()
        w.writerow([rec.id, rec.parent_id, path_text(rec.path) or "", rec.level]
                   + ["" if values[n] is None else json_value(values[n]) for n in names])
