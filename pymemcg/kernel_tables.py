"""Where each kernel release keeps each memcg item: its item lists.

Before Linux 7.0 the kernel gives BPF no way to ask for a memcg stat by
name; the stats sit in `struct memcg_vmstats` arrays, at slots given by
static lists in mm/memcontrol.c that are in neither BTF nor (on most
kernels) kallsyms. This module holds those lists, copied from each release's
mm/memcontrol.c, with their #ifdefs.

A table is only trusted when it matches the running kernel's BTF (see
layout.py): an entry whose #ifdef also shapes the kernel's enums is present
exactly when its enumerator exists; an entry whose #ifdef leaves the enums
alone (`config=`) is resolved by the array length in BTF, and a table that
does not match that length in exactly one way is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Entry:
    item: str
    config: Optional[str] = None  # an #ifdef the enums do not reveal


@dataclass(frozen=True)
class KernelTable:
    release: str            # "6.18": the major.minor it describes
    source: str             # where the lists were copied from
    state_layout: str       # "compacted": state[i] holds state_items[i]; "by_enum": state[enum value]
    event_layout: str       # "compacted" or "by_enum"
    state_items: Tuple[Entry, ...] = ()
    event_items: Tuple[Entry, ...] = ()


def _entries(*names: str, config: Optional[str] = None) -> Tuple[Entry, ...]:
    return tuple(Entry(n, config) for n in names)


# Linux 6.18, mm/memcontrol.c: memcg_node_stat_items[] followed by
# memcg_stat_items[] (the compacted state[] since 6.10), and
# memcg_vm_event_stat[] (the compacted events[] since 6.1).
# NR_SWAPCACHE (CONFIG_SWAP), PGPROMOTE_SUCCESS (CONFIG_NUMA_BALANCING) and
# NR_HUGETLB (CONFIG_HUGETLB_PAGE) exist in enum node_stat_item under the same
# #ifdefs; SWPIN_ZERO/SWPOUT_ZERO (SWAP), ZSWP* (ZSWAP), THP_* (THP) and NUMA_*
# (NUMA_BALANCING) likewise in enum vm_event_item. PGPGIN/PGPGOUT are listed
# only under CONFIG_MEMCG_V1, which the enum does not show.
LINUX_6_18 = KernelTable(
    release="6.18",
    source="Linux 6.18 mm/memcontrol.c memcg_node_stat_items[], memcg_stat_items[], "
           "memcg_vm_event_stat[] (read from a linux-6.18.y tree, commit 312d9602fe3e)",
    state_layout="compacted",
    event_layout="compacted",
    state_items=_entries(
        "NR_INACTIVE_ANON", "NR_ACTIVE_ANON", "NR_INACTIVE_FILE", "NR_ACTIVE_FILE",
        "NR_UNEVICTABLE", "NR_SLAB_RECLAIMABLE_B", "NR_SLAB_UNRECLAIMABLE_B",
        "WORKINGSET_REFAULT_ANON", "WORKINGSET_REFAULT_FILE", "WORKINGSET_ACTIVATE_ANON",
        "WORKINGSET_ACTIVATE_FILE", "WORKINGSET_RESTORE_ANON", "WORKINGSET_RESTORE_FILE",
        "WORKINGSET_NODERECLAIM", "NR_ANON_MAPPED", "NR_FILE_MAPPED", "NR_FILE_PAGES",
        "NR_FILE_DIRTY", "NR_WRITEBACK", "NR_SHMEM", "NR_SHMEM_THPS", "NR_FILE_THPS",
        "NR_ANON_THPS", "NR_KERNEL_STACK_KB", "NR_PAGETABLE", "NR_SECONDARY_PAGETABLE",
        "NR_SWAPCACHE", "PGPROMOTE_SUCCESS", "PGDEMOTE_KSWAPD", "PGDEMOTE_DIRECT",
        "PGDEMOTE_KHUGEPAGED", "PGDEMOTE_PROACTIVE", "NR_HUGETLB",
        # memcg_stat_items[]
        "MEMCG_SWAP", "MEMCG_SOCK", "MEMCG_PERCPU_B", "MEMCG_VMALLOC", "MEMCG_KMEM",
        "MEMCG_ZSWAP_B", "MEMCG_ZSWAPPED",
    ),
    event_items=_entries("PGPGIN", "PGPGOUT", config="MEMCG_V1") + _entries(
        "PSWPIN", "PSWPOUT",
        "PGSCAN_KSWAPD", "PGSCAN_DIRECT", "PGSCAN_KHUGEPAGED", "PGSCAN_PROACTIVE",
        "PGSTEAL_KSWAPD", "PGSTEAL_DIRECT", "PGSTEAL_KHUGEPAGED", "PGSTEAL_PROACTIVE",
        "PGFAULT", "PGMAJFAULT", "PGREFILL", "PGACTIVATE", "PGDEACTIVATE",
        "PGLAZYFREE", "PGLAZYFREED",
        "SWPIN_ZERO", "SWPOUT_ZERO",
        "ZSWPIN", "ZSWPOUT", "ZSWPWB",
        "THP_FAULT_ALLOC", "THP_COLLAPSE_ALLOC", "THP_SWPOUT", "THP_SWPOUT_FALLBACK",
        "NUMA_PAGE_MIGRATE", "NUMA_PTE_UPDATES", "NUMA_HINT_FAULTS",
    ),
)

TABLES: Dict[str, KernelTable] = {t.release: t for t in (LINUX_6_18,)}
