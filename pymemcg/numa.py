"""memory.numa_stat per node: item names, node lists, and the file's text.

A per-node value is a stat of its own in a reader's selection, named
`<item>:N<node>` ("anon:N0"), so that it is one fixed slot of the record
like every other stat, and a snapshot has a column per node. The items are
what memory.numa_stat prints on the hierarchy's cgroup version, in its unit:

- cgroup v2: memory.stat's per-node items (anon, file, shmem, the LRU lists,
  slab, workingset counts ...), in memory.stat's units (bytes; counts for
  the workingset and demotion counts). Hierarchical only in the file;
  local=True reads the per-node local values the kernel keeps (6.2+),
  which no file prints.
- cgroup v1: total, file, anon, unevictable, in pages: the LRU lists' sums
  (anon = inactive_anon + active_anon, and so on). local=False gives the
  file's hierarchical_* lines, local=True its plain ones.

Which nodes: those with memory (N_MEMORY, /sys/devices/system/node/has_memory)
when the reader is made, as the file prints them. More than
MAX_NODES of them: NUMA stats are unavailable, never a subset. Memory
hotplug can change that set later: a NodeWatch reads has_memory again at
each read of a reader with NUMA stats and refuses the read
(NumaNodesChanged) once it differs, rather than serve a map of other nodes.
Pure Python: nothing here needs the compiled part.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Dict, List, Optional, Sequence, Tuple

from . import catalog, forksafe
from ._record_h import NUMA_MAX_NODES
from .catalog import COUNT, PAGES, STATE, Stat
from .errors import MalformedData, NumaNodesChanged, UnknownStat, quoted

#: nodes a reader's selection may hold NUMA stats of (more: unavailable)
MAX_NODES = NUMA_MAX_NODES

NODE_DIR = "/sys/devices/system/node"
#: the nodes with memory, as the kernel lists them ("0-1"); NodeWatch reads
#: this name when made
HAS_MEMORY = os.path.join(NODE_DIR, "has_memory")
NUMA_FILE = "memory.numa_stat"

#: the LRU lists in the kernel's order (enum lru_list, NR_LRU_BASE + lru in
#: enum node_stat_item): cgroup v1's memory.numa_stat sums runs of them
LRU_ITEMS = ("NR_INACTIVE_ANON", "NR_ACTIVE_ANON", "NR_INACTIVE_FILE", "NR_ACTIVE_FILE",
             "NR_UNEVICTABLE")
#: cgroup v1 memory.numa_stat (mm/memcontrol-v1.c memcg_numa_stat_show):
#: name -> (first LRU list, how many), in the file's order
V1_ITEMS: Dict[str, Tuple[int, int]] = {
    "total": (0, 5), "file": (2, 2), "anon": (0, 2), "unevictable": (4, 1)}
V1_MEANING = {"total": "pages on the node's LRU lists", "file": "file pages on the node's LRU",
              "anon": "anonymous pages on the node's LRU",
              "unevictable": "unevictable pages on the node"}

#: cgroup v2: memory.stat's items of enum node_stat_item (MEMCG_* items are
#: memcg_stat_item, kept per memcg only; Linux 7.1 made MEMCG_VMALLOC the
#: node item NR_VMALLOC). Resolution checks each against the kernel's enum.
V2_ITEMS: Tuple[str, ...] = tuple(
    s.name for s in catalog.STATS.values()
    if s.kind == STATE and s.v2_key and not s.cgroup_version
    and any(not i.startswith("MEMCG_") for i in (s.item,) + s.aliases))

_NAME = re.compile(r"([a-z_]+):N([0-9]{1,4})\Z")


def items(version: int) -> Tuple[str, ...]:
    """The NUMA item names of a cgroup version, in the file's order."""
    return tuple(V1_ITEMS) if version == 1 else V2_ITEMS


def name(item: str, node: int) -> str:
    """The stat name of item on node: "anon:N0"."""
    return f"{item}:N{node}"


def parse(stat_name: str) -> Optional[Tuple[str, int]]:
    """(item, node) of a NUMA stat name of either version, or None."""
    m = _NAME.match(stat_name) if isinstance(stat_name, str) else None
    if m is None or (m.group(1) not in V1_ITEMS and m.group(1) not in V2_ITEMS):
        return None
    return m.group(1), int(m.group(2))


def is_numa(stat_name: str) -> bool:
    return parse(stat_name) is not None


def stat(stat_name: str, version: int) -> Stat:
    """The Stat of a NUMA stat name on a cgroup version (kind catalog.NUMA;
    item: the memory.stat item on v2, the v1 file's name on v1). A name of
    the other version's items raises UnknownStat."""
    parsed = parse(stat_name)
    if parsed is None:
        raise UnknownStat(f"{quoted(stat_name)} is not a NUMA stat name (item:N<node>)")
    item, node = parsed
    if version == 1:
        if item not in V1_ITEMS:
            raise UnknownStat(f"{quoted(stat_name)}: cgroup v1's {NUMA_FILE} prints "
                              f"{', '.join(V1_ITEMS)} only")
        return Stat(stat_name, catalog.NUMA, item, PAGES,
                    f"{V1_MEANING[item]} (memory.numa_stat {item}= N{node}=)", cgroup_version=1)
    if item not in V2_ITEMS:
        raise UnknownStat(f"{quoted(stat_name)}: cgroup v2's {NUMA_FILE} prints memory.stat's "
                          f"per-node items ({', '.join(V2_ITEMS)})")
    base = catalog.STATS[item]
    return Stat(stat_name, catalog.NUMA, base.item, COUNT if base.unit == COUNT else base.unit,
                f"{base.meaning}, on node {node} (memory.numa_stat {item} N{node}=)",
                cgroup_version=2, aliases=base.aliases)


def parse_nodelist(text: str) -> List[int]:
    """A kernel node list ("0-1,3", "" for none) as node ids."""
    out: List[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise MalformedData(f"node list {text.strip()!r} is not ranges of numbers")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def memory_nodes() -> Optional[List[int]]:
    """The nodes with memory (N_MEMORY: those memory.numa_stat prints), or
    None on a kernel without NUMA (CONFIG_NUMA off: no memory.numa_stat)."""
    try:
        with open(HAS_MEMORY) as f:
            return parse_nodelist(f.read())
    except FileNotFoundError:
        return None


class NodeWatch:
    """The nodes with memory a NUMA selection was made for, checked again
    at each read: `check()` reads has_memory (one pread of a few bytes of
    sysfs, about 2 us, on an fd kept open) and raises NumaNodesChanged when
    it no longer lists `nodes`. Where the kernel has no NUMA (no has_memory)
    there is nothing to watch: NUMA cannot come at run time."""

    def __init__(self, nodes: Optional[Sequence[int]] = None) -> None:
        """Watch `nodes`, or (None) the nodes that have memory now."""
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")
        self._fd: Optional[int] = None
        try:
            self._fd = os.open(HAS_MEMORY, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.nodes: Optional[List[int]] = None if nodes is None else list(nodes)
            self._text = b""
            return
        now = self._read()
        self.nodes = parse_nodelist(now.decode()) if nodes is None else list(nodes)
        # the text that lists exactly `nodes`, once seen: a read that gets it
        # again needs no parse
        self._text = now if parse_nodelist(now.decode()) == self.nodes else b""

    def _read(self) -> bytes:
        assert self._fd is not None
        return os.pread(self._fd, 4096, 0)

    def check(self) -> None:
        """NumaNodesChanged where the nodes with memory are not `nodes` any more."""
        with self._lock:
            if self._fd is None:
                return
            now = self._read()
            if now == self._text:
                return
            if parse_nodelist(now.decode()) == self.nodes:
                self._text = now
                return
        raise _changed(now, self.nodes)

    def close(self) -> None:
        """Close the fd. Idempotent."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        # a Reader whose making failed after this was made
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            os.close(fd)


def _changed(now: bytes, nodes: Optional[Sequence[int]]) -> NumaNodesChanged:
    return NumaNodesChanged(
        f"the NUMA nodes with memory are now {now.decode().strip() or 'none'} "
        f"({HAS_MEMORY}); these per-node stats were selected for nodes "
        f"{','.join(map(str, nodes or [])) or 'none'} (memory hotplug since?): make a new "
        f"Reader (a shared pin: pin it again) to read the nodes there are now")


def check_nodes(nodes: Sequence[int]) -> None:
    """NumaNodesChanged where has_memory does not list `nodes` now: NodeWatch
    for a holder that keeps no fd (a PinReader, which opens its pin per read
    too)."""
    try:
        with open(HAS_MEMORY, "rb") as f:
            now = f.read()
    except FileNotFoundError:
        return
    if parse_nodelist(now.decode()) != list(nodes):
        raise _changed(now, nodes)


def selected_nodes(stat_names: Sequence[str]) -> List[int]:
    """The nodes that NUMA stat names (as expand() makes them) are of."""
    return sorted({p[1] for p in map(parse, stat_names) if p is not None})


def nodes_why(nodes: Optional[Sequence[int]]) -> str:
    """Why NUMA stats are unavailable with these nodes, or "" when they are not."""
    if nodes is None:
        return f"this kernel has no NUMA support (no {NODE_DIR}/has_memory, no {NUMA_FILE})"
    if not nodes:
        return f"{NODE_DIR}/has_memory lists no node"
    if len(nodes) > MAX_NODES:
        return (f"{len(nodes)} nodes have memory, more than the {MAX_NODES} a selection takes "
                f"NUMA stats of: none is served rather than some")
    return ""


def expand(selected: Sequence[str], version: int, nodes: Optional[Sequence[int]]
           ) -> List[str]:
    """The stat names of NUMA items `selected` on every node with memory
    (node-major: each node's items together); none where nodes_why() says
    why. An item of neither version raises UnknownStat."""
    known = items(version)
    for item in selected:
        if item not in known:
            raise UnknownStat(f"numa={quoted(item)}: cgroup v{version}'s {NUMA_FILE} prints "
                              f"{', '.join(known)}")
    if nodes_why(nodes):
        return []
    return [name(item, node) for node in nodes or () for item in selected]


def parse_numa_stat(text: str, version: int, local: bool) -> Dict[str, int]:
    """memory.numa_stat's per-node values by stat name ("anon:N0"): v2's
    "item N0=v N1=v" lines (hierarchical), v1's "item=v N0=v" lines (the
    plain ones local, hierarchical_* otherwise; the totals left out)."""
    out: Dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        parts = line.split(" ")
        if version == 1:
            key, _, _ = parts[0].partition("=")
            hier = key.startswith("hierarchical_")
            if hier == local:
                continue
            item = key[len("hierarchical_"):] if hier else key
            nodes = parts[1:]
        else:
            if local:
                return {}
            item, nodes = parts[0], parts[1:]
        for field in nodes:
            n, eq, value = field.partition("=")
            if not eq or not n.startswith("N") or not n[1:].isdigit() or not value.isdigit():
                raise MalformedData(f"{NUMA_FILE} line {lineno}: expected N<node>=<value>, got "
                                    f"{field[:40]!r}")
            out[name(item, int(n[1:]))] = int(value)
    return out


def numa_availability(stat_name: str, version: int, local: bool) -> Tuple[bool, str]:
    """Whether the text backend serves a NUMA stat, and from where."""
    try:
        stat(stat_name, version)
    except UnknownStat as e:
        return False, str(e)
    if version == 2 and local:
        return False, f"cgroup v2's {NUMA_FILE} prints hierarchical values only"
    why = nodes_why(memory_nodes())
    if why:
        return False, why
    return True, NUMA_FILE + ("" if version == 2 else
                              " (plain lines)" if local else " (hierarchical_* lines)")


def lookup(stat_name: str) -> Stat:
    """The Stat of any name a reader takes: a catalog stat, or a NUMA one
    on this host's memory hierarchy (its unit differs by cgroup version)."""
    found = catalog.STATS.get(stat_name)
    if found is not None:
        return found
    from .cgroupfs import memory_mount
    mount = memory_mount()
    return stat(stat_name, mount.version if mount else 2)
