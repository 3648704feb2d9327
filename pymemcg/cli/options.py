"""The options the commands share (ROOT, --stats, --local, --backend, --flush),
their argument types, and what their values mean."""

from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

from ..cgroupfs import memory_mount
from ..errors import NoMemoryController, StatUnavailable, UnknownStat
from ..numa import is_numa
from ..reader import stats as list_stats


def add_common(p: argparse.ArgumentParser, default_stats: Sequence[str], root: bool = True,
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


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value


def parse_stat_list(text: str, local: bool = False) -> List[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (names are checked by the Reader); 'all' -> every
    stat this host can serve, but the per-node NUMA ones (name them: anon:N0)."""
    if text.strip() == "all":
        # NUMA stats are per node, a family of their own: Reader(numa=...)
        return [s.name for s in list_stats(local=local) if s.available and not is_numa(s.name)]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UnknownStat("--stats names no stat: give a comma-separated list, e.g. "
                          "--stats anon,file,usage, or all (see `pymemcg stats`)")
    return names


def add_numa(p: argparse.ArgumentParser) -> None:
    """--numa: memory.numa_stat items as a column per node (snapshot, watch)."""
    p.add_argument("--numa", metavar="A,B",
                   help="memory.numa_stat items to add, a column per node with memory "
                        "(anon:N0, anon:N1, ...), or all (docs/numa.md)")


def numa_columns(text: str) -> List[str]:
    """--numa's items on every node with memory, as stat names; StatUnavailable
    (naming why) where this host's nodes cannot be served."""
    from .. import numa
    mount = memory_mount()
    if mount is None:
        raise NoMemoryController("no cgroup hierarchy on this host has the memory controller")
    items = list(numa.items(mount.version)) if text.strip() == "all" else \
        [part.strip() for part in text.split(",") if part.strip()]
    nodes = numa.memory_nodes()
    why = numa.nodes_why(nodes)
    if why:
        raise StatUnavailable(f"--numa: {why}")
    return numa.expand(items, mount.version, nodes)


def selection(args: argparse.Namespace, default: Sequence[str]) -> List[str]:
    """The stats --stats names, or `default` without it; then --numa's
    columns, where the command has that option."""
    names = list(default) if args.stats is None else \
        parse_stat_list(args.stats, local=getattr(args, "local", False))
    if getattr(args, "numa", None):
        names += [n for n in numa_columns(args.numa) if n not in names]
    return names


def default_root(root: Optional[str]) -> str:
    """ROOT, or the mountpoint of the hierarchy with the memory controller."""
    if root is not None:
        return root
    mount = memory_mount()
    if mount is None:
        raise NoMemoryController("no cgroup hierarchy on this host has the memory "
                                 "controller: mount one, or pass ROOT")
    return mount.mountpoint
