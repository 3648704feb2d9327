"""`pymemcg pin`, `pins` and `unpin`: shared pins for other processes and users
(pymemcg.pins does the work)."""

from __future__ import annotations

import argparse
import grp
import pwd
import shlex
import sys
from typing import List, TextIO

from .. import pins
from ..errors import InvalidPin
from .options import default_root, selection
from .running import EXIT_OK, EXIT_USAGE, PROG
from .snapshot import SNAPSHOT_STATS


def cmd_pin(args: argparse.Namespace, out: TextIO) -> int:
    owner = pwd.getpwnam(args.owner).pw_uid if not args.owner.isdigit() else int(args.owner)
    group = grp.getgrnam(args.group).gr_gid if not args.group.isdigit() else int(args.group)
    try:
        mode = int(args.mode, 8)
    except ValueError:
        raise InvalidPin(f"--mode {args.mode}: give an octal mode such as 640") from None
    root = default_root(args.root)
    info = pins.pin(root, args.name, selection(args, SNAPSHOT_STATS), tree=not args.self_only,
                    local=args.local, owner=owner, group=group, mode=mode,
                    directory=args.dir, meta_dir=args.meta_dir)
    out.write(f"pinned {info.path} ({'tree' if info.tree else 'cgroup'} {info.root}, "
              f"{len(info.stats)} stats, owner {info.owner}:{info.group} mode {info.mode:o})\n")
    return EXIT_OK


def cmd_unpin(args: argparse.Namespace, out: TextIO) -> int:
    if not args.paths and not args.stale:
        print(f"{PROG}: name the pins to remove, or give --stale to remove those whose cgroup "
              f"is gone", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    for name in args.paths:
        # the name as given: unpin() refuses '..' before anything resolves it
        removed = pins.unpin(name, args.meta_dir, args.dir)
        for p in removed:
            out.write(f"{'removed' if p.endswith('.json') else 'unpinned'} {p}\n")
        if not removed:
            print(f"{PROG}: no pin {pins.pin_path(name, args.dir)} and no metadata for it in "
                  f"{args.meta_dir}: nothing to remove (a name is looked up in --dir; "
                  f"`{PROG} pins` lists them)", file=sys.stderr)
            status = EXIT_USAGE
    if args.stale:
        refused: List[str] = []
        for path in pins.prune(args.dir, args.meta_dir, args.other_builds, refused):
            out.write(f"removed stale {path}\n")
        for why in refused:
            print(f"{PROG}: left in place: {why}", file=sys.stderr)
            status = EXIT_USAGE
    return status


def cmd_pins(args: argparse.Namespace, out: TextIO) -> int:
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
    return EXIT_OK
