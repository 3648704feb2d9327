"""Every stat pymemcg knows: its name, where the kernel keeps it, its unit.

Names are the cgroup v2 memory.stat keys, plus the page_counter values
(usage, peak, limit, failcnt, swap/memsw), the protections and limits
(memory.min ... memory.oom.group, v1's soft limit), the memory.events
counters, cgroup.stat's descendant counts and memory.pressure (PSI).
Sizes are bytes, events are counts, exactly as memory.stat prints them;
pressure is in memory.pressure's units (microseconds, hundredths of a
percent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

# where the kernel keeps a stat
STATE = "state"        # memcg_vmstats.state[] (enum node_stat_item / memcg_stat_item)
EVENT = "event"        # memcg_vmstats.events[] (enum vm_event_item)
MEMEVENT = "memevent"  # mem_cgroup.memory_events[] (enum memcg_memory_event)
COUNTER = "counter"    # a struct page_counter field
FIELD = "field"        # a scalar field of struct mem_cgroup or struct cgroup
PRESSURE = "pressure"  # the cgroup's struct psi_group (memory.pressure), cgroup v2
NUMA = "numa"          # a per-node value of memory.numa_stat (pymemcg.numa: "anon:N0")

BYTES = "bytes"
COUNT = "count"    # cumulative: a counter
NUMBER = "number"  # a count or a 0/1 setting as it is now: a gauge
MICROSECONDS = "microseconds"   # cumulative: pressure totals, as memory.pressure prints total=
PERCENT_X100 = "percent_x100"   # hundredths of a percent: pressure averages, avg10=5.23 is 523
PAGES = "pages"    # pages, as cgroup v1's memory.numa_stat prints them


@dataclass(frozen=True)
class Stat:
    """One stat: `item` is the kernel's enum name (or counter name)."""

    name: str
    kind: str
    item: str
    unit: str
    meaning: str
    v1_key: Optional[str] = None    # key in cgroup v1 memory.stat, if any
    v2_key: Optional[str] = None    # key in cgroup v2 memory.stat, if any
    cgroup_version: Optional[int] = None  # only meaningful on this version
    # the kernel's other names for the item, by release (tried after `item`)
    aliases: Tuple[str, ...] = ()
    # a limit or protection: the kernel's PAGE_COUNTER_MAX ("max" in a v2 file)
    # reads as pymemcg.MAX, no limit
    tunable: bool = False


def _state(name: str, item: str, meaning: str, v1: Optional[str] = None, v2: bool = True,
           unit: str = BYTES, aliases: Tuple[str, ...] = ()) -> Stat:
    return Stat(name, STATE, item, unit, meaning, v1, name if v2 else None, aliases=aliases)


def _event(name: str, item: str, meaning: str, v1: Optional[str] = None, v2: bool = True
           ) -> Stat:
    return Stat(name, EVENT, item, COUNT, meaning, v1, name if v2 else None)


def _counter(name: str, item: str, unit: str, meaning: str, version: Optional[int] = None
             ) -> Stat:
    return Stat(name, COUNTER, item, unit, meaning, cgroup_version=version)


def _memevent(name: str, item: str, meaning: str) -> Stat:
    return Stat(name, MEMEVENT, item, COUNT, meaning)


def _tunable(name: str, kind: str, item: str, meaning: str, version: Optional[int]) -> Stat:
    return Stat(name, kind, item, BYTES, meaning, cgroup_version=version, tunable=True)


# --- pressure (PSI) ---
#: memory.pressure's lines (some, full) and fields (total, avg10, avg60, avg300)
PRESSURE_LINES = ("some", "full")
PRESSURE_WINDOWS = ("avg10", "avg60", "avg300")
_PSI_MEANING = {"some": "at least one task stalled on memory",
                "full": "all non-idle tasks stalled on memory at once"}


def pressure_name(line: str, field: str) -> str:
    """The stat name of memory.pressure's `line` ("some"/"full") and `field`
    ("total", "avg10", ...): pressure_some_total_us, pressure_full_avg10_x100."""
    return f"pressure_{line}_{field}_us" if field == "total" else f"pressure_{line}_{field}_x100"


def _pressure() -> List[Stat]:
    # item: the enum psi_states entry of the line (PSI_MEM_SOME / PSI_MEM_FULL)
    out = []
    for line in PRESSURE_LINES:
        item = f"PSI_MEM_{line.upper()}"
        # the meanings leave the unit out: an exporter may give another
        # (Prometheus: seconds, a ratio)
        out.append(Stat(pressure_name(line, "total"), PRESSURE, item, MICROSECONDS,
                        f"time {_PSI_MEANING[line]} (memory.pressure {line} total=)",
                        cgroup_version=2))
        for window in PRESSURE_WINDOWS:
            out.append(Stat(pressure_name(line, window), PRESSURE, item, PERCENT_X100,
                            f"share of time with {_PSI_MEANING[line]}, running average "
                            f"over {window[3:]} s (memory.pressure {line} {window}=)",
                            cgroup_version=2))
    return out


_STATS = [
    # --- memory.stat sizes (mm/memcontrol.c memory_stats[]) ---
    _state("anon", "NR_ANON_MAPPED", "anonymous memory (mapped anon pages, tmpfs excluded)", "rss"),
    _state("file", "NR_FILE_PAGES", "page cache, including tmpfs/shmem", "cache"),
    _state("kernel", "MEMCG_KMEM", "kernel memory charged to the cgroup"),
    _state("kernel_stack", "NR_KERNEL_STACK_KB", "kernel stacks"),
    _state("pagetables", "NR_PAGETABLE", "page tables"),
    _state("sec_pagetables", "NR_SECONDARY_PAGETABLE", "secondary page tables (KVM, IOMMU)"),
    _state("percpu", "MEMCG_PERCPU_B", "per-cpu kernel allocations"),
    _state("sock", "MEMCG_SOCK", "network transmission buffers"),
    # Linux 7.1 made MEMCG_VMALLOC the node stat NR_VMALLOC
    _state("vmalloc", "MEMCG_VMALLOC", "vmalloc memory", aliases=("NR_VMALLOC",)),
    _state("shmem", "NR_SHMEM", "shared memory and tmpfs", "shmem"),
    _state("zswap", "MEMCG_ZSWAP_B", "memory of the zswap compression backend"),
    _state("zswapped", "MEMCG_ZSWAPPED", "memory swapped out to zswap"),
    _state("file_mapped", "NR_FILE_MAPPED", "page cache mapped into processes", "mapped_file"),
    _state("file_dirty", "NR_FILE_DIRTY", "dirty page cache", "dirty"),
    _state("file_writeback", "NR_WRITEBACK", "page cache under writeback", "writeback"),
    _state("swapcached", "NR_SWAPCACHE", "swap cached in memory", "swapcached"),
    _state("anon_thp", "NR_ANON_THPS", "anonymous transparent huge pages", "rss_huge"),
    _state("file_thp", "NR_FILE_THPS", "page cache in transparent huge pages"),
    _state("shmem_thp", "NR_SHMEM_THPS", "shmem in transparent huge pages"),
    _state("inactive_anon", "NR_INACTIVE_ANON", "inactive anonymous LRU", "inactive_anon"),
    _state("active_anon", "NR_ACTIVE_ANON", "active anonymous LRU", "active_anon"),
    _state("inactive_file", "NR_INACTIVE_FILE", "inactive file LRU", "inactive_file"),
    _state("active_file", "NR_ACTIVE_FILE", "active file LRU", "active_file"),
    _state("unevictable", "NR_UNEVICTABLE", "unevictable LRU", "unevictable"),
    _state("slab_reclaimable", "NR_SLAB_RECLAIMABLE_B", "reclaimable slab"),
    _state("slab_unreclaimable", "NR_SLAB_UNRECLAIMABLE_B", "unreclaimable slab"),
    _state("hugetlb", "NR_HUGETLB", "hugetlb pages"),
    _state("swap", "MEMCG_SWAP", "swap used (v1 memory.stat 'swap')", "swap", v2=False),
    # --- memory.stat counts kept in the state array ---
    _state("workingset_refault_anon", "WORKINGSET_REFAULT_ANON", "refaults of evicted anonymous pages",
           "workingset_refault_anon", unit=COUNT),
    _state("workingset_refault_file", "WORKINGSET_REFAULT_FILE", "refaults of evicted file pages",
           "workingset_refault_file", unit=COUNT),
    _state("workingset_activate_anon", "WORKINGSET_ACTIVATE_ANON", "refaulted anon pages activated at once",
           unit=COUNT),
    _state("workingset_activate_file", "WORKINGSET_ACTIVATE_FILE", "refaulted file pages activated at once",
           unit=COUNT),
    _state("workingset_restore_anon", "WORKINGSET_RESTORE_ANON", "restored anon pages that were active",
           unit=COUNT),
    _state("workingset_restore_file", "WORKINGSET_RESTORE_FILE", "restored file pages that were active",
           unit=COUNT),
    _state("workingset_nodereclaim", "WORKINGSET_NODERECLAIM", "shadow nodes reclaimed", unit=COUNT),
    _state("pgdemote_kswapd", "PGDEMOTE_KSWAPD", "pages demoted by kswapd", unit=COUNT),
    _state("pgdemote_direct", "PGDEMOTE_DIRECT", "pages demoted by direct reclaim", unit=COUNT),
    _state("pgdemote_khugepaged", "PGDEMOTE_KHUGEPAGED", "pages demoted by khugepaged", unit=COUNT),
    _state("pgdemote_proactive", "PGDEMOTE_PROACTIVE", "pages demoted by proactive reclaim", unit=COUNT),
    _state("pgpromote_success", "PGPROMOTE_SUCCESS", "pages promoted by NUMA balancing", unit=COUNT),
    # --- memory.stat events (mm/memcontrol.c memcg_vm_event_stat[]) ---
    _event("pgpgin", "PGPGIN", "pages charged (v1)", "pgpgin", v2=False),
    _event("pgpgout", "PGPGOUT", "pages uncharged (v1)", "pgpgout", v2=False),
    _event("pswpin", "PSWPIN", "pages swapped in"),
    _event("pswpout", "PSWPOUT", "pages swapped out"),
    _event("pgfault", "PGFAULT", "page faults", "pgfault"),
    _event("pgmajfault", "PGMAJFAULT", "major page faults", "pgmajfault"),
    _event("pgrefill", "PGREFILL", "pages scanned on the active LRU"),
    _event("pgscan_kswapd", "PGSCAN_KSWAPD", "pages scanned by kswapd"),
    _event("pgscan_direct", "PGSCAN_DIRECT", "pages scanned by direct reclaim"),
    _event("pgscan_khugepaged", "PGSCAN_KHUGEPAGED", "pages scanned by khugepaged"),
    _event("pgscan_proactive", "PGSCAN_PROACTIVE", "pages scanned by proactive reclaim"),
    _event("pgsteal_kswapd", "PGSTEAL_KSWAPD", "pages reclaimed by kswapd"),
    _event("pgsteal_direct", "PGSTEAL_DIRECT", "pages reclaimed by direct reclaim"),
    _event("pgsteal_khugepaged", "PGSTEAL_KHUGEPAGED", "pages reclaimed by khugepaged"),
    _event("pgsteal_proactive", "PGSTEAL_PROACTIVE", "pages reclaimed by proactive reclaim"),
    _event("pgactivate", "PGACTIVATE", "pages moved to the active LRU"),
    _event("pgdeactivate", "PGDEACTIVATE", "pages moved to the inactive LRU"),
    _event("pglazyfree", "PGLAZYFREE", "pages postponed to be freed (MADV_FREE)"),
    _event("pglazyfreed", "PGLAZYFREED", "lazyfree pages reclaimed"),
    _event("swpin_zero", "SWPIN_ZERO", "zero-filled pages swapped in without I/O"),
    _event("swpout_zero", "SWPOUT_ZERO", "zero-filled pages swapped out without I/O"),
    _event("zswpin", "ZSWPIN", "pages moved into memory from zswap"),
    _event("zswpout", "ZSWPOUT", "pages moved out of memory to zswap"),
    _event("zswpwb", "ZSWPWB", "pages written back from zswap to swap"),
    _event("thp_fault_alloc", "THP_FAULT_ALLOC", "transparent huge pages allocated on fault"),
    _event("thp_collapse_alloc", "THP_COLLAPSE_ALLOC", "transparent huge pages allocated by collapse"),
    _event("thp_swpout", "THP_SWPOUT", "transparent huge pages swapped out whole"),
    _event("thp_swpout_fallback", "THP_SWPOUT_FALLBACK", "transparent huge pages split before swap-out"),
    _event("numa_pages_migrated", "NUMA_PAGE_MIGRATE", "pages migrated by NUMA balancing"),
    _event("numa_pte_updates", "NUMA_PTE_UPDATES", "PTEs marked for NUMA hinting faults"),
    _event("numa_hint_faults", "NUMA_HINT_FAULTS", "NUMA hinting faults"),
    # --- page counters ---
    _counter("usage", "MEMORY_USAGE", BYTES, "memory in use (memory.current / memory.usage_in_bytes)"),
    _counter("peak", "MEMORY_PEAK", BYTES, "peak usage (memory.peak / memory.max_usage_in_bytes)"),
    _tunable("limit", COUNTER, "MEMORY_MAX", "limit (memory.max / memory.limit_in_bytes); "
             "pymemcg.MAX where none is set", None),
    _counter("failcnt", "MEMORY_FAILCNT", COUNT, "charges that hit the limit (v1 memory.failcnt)", 1),
    _counter("swap_usage", "SWAP_USAGE", BYTES, "swap in use (memory.swap.current)", 2),
    _counter("swap_peak", "SWAP_PEAK", BYTES, "peak swap usage (memory.swap.peak)", 2),
    _tunable("swap_limit", COUNTER, "SWAP_MAX", "swap limit (memory.swap.max)", 2),
    _counter("memsw_usage", "SWAP_USAGE", BYTES, "memory+swap in use (memory.memsw.usage_in_bytes)", 1),
    _counter("memsw_peak", "SWAP_PEAK", BYTES, "peak memory+swap (memory.memsw.max_usage_in_bytes)", 1),
    _tunable("memsw_limit", COUNTER, "SWAP_MAX", "memory+swap limit (memory.memsw.limit_in_bytes)",
             1),
    _counter("memsw_failcnt", "SWAP_FAILCNT", COUNT, "memory+swap limit hits (memory.memsw.failcnt)", 1),
    # --- memory.events ---
    _memevent("low", "MEMCG_LOW", "reclaims below memory.low (memory.events low)"),
    _memevent("high", "MEMCG_HIGH", "throttles above memory.high (memory.events high)"),
    _memevent("max", "MEMCG_MAX", "times usage hit the limit (memory.events max)"),
    _memevent("oom", "MEMCG_OOM", "OOM situations (memory.events oom)"),
    _memevent("oom_kill", "MEMCG_OOM_KILL", "processes killed by the OOM killer (memory.events oom_kill)"),
    _memevent("oom_group_kill", "MEMCG_OOM_GROUP_KILL", "group OOM kills (memory.events oom_group_kill)"),
    _memevent("swap_high_events", "MEMCG_SWAP_HIGH", "swap usage above swap.high (memory.swap.events high)"),
    _memevent("swap_max_events", "MEMCG_SWAP_MAX", "swap allocations over swap.max (memory.swap.events max)"),
    _memevent("swap_fail_events", "MEMCG_SWAP_FAIL", "failed swap allocations (memory.swap.events fail)"),
    # --- protections and limits, memory.events' newer counters, cgroup.stat,
    # --- zswap (appended: memory.min ... memory.oom.group, soft limit) ---
    _tunable("memory_min", COUNTER, "MEMORY_MIN", "hard protection (memory.min)", 2),
    _tunable("memory_low", COUNTER, "MEMORY_LOW", "best-effort protection (memory.low)", 2),
    _tunable("memory_high", COUNTER, "MEMORY_HIGH", "throttling limit (memory.high)", 2),
    _tunable("swap_high", COUNTER, "SWAP_HIGH", "swap throttling limit (memory.swap.high)", 2),
    _tunable("zswap_max", FIELD, "ZSWAP_MAX", "zswap limit (memory.zswap.max)", 2),
    _tunable("soft_limit", FIELD, "SOFT_LIMIT", "soft limit (v1 memory.soft_limit_in_bytes)", 1),
    Stat("oom_group", FIELD, "OOM_GROUP", NUMBER, "1 if the OOM killer kills the cgroup as a "
         "whole (memory.oom.group), else 0", cgroup_version=2),
    _memevent("sock_throttled", "MEMCG_SOCK_THROTTLED",
              "socket memory throttles (memory.events sock_throttled; Linux 6.19+)"),
    Stat("nr_descendants", FIELD, "NR_DESCENDANTS", NUMBER,
         "live descendant cgroups (cgroup.stat nr_descendants)"),
    Stat("nr_dying_descendants", FIELD, "NR_DYING_DESCENDANTS", NUMBER,
         "removed descendant cgroups not yet freed (cgroup.stat nr_dying_descendants)"),
    # the same kernel item as "zswap", printed by its own file
    Stat("zswap_current", STATE, "MEMCG_ZSWAP_B", BYTES,
         "memory of the zswap compression backend (memory.zswap.current)", cgroup_version=2),
    # --- pressure (PSI): memory.pressure ---
    *_pressure(),
]

STATS: Dict[str, Stat] = {s.name: s for s in _STATS}

#: the selection used when the caller names none
DEFAULT_STATS = ("usage", "limit", "anon", "file", "shmem", "kernel_stack", "pagetables",
                 "file_mapped", "file_dirty", "inactive_file", "active_file", "pgfault",
                 "pgmajfault", "oom_kill")

#: the limits and protections: PAGE_COUNTER_MAX reads as pymemcg.MAX
TUNABLES = frozenset(s.name for s in _STATS if s.tunable)

#: v1 memory.stat keys -> v2 names
V1_KEYS: Dict[str, str] = {s.v1_key: s.name for s in _STATS if s.v1_key}
