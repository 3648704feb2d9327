"""`pymemcg snapshot`: one tree read, printed as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from .format import Style, colour_wanted, snapshot_json, write_csv, write_table
from .options import default_root, selection
from .running import EXIT_OK, open_reader

#: what `snapshot` (and `pin`) shows when --stats is not given
SNAPSHOT_STATS = ("usage", "anon", "file", "shmem", "kernel_stack", "pgfault", "pgmajfault",
                  "oom_kill")


def cmd_snapshot(args: argparse.Namespace, out: TextIO) -> int:
    names = selection(args, SNAPSHOT_STATS)
    root = default_root(args.root)
    with open_reader(names, args.local, args.backend, args.flush, for_trees=True) as reader:
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
