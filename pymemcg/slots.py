"""Layout resolution: which slot of which kernel array holds each stat.

Input is a set of facts about a kernel (kernel_probe.py: read from the
running kernel's BTF and kallsyms, from a vmlinux, or from a fixture);
output is one `Resolution` per stat: the spec the BPF program reads it by,
and how it was resolved, or why it is unavailable. Nothing here guesses: a
stat whose slot cannot be proven from the facts is unavailable.

Order, for the state[]/events[] arrays of struct memcg_vmstats:
  a. the kernel's own item lists, read from kernel memory through kallsyms;
  b. the release's lists in release_tables.py, accepted only when they match
     the kernel's BTF (enumerators present, array lengths);
  c. the layout alone, for a release without a table: where state[]'s BTF
     length is MEMCG_NR_STAT, state[] is indexed by enum value and each item
     memcg keeps has its enumerator as its slot (events[] stays unavailable);
  d. otherwise unavailable.
Where the kernel has the memcg kfuncs (Linux 7.0+), they replace all this.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from . import catalog
from .catalog import BYTES, COUNT, COUNTER, FIELD, MEMEVENT, PRESSURE, Stat
from .kernel_probe import EVENT_ENUMS, MEMCG_KFUNCS, RFC_KFUNCS, STATE_ENUMS, KernelFacts
from .release_tables import ENUM_INDEXED_STATE, TABLES, Entry, KernelTable

# enum pmc_stat_kind / enum pmc_counter / PMC_SPEC_* / enum pmc_kfuncs of
# bpf_src/memcg_record.h
from ._record_h import (KFUNCS_MEMCG, KFUNCS_NONE, KFUNCS_RFC, KIND_COUNTER, KIND_EVENT,
                        KIND_FIELD, KIND_MEMEVENT, KIND_NONE, KIND_STATE, SPEC_MEMCG_ITEM,
                        SPEC_SIGNED)
from ._record_h import KIND_PRESSURE, PSI_AVG, PSI_TOTAL  # pressure (PSI)
from .record_format import COUNTERS, FIELDS

BACKEND_KFUNC = "kfunc"
BACKEND_RFC = "rfc-kfunc"
BACKEND_CORE = "core"

# how a stat was resolved
VIA_KALLSYMS = "kallsyms"    # the kernel's own item lists, read from its memory
VIA_TABLE = "table"          # kernel_tables, checked against BTF
VIA_ENUM = "btf-enum"        # the slot is the enum value itself (memory_events[])
VIA_FIELD = "core-field"     # a struct field, relocated by CO-RE
VIA_KFUNC = "kfunc"          # asked by name through the memcg kfuncs
VIA_PSI = "core-psi"         # struct psi_group's arrays, indexed by BTF's psi enums
UNAVAILABLE = "unavailable"


def kfunc_family(facts: KernelFacts) -> int:
    """KFUNCS_MEMCG, KFUNCS_RFC or KFUNCS_NONE: which complete set BTF has."""
    if all(f in facts.kfuncs for f in MEMCG_KFUNCS):
        return KFUNCS_MEMCG
    if all(f in facts.kfuncs for f in RFC_KFUNCS):
        return KFUNCS_RFC
    return KFUNCS_NONE


def select_backend(facts: KernelFacts, local: bool = False) -> str:
    """The BPF backend this kernel calls for.

    The kfuncs answer hierarchical values only: local values stay on CO-RE.
    """
    family = kfunc_family(facts)
    if local or family == KFUNCS_NONE:
        return BACKEND_CORE
    return BACKEND_KFUNC if family == KFUNCS_MEMCG else BACKEND_RFC


@dataclass(frozen=True)
class Plan:
    """What the loader does on a kernel: the backend that resolves the
    stats, the programs it loads and the .rodata flags it sets."""

    backend: str                # BACKEND_*
    kfuncs: int                 # .rodata kfuncs (enum pmc_kfuncs)
    flush: bool                 # the sleepable, flushing programs
    tree_program: str
    single_program: str


def plan(facts: KernelFacts, local: bool = False, flush: bool = False) -> Plan:
    """The Plan for these BTF facts. flush=True on a kernel without a flush
    kfunc raises FlushUnavailable (a BpfUnavailable: auto falls back to text,
    whose memory.stat reads flush)."""
    from .errors import FlushUnavailable

    family = kfunc_family(facts)
    if flush and family == KFUNCS_NONE:
        raise FlushUnavailable(
            f"flush=True needs a kernel flush kfunc (Linux 7.0+ bpf_mem_cgroup_flush_stats, "
            f"or the RFC's memcg_flush_stats); Linux {facts.release} has neither: use "
            f"flush=False (values are then at most ~2 s old, the kernel's periodic flush) or "
            f"backend='text' (reading memory.stat flushes)")
    suffix = "_flush" if flush else ""
    return Plan(select_backend(facts, local), family, flush,
                "pmc_memcg_iter" + suffix, "pmc_memcg_iter_path" + suffix)


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
    """Item lists resolved against BTF facts: item name -> slot."""

    source: str                 # VIA_KALLSYMS or VIA_TABLE
    detail: str
    state_slots: Dict[str, int] = field(default_factory=dict)
    event_slots: Dict[str, int] = field(default_factory=dict)
    problems: Tuple[str, ...] = ()


def _flat(facts: KernelFacts, enums: Sequence[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for e in enums:
        out.update(facts.enums.get(e, {}))
    return out


def _present(entry: Entry, known: Mapping[str, int], facts: KernelFacts) -> bool:
    if entry.item not in known:
        return False
    return entry.if_enum is None or facts.has(entry.if_enum)


def _resolve_list(entries: Sequence[Entry], known: Mapping[str, int], facts: KernelFacts,
                  length: Optional[int], what: str) -> Tuple[Dict[str, int], Optional[str]]:
    """Slots of a compacted list, or why the list does not fit this kernel.

    Entries whose enumerator is missing are compiled out. Entries under an
    #ifdef that the enums do not reveal are tried both ways; exactly one way
    must give the array length that BTF reports.
    """
    if length is None:
        return {}, f"{what} array not in BTF"
    present = [e for e in entries if _present(e, known, facts)]
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


def match_table(facts: KernelFacts, tables: Mapping[str, KernelTable] = TABLES
                ) -> Optional[TableMatch]:
    """The release's built-in lists, with the slots BTF confirms."""
    table = tables.get(facts.release)
    if table is None:
        return None
    problems: List[str] = []
    states = _flat(facts, STATE_ENUMS)
    events_known = _flat(facts, EVENT_ENUMS)
    if table.state_layout == "compacted":
        state, why = _resolve_list(table.state_items, states, facts, facts.state_len, "state[]")
    else:  # by_enum: the slot is the enum value, for the items memcg keeps
        state, why = _by_enum_state(table.state_items, states, facts)
    if why:
        problems.append(why)
    if table.event_layout == "compacted":
        events, why = _resolve_list(table.event_items, events_known, facts, facts.events_len,
                                    "events[]")
    else:
        events = {e.item: events_known[e.item] for e in table.event_items
                  if _present(e, events_known, facts)
                  and events_known[e.item] < (facts.events_len or 0)}
        why = None if facts.events_len is not None else "events[] array not in BTF"
    if why:
        problems.append(why)
    detail = (f"table {table.release} (mm/memcontrol.c, checked against BTF)" if table.booted
              else f"table {table.release}, from source, not booted here (checked against BTF)")
    return TableMatch(VIA_TABLE, detail, state, events, tuple(problems))


def _by_enum_state(entries: Sequence[Entry], states: Mapping[str, int], facts: KernelFacts
                   ) -> Tuple[Dict[str, int], Optional[str]]:
    """Slots of an enum-indexed state[]: each listed item's enumerator."""
    nr = states.get("MEMCG_NR_STAT")
    if nr is None or not enum_indexed(facts):
        return {}, f"state[] has {facts.state_len} slots, MEMCG_NR_STAT is {nr}"
    return {e.item: states[e.item] for e in entries
            if _present(e, states, facts) and states[e.item] < nr}, None


def enum_indexed(facts: KernelFacts) -> bool:
    """Whether state[] is indexed by enum value: its BTF length is
    MEMCG_NR_STAT (kernels up to 6.10 by history; BTF decides)."""
    nr = _flat(facts, STATE_ENUMS).get("MEMCG_NR_STAT")
    return facts.state_len is not None and nr == facts.state_len


def match_layout(facts: KernelFacts, tables: Mapping[str, KernelTable] = TABLES
                 ) -> Optional[TableMatch]:
    """state[] slots from BTF alone, for a release without a table: where
    state[] is indexed by enum value, an item's slot is its enumerator, for
    the items memcg keeps in every such release (ENUM_INDEXED_STATE). Only
    events[] is compacted there, and needs the release's list."""
    if facts.release in tables or not enum_indexed(facts):
        return None
    state, _ = _by_enum_state(ENUM_INDEXED_STATE, _flat(facts, STATE_ENUMS), facts)
    nr = facts.state_len
    return TableMatch(VIA_ENUM, f"state[] indexed by enum value (BTF: state[{nr}], "
                                f"MEMCG_NR_STAT {nr}), no table needed", state, {},
                      (f"events[]: no item table for Linux {facts.release} and no kernel "
                       f"item lists in kallsyms",))


def match_kallsyms(facts: KernelFacts, tables: Mapping[str, KernelTable] = TABLES
                   ) -> Optional[TableMatch]:
    """The kernel's own lists, when kallsyms exposed them; cross-checked
    against the built-in table of the release where there is one."""
    if facts.kallsyms_state is None and facts.kallsyms_events is None:
        return None
    state: Dict[str, int] = {}
    events: Dict[str, int] = {}
    problems: List[str] = []
    for values, length, enums, out, what in (
            (facts.kallsyms_state, facts.state_len, STATE_ENUMS, state, "state"),
            (facts.kallsyms_events, facts.events_len, EVENT_ENUMS, events, "event")):
        if values is None:
            continue
        known = _flat(facts, enums)
        if len(values) != length:
            problems.append(f"kallsyms {what} list has {len(values)} items, BTF {length}")
        elif len(set(values)) != len(values) or not set(values) <= set(known.values()):
            problems.append(f"kallsyms {what} list holds values that are not distinct "
                            f"enumerators")
        else:
            slot_of = {v: i for i, v in enumerate(values)}
            out.update({name: slot_of[v] for name, v in known.items() if v in slot_of})
    detail = "the kernel's own item lists (kallsyms)"
    table = match_table(facts, tables)
    if table is not None and not table.problems:
        # enumerator aliases (NR_LRU_BASE...) share values: compare by the table's names
        agree = (not state or all(state.get(k) == v for k, v in table.state_slots.items())) \
            and (not events or all(events.get(k) == v for k, v in table.event_slots.items()))
        detail += (f"; built-in table {facts.release} agrees" if agree else
                   f"; built-in table {facts.release} DIFFERS (the kernel's lists win)")
    return TableMatch(VIA_KALLSYMS, detail, state, events, tuple(problems))


def _scale(stat: Stat, page_size: int) -> int:
    if stat.unit == COUNT:
        return 1
    if stat.item.endswith("_B"):
        return 1
    if stat.item == "NR_KERNEL_STACK_KB":
        return 1024
    return page_size


# --- pressure (PSI) ---
#: why pressure is unavailable on a cgroup v1 hierarchy
PSI_V1_WHY = ("cgroup v1 has no memory.pressure: the kernel accounts a task's pressure to its "
              "cgroup on the v2 hierarchy only (a v1 cgroup's psi group, where it has one, "
              "stays 0); /proc/pressure/memory is the system's")
PSI_OFF_WHY = ("PSI is off on this kernel (booted with psi=0, or built with "
               "CONFIG_PSI_DEFAULT_DISABLED and booted without psi=1): no "
               "/proc/pressure/memory, no memory.pressure")


def resolve_pressure(stat: Stat, facts: KernelFacts, cgroup_version: int,
                     psi_on: Optional[bool] = None) -> Resolution:
    """Where a pressure stat is in struct psi_group on this kernel, or why
    it is unavailable. psi_show prints total[PSI_AVGS][s] and avg[s][w]
    (s: PSI_MEM_SOME or PSI_MEM_FULL; w: 0, 1, 2 for avg10, avg60, avg300);
    BTF has both arrays flattened, so the item is the flat index, and the
    lengths BTF reports must be the products the enums give, or nothing is
    read. psi_on: whether the running kernel accounts pressure (None:
    unknown, as for a fixture; the program itself then finds no psi group
    where PSI is off)."""
    if cgroup_version != 2:
        return _unavailable(stat, PSI_V1_WHY)
    states = facts.enums.get("psi_states", {})
    aggregators = facts.enums.get("psi_aggregators", {})
    if not facts.cgroup_has_psi or facts.psi_total_len is None or facts.psi_avg_len is None \
            or stat.item not in states or "NR_PSI_STATES" not in states \
            or "PSI_AVGS" not in aggregators or "NR_PSI_AGGREGATORS" not in aggregators:
        return _unavailable(stat, "this kernel has no PSI (built without CONFIG_PSI: no "
                                  "struct psi_group, cgroup.psi or enum psi_states in BTF)")
    if psi_on is False:
        return _unavailable(stat, PSI_OFF_WHY)
    nr = states["NR_PSI_STATES"] - 1      # psi_group arrays leave out PSI_NONIDLE
    if facts.psi_total_len != aggregators["NR_PSI_AGGREGATORS"] * nr \
            or facts.psi_avg_len != nr * 3 or not 0 <= states[stat.item] < nr:
        return _unavailable(stat, f"struct psi_group's arrays (total[{facts.psi_total_len}], "
                                  f"avg[{facts.psi_avg_len}]) are not the shape its enums give "
                                  f"(NR_PSI_STATES {nr + 1}): layout not known")
    window = stat.name.split("_")[2]      # pressure_<line>_<total|avg10|...>_<unit>
    if window == "total":
        index = aggregators["PSI_AVGS"] * nr + states[stat.item]
        return Resolution(stat, VIA_PSI, KIND_PRESSURE, PSI_TOTAL, index, 0, 1,
                          f"psi_group.total[PSI_AVGS][{stat.item}] (ns, printed in us)")
    w = catalog.PRESSURE_WINDOWS.index(window)
    return Resolution(stat, VIA_PSI, KIND_PRESSURE, PSI_AVG, states[stat.item] * 3 + w, 0, 1,
                      f"psi_group.avg[{stat.item}][{w}] (fixed point, printed as a percentage)")


def resolve(names: Sequence[str], facts: KernelFacts, cgroup_version: int, page_size: int,
            tables: Mapping[str, KernelTable] = TABLES, local: bool = False,
            backend: Optional[str] = None, psi_on: Optional[bool] = None
            ) -> List[Resolution]:
    """One Resolution per name, in order. Unknown names raise UnknownStat.
    psi_on: whether the kernel accounts pressure (kernel_probe.psi_running()
    on the running one)."""
    from .errors import UnknownStat

    backend = backend or select_backend(facts, local)
    matches = [m for m in (match_kallsyms(facts, tables), match_table(facts, tables),
                           match_layout(facts, tables)) if m]
    out: List[Resolution] = []
    for name in names:
        stat = catalog.STATS.get(name)
        if stat is None:
            raise UnknownStat(f"unknown stat {name!r}: see pymemcg.stats() for the names "
                              f"this version knows")
        if stat.kind == PRESSURE:
            where = resolve_pressure(stat, facts, cgroup_version, psi_on)
            # a reason that holds whatever local= is (v1, PSI off) comes first
            out.append(where if not local or not where.available else
                       _unavailable(stat, "pressure is hierarchical only (memory.pressure): "
                                          "use local=False"))
            continue
        out.append(_resolve_one(stat, facts, matches, cgroup_version, page_size, local,
                                backend))
    return out


def _unavailable(stat: Stat, why: str) -> Resolution:
    return Resolution(stat, UNAVAILABLE, detail=why)


def _resolve_one(stat: Stat, facts: KernelFacts, matches: Sequence[TableMatch],
                 cgroup_version: int, page_size: int, local: bool, backend: str) -> Resolution:
    if stat.cgroup_version and stat.cgroup_version != cgroup_version:
        return _unavailable(stat, f"only on cgroup v{stat.cgroup_version}")
    scale = _scale(stat, page_size)

    if stat.kind == COUNTER:
        # bpf_mem_cgroup_usage() answers memory usage in bytes; no kfunc
        # serves the other page-counter fields, so CO-RE reads them
        if backend == BACKEND_KFUNC and stat.item == "MEMORY_USAGE":
            return Resolution(stat, VIA_KFUNC, KIND_COUNTER, COUNTERS[stat.item], 0, 0, 1,
                              "bpf_mem_cgroup_usage")
        return Resolution(stat, VIA_FIELD, KIND_COUNTER, COUNTERS[stat.item], 0, 0,
                          page_size if stat.unit == BYTES else 1, "struct page_counter")
    if stat.kind == FIELD:
        return _resolve_field(stat, facts, page_size)
    item = next((n for n in (stat.item,) + stat.aliases if facts.has(n)), None)
    if item is None:
        return _unavailable(stat, f"{' or '.join((stat.item,) + stat.aliases)} is not in "
                                  f"this kernel's BTF")
    if item != stat.item:  # renamed in this release: resolve it by its name here
        stat = dataclasses.replace(stat, item=item)
    enum = facts.enum_of(item)
    value = facts.value(stat.item) or 0

    if backend == BACKEND_RFC and stat.kind != MEMEVENT:
        # The RFC's fetchers answer 0, not "untracked", for an item memcg
        # does not keep: only items the CO-RE tables prove are asked for.
        core = _resolve_one(stat, facts, matches, cgroup_version, page_size, local,
                            BACKEND_CORE)
        if not core.available:
            return core
        return Resolution(stat, VIA_KFUNC, core.kind, core.slot, value,
                          SPEC_MEMCG_ITEM if enum == "memcg_stat_item" else 0, 1,
                          f"enum {enum} through the RFC's memcg_*_fetch kfuncs "
                          f"(tracked per {core.via}: {core.detail})")

    if backend == BACKEND_KFUNC:
        # asked by enum value; the kernel answers in memory.stat's unit, and
        # says (unsigned long)-1 for what it does not track. Linux 7.1 moved
        # PGSCAN*/PGSTEAL*/PGREFILL into node_stat_item: the enum decides.
        if stat.kind == MEMEVENT:
            kind = KIND_MEMEVENT
        else:
            kind = KIND_STATE if enum in STATE_ENUMS else KIND_EVENT
        # bpf_mem_cgroup_page_state() returns memcg_page_state_output():
        # already in memory.stat's unit, so no scale
        return Resolution(stat, VIA_KFUNC, kind, 0, value, 0, 1,
                          f"enum {enum} through the memcg kfuncs")

    if stat.kind == MEMEVENT:
        if facts.memory_events_len is None or value >= facts.memory_events_len:
            return _unavailable(stat, "memory_events[] does not hold it")
        return Resolution(stat, VIA_ENUM, KIND_MEMEVENT, value, value, 0, 1,
                          "enum memcg_memory_event")
    # the enum decides the array: Linux 7.1 moved PGSCAN*/PGSTEAL*/PGREFILL
    # from vm_event_item (events[]) into node_stat_item (state[])
    in_state = enum in STATE_ENUMS
    if local:
        length = facts.state_local_len if in_state else facts.events_local_len
        if length is None:
            return _unavailable(stat, "this kernel keeps local values per CPU only "
                                      "(no state_local[]/events_local[]); use local=False")
    if not matches:
        return _unavailable(stat, f"no item table for Linux {facts.release} and no kernel "
                                  f"item lists in kallsyms")
    problems: List[str] = []
    for match in matches:
        slots = match.state_slots if in_state else match.event_slots
        if stat.item in slots:
            kind = KIND_STATE if in_state else KIND_EVENT
            flags = SPEC_SIGNED if in_state else 0
            return Resolution(stat, match.source, kind, slots[stat.item], value, flags, scale,
                              match.detail)
        problems.extend(match.problems)
    why = "; ".join(problems) or "the kernel does not keep it per memcg"
    return _unavailable(stat, f"{stat.item}: {why}")


#: where each FIELD stat's value is (enum pmc_field name -> "struct.member")
FIELD_MEMBERS = {"SOFT_LIMIT": "mem_cgroup.soft_limit", "ZSWAP_MAX": "mem_cgroup.zswap_max",
                 "OOM_GROUP": "mem_cgroup.oom_group", "NR_DESCENDANTS": "cgroup.nr_descendants",
                 "NR_DYING_DESCENDANTS": "cgroup.nr_dying_descendants"}


def _resolve_field(stat: Stat, facts: KernelFacts, page_size: int) -> Resolution:
    """A scalar field of struct mem_cgroup / struct cgroup, read by CO-RE on
    every backend (no kfunc serves one). The program reads it only where
    the kernel's BTF has it; where the facts say which fields BTF has
    (a live kernel, not an old fixture), a missing one is unavailable here."""
    member = FIELD_MEMBERS[stat.item]
    if facts.fields is not None and member not in facts.fields:
        return _unavailable(stat, f"struct {member.replace('.', ' has no ')} in this kernel's "
                                  f"BTF")
    return Resolution(stat, VIA_FIELD, KIND_FIELD, FIELDS[stat.item], 0, 0,
                      page_size if stat.unit == BYTES else 1, f"struct {member}")
