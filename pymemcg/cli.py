"""The pymemcg command line: `python -m pymemcg snapshot`, `... stats`.

    pymemcg snapshot [ROOT] [--stats a,b,c] [--local] [--format table|json|csv]
                     [--backend auto|bpf|text]
    pymemcg stats
    pymemcg --version

User errors (pymemcg.Error) print `pymemcg: <message>` on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, TextIO

from . import __version__, catalog
from .cgroupfs import memory_mount
from .decode import Record, Snapshot
from .errors import Error, NoMemoryController, UnknownStat
from .reader import Reader, stats as list_stats

PROG = "pymemcg"

#: what `snapshot` shows when --stats is not given
SNAPSHOT_STATS = ("usage", "anon", "file", "shmem", "kernel_stack", "pgfault", "pgmajfault",
                  "oom_kill")

EXIT_OK = 0
EXIT_USAGE = 2          # argparse uses 2 as well
EXIT_INTERRUPTED = 130

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


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


def parse_stat_list(text: str) -> List[str]:
    """'a, b,c' -> ['a', 'b', 'c']; names are checked by the Reader."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UnknownStat("--stats names no stat: give a comma-separated list, e.g. "
                          "--stats anon,file,usage (see `pymemcg stats`)")
    return names


def _kernel_release() -> str:
    return os.uname().release


def _display_path(rec: Record) -> str:
    # a cgroup created during the walk whose name could not be learned has no path
    return rec.path if rec.path is not None else f"?id={rec.id}"


# --- snapshot output ---

def write_table(out: TextIO, snap: Snapshot, names: Sequence[str], backend: str,
                version: int) -> None:
    """Summary line, then one row per cgroup with the path indented by level."""
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
    for cells in lines:
        out.write("  ".join(cells).rstrip() + "\n")


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
        "cgroups": [
            {"id": rec.id, "parent_id": rec.parent_id, "path": rec.path, "level": rec.level,
             "stats": rec.as_dict()}
            for rec in snap.records
        ],
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
    names = parse_stat_list(args.stats) if args.stats is not None else list(SNAPSHOT_STATS)
    root = args.root
    if root is None:
        mount = memory_mount()
        if mount is None:
            raise NoMemoryController("no cgroup hierarchy on this host has the memory "
                                     "controller: mount one, or pass ROOT")
        root = mount.mountpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = Reader(stats=names, local=args.local, backend=args.backend)
    for w in caught:  # the BPF -> text fallback: say it once, in our own words
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    with reader:
        snap = reader.read_tree(root)
        backend, version = reader.backend, reader.cgroup_version
    if args.format == "json":
        json.dump(snapshot_json(snap, names, backend, version, root, args.local), out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        write_csv(out, snap, names)
    else:
        write_table(out, snap, names, backend, version)
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


# --- entry point ---

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Memory-cgroup statistics through a "
                                "pinned BPF cgroup iterator (memory.stat as fallback).")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    snap = sub.add_parser("snapshot", help="read a cgroup tree in one walk and print it",
                          description="Read every cgroup under ROOT (included) in one walk.")
    snap.add_argument("root", metavar="ROOT", nargs="?",
                      help="cgroup directory (default: the memory hierarchy's mountpoint)")
    snap.add_argument("--stats", metavar="A,B,C",
                      help="comma-separated stat names (default: %s)" % ",".join(SNAPSHOT_STATS))
    snap.add_argument("--local", action="store_true",
                      help="each cgroup's own values instead of hierarchical ones")
    snap.add_argument("--format", choices=("table", "json", "csv"), default="table")
    snap.add_argument("--backend", choices=("auto", "bpf", "text"), default="auto",
                      help="auto: BPF, else memory.stat text with a warning (default)")
    snap.set_defaults(func=cmd_snapshot)

    st = sub.add_parser("stats", help="list every stat and how this host serves it")
    st.add_argument("--local", action="store_true", help="availability of local values")
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.set_defaults(func=cmd_stats)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, sys.stdout)
    except Error as e:
        msg = " ".join(str(e).split()) if "\n" not in str(e).strip() else str(e).strip()
        print(f"{PROG}: {msg}", file=sys.stderr)
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
