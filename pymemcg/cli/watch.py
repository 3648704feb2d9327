"""`pymemcg watch`: JSON lines, one snapshot per interval, for other tools."""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, TextIO

from .. import catalog
from ..reader import Reader
from .format import path_text, record_json
from .options import default_root, selection
from .running import EXIT_OK, Stop, next_tick, open_reader, stop_on_sigterm, write_whole

#: what `watch` writes when --stats is not given
WATCH_STATS = catalog.DEFAULT_STATS


def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    """One JSON object per cgroup per snapshot (default), or one per snapshot.

    per cgroup:   {"seq": 0, "time": 1764115200.25, "id": 1, "parent_id": 0, "path": "/",
                   "level": 0, "stats": {"usage": null, "anon": 4521984, ...}}
    per snapshot: {"seq": 0, "time": ..., "backend": "bpf", "root": "...", "cgroups": [...]}

    seq numbers the snapshots from 0; time is the Unix time the walk started;
    sizes are bytes and events cumulative counts, null where unavailable;
    paths are text (pymemcg.names.escape), never a lone surrogate.
    """
    names = selection(args, WATCH_STATS)
    root = default_root(args.root)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with stop_on_sigterm():
        try:
            with open_reader(names, args.local, args.backend, args.flush, for_trees=True) as reader:
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
            lines = dumps({"seq": seq, "time": now, "backend": reader.backend,
                           "root": path_text(root),
                           "local": args.local,
                           "cgroups": [record_json(r) for r in snap.records]}) + "\n"
        else:
            lines = "".join(dumps({"seq": seq, "time": now, **record_json(rec)}) + "\n"
                            for rec in snap.records)
        write_whole(out, lines)
        seq += 1
        if args.count is not None and seq >= args.count:
            return
        due = next_tick(due, args.interval)
