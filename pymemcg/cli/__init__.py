"""The pymemcg command line (also `python -m pymemcg`).

    pymemcg snapshot [ROOT] [--stats a,b,c|all] [--local] [--format table|json|csv]
                     [--backend auto|bpf|text]
    pymemcg top [ROOT] [--sort STAT] [--interval S] [--stats ...] [--batch] [-n N]
    pymemcg watch [ROOT] [--interval S] [--count N] [--per cgroup|snapshot] [--stats ...]
    pymemcg events [--count N] [--ready]          (OOM kills as they happen, JSON lines)
    pymemcg export [ROOT] [--listen ADDR:PORT] [--min-interval S] [--stats ...]  (`prometheus` extra)
    pymemcg doctor [--format text|json]
    pymemcg stats [--format table|json]
    pymemcg verify [--format table|json] [--parent DIR]
    pymemcg pin ROOT --name NAME [...] / pymemcg pins / pymemcg unpin NAME...
    pymemcg bench [ROOT] [--seconds S] [--rounds N] [--format table|json]
    pymemcg --version

Exit status: 0 on success, and when top, watch or export is stopped (q,
Ctrl-C, SIGTERM); 2 for user errors (pymemcg.Error, printed as
`pymemcg: <message>`, and bad arguments); doctor exits 1 when only the text
backend works here; verify exits 1 when a stat
differs from the kernel's files. Colour only on a terminal (--color, NO_COLOR).

This module holds the parser and the error handling; each command is a
module of this package (snapshot, top, watch, export, doctor, stats, verify,
pins, bench), and format, options and running hold what they share.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Optional, Sequence, TextIO

from .. import __version__
from ..errors import Error
from ..pins import META_DIR, SHARED_PIN_DIR
from .bench import ROUNDS, SECONDS, STATS as BENCH_STATS
from .export import add_export_options
from .options import add_common, add_numa, positive_float, positive_int
from .running import (EXIT_DEGRADED, EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE,
                      PROG)
from .snapshot import SNAPSHOT_STATS
from .top import TOP_STATS
from .watch import WATCH_STATS

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_DEGRADED", "EXIT_MISMATCH", "EXIT_USAGE",
           "EXIT_INTERRUPTED"]


def command(module: str, function: str) -> Callable[[argparse.Namespace, TextIO], int]:
    """The command `function` of pymemcg.cli.<module>, imported when it runs:
    a run imports only its own command's code."""
    def run(args: argparse.Namespace, out: TextIO) -> int:
        status: int = getattr(importlib.import_module(f".{module}", __name__), function)(args, out)
        return status
    run.__name__ = function
    return run


def build_parser() -> argparse.ArgumentParser:
    colour = argparse.ArgumentParser(add_help=False)
    colour.add_argument("--color", "--colour", dest="color", choices=("auto", "always", "never"),
                        default=argparse.SUPPRESS,
                        help="colour: auto (a terminal, NO_COLOR unset), always, never")

    p = argparse.ArgumentParser(prog=PROG, parents=[colour],
                                description="Memory-cgroup statistics read through BPF (a "
                                            "cgroup iterator program, and a BPF_PROG_RUN fetch "
                                            "program where the kernel takes it), with "
                                            "memory.stat as the last resort.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    snap = sub.add_parser("snapshot", parents=[colour],
                          help="read a cgroup tree in one walk and print it",
                          description="Read every cgroup under ROOT (included) in one walk.")
    add_common(snap, SNAPSHOT_STATS)
    add_numa(snap)
    snap.add_argument("--format", choices=("table", "json", "csv"), default="table")
    snap.set_defaults(func=command("snapshot", "cmd_snapshot"))

    top = sub.add_parser("top", parents=[colour], help="a live view of the cgroup tree",
                         description="A live view like systemd-cgtop: one tree read per refresh, "
                                     "counts as rates per second between refreshes. Keys: q quit, "
                                     "< > sort column, r reverse, + - interval, space refresh. "
                                     "Ctrl-C quits too. Off a terminal (or --batch) it prints "
                                     "frames.")
    add_common(top, TOP_STATS)
    top.add_argument("--sort", metavar="STAT",
                     help="sort by this shown stat (largest first; counts by rate) or by cgroup "
                          "(default: usage)")
    top.add_argument("--reverse", action="store_true", help="smallest first")
    top.add_argument("--interval", "-d", type=positive_float, default=1.0, metavar="S",
                     help="seconds between refreshes (default 1)")
    top.add_argument("--batch", "-b", action="store_true",
                     help="print frames instead of a full-screen view")
    top.add_argument("--iterations", "-n", type=positive_int, metavar="N",
                     help="stop after N refreshes")
    top.set_defaults(func=command("top", "cmd_top"))

    watch = sub.add_parser("watch", parents=[colour], help="JSON lines, one snapshot per interval",
                           description="Write JSON lines for other tools: by default one object "
                                       "per cgroup per snapshot ({seq, time, id, parent_id, path, "
                                       "level, stats}); --per snapshot writes one object per "
                                       "snapshot. Exact integers, null where unavailable.")
    add_common(watch, WATCH_STATS)
    add_numa(watch)
    watch.add_argument("--interval", "-i", type=positive_float, default=1.0, metavar="S",
                       help="seconds between snapshots (default 1)")
    watch.add_argument("--count", "-c", type=positive_int, metavar="N",
                       help="stop after N snapshots (default: until Ctrl-C)")
    watch.add_argument("--per", choices=("cgroup", "snapshot"), default="cgroup",
                       help="one JSON object per cgroup (default) or per snapshot")
    watch.set_defaults(func=command("watch", "cmd_watch"))

    events = sub.add_parser("events", parents=[colour], help="OOM kills as they happen, JSON lines",
                            description="Write one JSON object per OOM kill as the kernel makes "
                                        "it (through BPF, without /dev/kmsg): time, victim pid and "
                                        "command, its memory cgroup and the one whose limit was "
                                        "hit, the memory figures the kernel logs (KiB); "
                                        "{\"event\": \"lost\"} where events were lost.")
    events.add_argument("--count", "-c", type=positive_int, metavar="N",
                        help="stop after N kills (default: until Ctrl-C)")
    events.add_argument("--ready", action="store_true",
                        help="first write {\"event\": \"ready\"} once the programs are attached")
    events.add_argument("--ring-pages", type=positive_int, metavar="N",
                        help="the kernel's ring for events not yet read, in pages: a power of "
                             "two (default 256 KiB); a larger ring loses fewer events in a "
                             "burst of kills")
    events.set_defaults(func=command("events", "cmd_events"))

    export = sub.add_parser("export", parents=[colour],
                            help="serve Prometheus metrics (cAdvisor names + memcg_<stat>)",
                            description="Serve Prometheus metrics over HTTP: cAdvisor's "
                                        "container_memory_* names with an id label, and every "
                                        "selected stat as memcg_<stat> with a cgroup label. One "
                                        "tree read per scrape interval (--min-interval). Needs `pip install "
                                        "'pymemcg[prometheus]'`.")
    add_export_options(export)
    export.set_defaults(func=command("export", "cmd_export"))

    doctor = sub.add_parser("doctor", parents=[colour],
                            help="which backend works here, why, and what to fix")
    doctor.add_argument("--format", choices=("text", "json"), default="text")
    doctor.set_defaults(func=command("doctor", "cmd_doctor"))

    st = sub.add_parser("stats", parents=[colour],
                        help="list every stat and how this host serves it")
    st.add_argument("--local", action="store_true", help="availability of local values")
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.set_defaults(func=command("stats", "cmd_stats"))

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
    ver.set_defaults(func=command("verify", "cmd_verify"))

    pin = sub.add_parser("pin", parents=[colour],
                         help="pin a link for other processes and users to read",
                         description="Load the program for ROOT and a selection, and pin the "
                                     "link in bpffs with the given owner, group and mode; "
                                     "readers use pymemcg.pins.PinReader (no bpf() needed).")
    add_common(pin, SNAPSHOT_STATS, backend=False)
    add_numa(pin)
    pin.add_argument("--name", required=True, help="the pin's file name")
    pin.add_argument("--self-only", action="store_true", help="ROOT alone, not its subtree")
    pin.add_argument("--owner", default="0", help="user (name or uid; default root)")
    pin.add_argument("--group", default="0", help="group (name or gid; default root)")
    pin.add_argument("--mode", default="600",
                     help="octal mode, never writable by group or others (default 600); the "
                          "metadata is root's, 644")
    pin.add_argument("--dir", default=SHARED_PIN_DIR, help=f"bpffs directory ({SHARED_PIN_DIR})")
    pin.add_argument("--meta-dir", default=META_DIR, help=f"metadata directory ({META_DIR})")
    pin.set_defaults(func=command("pins", "cmd_pin"))
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
    unpin.set_defaults(func=command("pins", "cmd_unpin"))
    lspins = sub.add_parser("pins", parents=[colour],
                            help="list every pin: what each serves, if this build made it, "
                                 "and orphans without metadata")
    lspins.add_argument("--dir", default=SHARED_PIN_DIR)
    lspins.add_argument("--meta-dir", default=META_DIR)
    lspins.set_defaults(func=command("pins", "cmd_pins"))

    bench = sub.add_parser("bench", parents=[colour],
                           help="how much faster pymemcg reads this host's cgroups than "
                                "parsing memory.stat",
                           description="Time Reader.read of ROOT against os.pread + parse of "
                                       "its memory.stat, and Reader.read_tree of ROOT's tree "
                                       "against a walk that parses every memory.stat in it, "
                                       "taking turns in rounds; ratios of the same run. Reads "
                                       "the host's cgroups as they are and changes nothing. "
                                       "The full benchmark (C, made trees, profiles) is "
                                       "`make bench` in a source checkout.")
    add_common(bench, BENCH_STATS)
    bench.add_argument("--seconds", "-s", type=positive_float, default=SECONDS, metavar="S",
                       help=f"about S seconds of calls per method and comparison (default "
                            f"{SECONDS:g})")
    bench.add_argument("--rounds", "-r", type=positive_int, default=ROUNDS, metavar="N",
                       help=f"rounds the methods take turns in (default {ROUNDS})")
    bench.add_argument("--format", choices=("table", "json"), default="table")
    bench.set_defaults(func=command("bench", "cmd_bench"))
    return p


def _error_text(e: Error) -> str:
    text = str(e).strip()
    return text if "\n" in text else " ".join(text.split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not hasattr(args, "color"):
            args.color = "auto"
        status: int = args.func(args, sys.stdout)
        return status
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
