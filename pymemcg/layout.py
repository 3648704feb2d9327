"""Layout resolution: which slot of which kernel array holds each stat.

Input is a set of facts about the running kernel, read from its BTF
(`KernelFacts.from_running_kernel`) or written by hand in tests; output is
one `Resolution` per stat: the spec the BPF program reads it by, and how it
was resolved, or why it is unavailable. Nothing here guesses: a stat whose
slot cannot be proven from the facts is unavailable.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import catalog
from .catalog import BYTES, COUNT, COUNTER, EVENT, MEMEVENT, STATE, Stat
from .kernel_tables import TABLES, Entry, KernelTable

# enum pmc_stat_kind / enum pmc_counter / PMC_SPEC_* in bpf_src/memcg_record.h
KIND_NONE, KIND_STATE, KIND_EVENT, KIND_MEMEVENT, KIND_COUNTER = range(5)
COUNTERS = {"MEMORY_USAGE": 0, "MEMORY_PEAK": 1, "MEMORY_MAX": 2, "MEMORY_FAILCNT": 3,
            "SWAP_USAGE": 4, "SWAP_PEAK": 5, "SWAP_MAX": 6, "SWAP_FAILCNT": 7}
SPEC_SIGNED = 1

ENUMS = ("node_stat_item", "memcg_stat_item", "vm_event_item", "memcg_memory_event")
MEMCG_KFUNCS = ("bpf_get_mem_cgroup", "bpf_put_mem_cgroup", "bpf_mem_cgroup_page_state",
                "bpf_mem_cgroup_vm_events", "bpf_mem_cgroup_memory_events",
                "bpf_mem_cgroup_usage", "bpf_mem_cgroup_flush_stats")

# how a stat was resolved
VIA_TABLE = "table"          # kernel_tables, checked against BTF
VIA_ENUM = "btf-enum"        # slot is the enum value itself (memory_events[])
VIA_FIELD = "core-field"     # a struct field, relocated by CO-RE
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class KernelFacts:
    """What resolution needs to know about a kernel, all from its BTF."""

    release: str                               # "6.18"
    enums: Mapping[str, int]                   # enumerator -> value, of ENUMS
    state_len: Optional[int]                   # len(memcg_vmstats.state)
    events_len: Optional[int]                  # len(memcg_vmstats.events)
    memory_events_len: Optional[int]           # len(mem_cgroup.memory_events)
    kfuncs: FrozenSet[str] = frozenset()

    @classmethod
    def from_running_kernel(cls) -> "KernelFacts":
        from . import btf  # the shim: only needed on a real kernel
        return btf.read_kernel_facts(release_of(os.uname().release))


def release_of(uname_release: str) -> str:
    """'6.18.44-fc-v657' -> '6.18'."""
    m = re.match(r"(\d+)\.(\d+)", uname_release)
    return f"{m.group(1)}.{m.group(2)}" if m else uname_release


@dataclass(frozen=True)
class Resolution:
    """How one stat is read on this kernel."""

    stat: Stat
    via: str                    # VIA_* or UNAVAILABLE
    kind: int = KIND_NONE       # enum pmc_stat_kind
    slot: int = 0
    item: int = 0               # enum value (kfunc backend)
    flags: int = 0
    scale: int = 1
    detail: str = ""            # the table used, or why unavailable

    @property
    def available(self) -> bool:
        return self.via != UNAVAILABLE


@dataclass(frozen=True)
class TableMatch:
    """A kernel table resolved against BTF facts."""

    table: KernelTable
    state_slots: Dict[str, int] = field(default_factory=dict)
    event_slots: Dict[str, int] = field(default_factory=dict)
    problems: Tuple[str, ...] = ()


def _resolve_list(entries: Sequence[Entry], enums: Mapping[str, int],
                  length: Optional[int], what: str) -> Tuple[Dict[str, int], Optional[str]]:
    """Slots of a compacted list, or why the list does not fit this kernel.

    Entries whose enumerator is missing are compiled out. Entries under an
    #ifdef that the enums do not reveal are tried both ways; exactly one way
    must give the array length that BTF reports.
    """
    if length is None:
        return {}, f"{what} array not in BTF"
    present = [e for e in entries if e.item in enums]
    configs = sorted({e.config for e in present if e.config})
    fits: Dict[Tuple[str, ...], Tuple[str, ...]] = {}
    for on in itertools.product((False, True), repeat=len(configs)):
        enabled = {c for c, flag in zip(configs, on) if flag}
        items = tuple(e.item for e in present if e.config is None or e.config in enabled)
        if len(items) == length:
            fits[items] = tuple(sorted(enabled))
    if len(fits) != 1:
        why = "no" if not fits else "more than one"
        return {}, f"{what}: {why} reading of the table gives BTF's length {length}"
    (items,) = fits
    return {item: slot for slot, item in enumerate(items)}, None


def _by_enum(enums: Mapping[str, int], length: Optional[int], names: Iterable[str],
             what: str) -> Tuple[Dict[str, int], Optional[str]]:
    if length is None:
        return {}, f"{what} array not in BTF"
    return {n: enums[n] for n in names if n in enums and enums[n] < length}, None


def match_table(facts: KernelFacts, tables: Mapping[str, KernelTable] = TABLES) -> Optional[TableMatch]:
    """The table for this kernel release, with the slots BTF confirms."""
    table = tables.get(facts.release)
    if table is None:
        return None
    problems: List[str] = []
    if table.state_layout == "compacted":
        state, why = _resolve_list(table.state_items, facts.enums, facts.state_len, "state[]")
    else:
        nr = facts.enums.get("MEMCG_NR_STAT")
        state, why = _by_enum(facts.enums, facts.state_len, facts.enums, "state[]")
        if why is None and nr != facts.state_len:
            state, why = {}, f"state[] has {facts.state_len} slots, MEMCG_NR_STAT is {nr}"
    if why:
        problems.append(why)
    if table.event_layout == "compacted":
        events, why = _resolve_list(table.event_items, facts.enums, facts.events_len, "events[]")
    else:
        events, why = _by_enum(facts.enums, facts.events_len, facts.enums, "events[]")
    if why:
        problems.append(why)
    return TableMatch(table, state, events, tuple(problems))


def _scale(stat: Stat, page_size: int) -> int:
    if stat.unit == COUNT:
        return 1
    if stat.item.endswith("_B"):
        return 1
    if stat.item == "NR_KERNEL_STACK_KB":
        return 1024
    return page_size


def resolve(names: Sequence[str], facts: KernelFacts, cgroup_version: int,
            page_size: int, tables: Mapping[str, KernelTable] = TABLES) -> List[Resolution]:
    """One Resolution per name, in order. Unknown names raise UnknownStat."""
    from .errors import UnknownStat

    match = match_table(facts, tables)
    out: List[Resolution] = []
    for name in names:
        stat = catalog.STATS.get(name)
        if stat is None:
            raise UnknownStat(f"unknown stat {name!r}: see pymemcg.stats() for the names "
                              f"this version knows")
        out.append(_resolve_one(stat, facts, match, cgroup_version, page_size))
    return out


def _unavailable(stat: Stat, why: str) -> Resolution:
    return Resolution(stat, UNAVAILABLE, detail=why)


def _resolve_one(stat: Stat, facts: KernelFacts, match: Optional[TableMatch],
                 cgroup_version: int, page_size: int) -> Resolution:
    if stat.cgroup_version and stat.cgroup_version != cgroup_version:
        return _unavailable(stat, f"only on cgroup v{stat.cgroup_version}")
    scale = _scale(stat, page_size)
    item_value = facts.enums.get(stat.item, 0)

    if stat.kind == COUNTER:
        return Resolution(stat, VIA_FIELD, KIND_COUNTER, COUNTERS[stat.item], 0, 0,
                          page_size if stat.unit == BYTES else 1, "struct page_counter")
    if stat.item not in facts.enums:
        return _unavailable(stat, f"{stat.item} is not in this kernel's BTF")
    if stat.kind == MEMEVENT:
        if facts.memory_events_len is None or item_value >= facts.memory_events_len:
            return _unavailable(stat, "memory_events[] does not hold it")
        return Resolution(stat, VIA_ENUM, KIND_MEMEVENT, item_value, item_value, 0, 1,
                          "enum memcg_memory_event")
    if match is None:
        return _unavailable(stat, f"no item table for Linux {facts.release} and no kernel "
                                  f"tables in kallsyms")
    slots = match.state_slots if stat.kind == STATE else match.event_slots
    if stat.item not in slots:
        why = "; ".join(match.problems) or "not in the kernel's memcg item list"
        return _unavailable(stat, f"{stat.item}: {why} (table {match.table.release})")
    kind = KIND_STATE if stat.kind == STATE else KIND_EVENT
    flags = SPEC_SIGNED if stat.kind == STATE else 0
    return Resolution(stat, VIA_TABLE, kind, slots[stat.item], item_value, flags, scale,
                      f"table {match.table.release} (mm/memcontrol.c, checked against BTF)")
