"""Where each kernel release keeps each memcg item: its item lists.

Before Linux 7.0 the kernel gives BPF no way to ask for a memcg stat by
name; the stats sit in `struct memcg_vmstats` arrays, at slots given by
static lists in mm/memcontrol.c that are in neither BTF nor (on most
kernels) kallsyms. This module holds those lists, copied from each release's
mm/memcontrol.c, with their #ifdefs.

A table is only trusted when it matches the running kernel's BTF (see
slots.py): an entry whose #ifdef also shapes the kernel's enums is present
exactly when its enumerator exists; an entry whose #ifdef leaves the enums
alone (`config=`) is resolved by the array length in BTF, and a table that
does not match that length in exactly one way is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Entry:
    item: str
    config: Optional[str] = None   # an #ifdef the enums do not reveal
    if_enum: Optional[str] = None  # present only where this enumerator exists


@dataclass(frozen=True)
class KernelTable:
    release: str            # "6.18": the major.minor it describes
    source: str             # where the lists were copied from
    # "compacted": state[i] holds state_items[i]; "by_enum": state[enum value],
    # which needs no list (slots.py resolves it from BTF alone)
    state_layout: str
    event_layout: str       # "compacted" or "by_enum"
    # compacted: the list, in slot order; by_enum: the items memcg tracks
    # and memory.stat shows (the rest of state[] is never updated per memcg)
    state_items: Tuple[Entry, ...] = ()
    event_items: Tuple[Entry, ...] = ()
    has_local_arrays: bool = True   # state_local[]/events_local[] (6.2+)
    booted: bool = True     # False: read from source only, no kernel of it was booted here


def _entries(*names: str, config: Optional[str] = None) -> Tuple[Entry, ...]:
    return tuple(Entry(n, config) for n in names)


# memcg_node_stat_items[] from its start to NR_ANON_THPS, the same 6.10 to 7.3
_NODE_HEAD = _entries(
    "NR_INACTIVE_ANON", "NR_ACTIVE_ANON", "NR_INACTIVE_FILE", "NR_ACTIVE_FILE",
    "NR_UNEVICTABLE", "NR_SLAB_RECLAIMABLE_B", "NR_SLAB_UNRECLAIMABLE_B",
    "WORKINGSET_REFAULT_ANON", "WORKINGSET_REFAULT_FILE", "WORKINGSET_ACTIVATE_ANON",
    "WORKINGSET_ACTIVATE_FILE", "WORKINGSET_RESTORE_ANON", "WORKINGSET_RESTORE_FILE",
    "WORKINGSET_NODERECLAIM", "NR_ANON_MAPPED", "NR_FILE_MAPPED", "NR_FILE_PAGES",
    "NR_FILE_DIRTY", "NR_WRITEBACK", "NR_SHMEM", "NR_SHMEM_THPS", "NR_FILE_THPS",
    "NR_ANON_THPS")
# memcg_vm_event_stat[] from SWPIN_ZERO to its end, the same 6.12 to 7.3;
# SWPIN_ZERO/SWPOUT_ZERO (CONFIG_SWAP), ZSWP* (ZSWAP), THP_* (THP) and NUMA_*
# (NUMA_BALANCING) exist in enum vm_event_item under the same #ifdefs
_EVENTS_TAIL = _entries(
    "SWPIN_ZERO", "SWPOUT_ZERO",
    "ZSWPIN", "ZSWPOUT", "ZSWPWB",
    "THP_FAULT_ALLOC", "THP_COLLAPSE_ALLOC", "THP_SWPOUT", "THP_SWPOUT_FALLBACK",
    "NUMA_PAGE_MIGRATE", "NUMA_PTE_UPDATES", "NUMA_HINT_FAULTS",
)

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
    state_items=_NODE_HEAD + _entries(
        "NR_KERNEL_STACK_KB", "NR_PAGETABLE", "NR_SECONDARY_PAGETABLE",
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
    ) + _EVENTS_TAIL,
)

# Linux 6.12 (Debian linux-source-6.12 6.12.117-1~deb12u1, mm/memcontrol.c
# lines 277-323 and 416-454). Debian's cloud kernel builds it without
# CONFIG_MEMCG_V1 and CONFIG_ZSWAP.
LINUX_6_12 = KernelTable(
    release="6.12",
    source="Linux 6.12.117 mm/memcontrol.c memcg_node_stat_items[], memcg_stat_items[], "
           "memcg_vm_event_stat[] (Debian linux-source-6.12 6.12.117-1~deb12u1)",
    state_layout="compacted",
    event_layout="compacted",
    state_items=_NODE_HEAD + _entries(
        "NR_KERNEL_STACK_KB", "NR_PAGETABLE", "NR_SECONDARY_PAGETABLE",
        "NR_SWAPCACHE", "PGPROMOTE_SUCCESS", "PGDEMOTE_KSWAPD", "PGDEMOTE_DIRECT",
        "PGDEMOTE_KHUGEPAGED",
        "MEMCG_SWAP", "MEMCG_SOCK", "MEMCG_PERCPU_B", "MEMCG_VMALLOC", "MEMCG_KMEM",
        "MEMCG_ZSWAP_B", "MEMCG_ZSWAPPED",
    ),
    event_items=_entries("PGPGIN", "PGPGOUT", config="MEMCG_V1") + _entries(
        "PGSCAN_KSWAPD", "PGSCAN_DIRECT", "PGSCAN_KHUGEPAGED",
        "PGSTEAL_KSWAPD", "PGSTEAL_DIRECT", "PGSTEAL_KHUGEPAGED",
        "PGFAULT", "PGMAJFAULT", "PGREFILL", "PGACTIVATE", "PGDEACTIVATE",
        "PGLAZYFREE", "PGLAZYFREED",
    ) + _EVENTS_TAIL,
)

# Where state[] is indexed by enum value (state[MEMCG_NR_STAT], up to 6.10),
# every item's slot is its enumerator, and memcg keeps the items that
# memory_stats[] and memcg1_stats[] print: the same in 6.1 (Debian
# linux-source-6.1 6.1.192-2, mm/memcontrol.c lines 1472 and 4035) and 6.8
# (below); the zswap ones only with CONFIG_ZSWAP, which the ZSWPIN enumerator
# reveals (Debian's 6.1 has none: MEMCG_ZSWAP_B exists but is never updated).
ENUM_INDEXED_STATE: Tuple[Entry, ...] = _entries(
    "NR_ANON_MAPPED", "NR_FILE_PAGES", "MEMCG_KMEM", "NR_KERNEL_STACK_KB", "NR_PAGETABLE",
    "NR_SECONDARY_PAGETABLE", "MEMCG_PERCPU_B", "MEMCG_SOCK", "MEMCG_VMALLOC", "NR_SHMEM",
    "NR_FILE_MAPPED", "NR_FILE_DIRTY", "NR_WRITEBACK", "NR_SWAPCACHE",
    "NR_ANON_THPS", "NR_FILE_THPS", "NR_SHMEM_THPS",
    "NR_INACTIVE_ANON", "NR_ACTIVE_ANON", "NR_INACTIVE_FILE", "NR_ACTIVE_FILE",
    "NR_UNEVICTABLE", "NR_SLAB_RECLAIMABLE_B", "NR_SLAB_UNRECLAIMABLE_B",
    "WORKINGSET_REFAULT_ANON", "WORKINGSET_REFAULT_FILE", "WORKINGSET_ACTIVATE_ANON",
    "WORKINGSET_ACTIVATE_FILE", "WORKINGSET_RESTORE_ANON", "WORKINGSET_RESTORE_FILE",
    "WORKINGSET_NODERECLAIM", "MEMCG_SWAP",
) + (Entry("MEMCG_ZSWAP_B", if_enum="ZSWPIN"), Entry("MEMCG_ZSWAPPED", if_enum="ZSWPIN"))

# Linux 6.1 (Debian linux-source-6.1 6.1.192-2, mm/memcontrol.c): state[] by
# enum value; events[] is compacted through memcg_vm_event_stat[] (line 659).
# There are no state_local[]/events_local[]: local values are per-CPU sums.
LINUX_6_1 = KernelTable(
    release="6.1",
    source="Linux 6.1.192 mm/memcontrol.c memory_stats[], memcg1_stats[], "
           "memcg_vm_event_stat[] (Debian linux-source-6.1 6.1.192-2)",
    state_layout="by_enum",
    event_layout="compacted",
    state_items=ENUM_INDEXED_STATE,
    event_items=_entries(
        "PGPGIN", "PGPGOUT", "PGSCAN_KSWAPD", "PGSCAN_DIRECT", "PGSTEAL_KSWAPD",
        "PGSTEAL_DIRECT", "PGFAULT", "PGMAJFAULT", "PGREFILL", "PGACTIVATE", "PGDEACTIVATE",
        "PGLAZYFREE", "PGLAZYFREED", "ZSWPIN", "ZSWPOUT", "THP_FAULT_ALLOC",
        "THP_COLLAPSE_ALLOC",
    ),
    has_local_arrays=False,
)

# Linux 6.8 (Ubuntu 24.04's base), mm/memcontrol.c memory_stats[] (the same
# items as 6.1's) and memcg_vm_event_stat[], read
# from a stored copy of an Ubuntu 24.04 kernel tree (Makefile 6.8.12): no
# Debian kernel of this series exists to boot, so the table is only trusted
# where BTF matches it. state[] is sized MEMCG_NR_STAT (by enum value);
# state_local[]/events_local[] exist. ZSWPIN/ZSWPOUT/ZSWPWB are listed under
# CONFIG_MEMCG_KMEM && CONFIG_ZSWAP: the enumerators show ZSWAP, the length
# MEMCG_KMEM.
LINUX_6_8 = KernelTable(
    release="6.8",
    source="Linux 6.8.12 mm/memcontrol.c memory_stats[], memcg_vm_event_stat[] (an Ubuntu "
           "24.04 kernel "
           "tree at commit ed9533cf3b0a), from source, not booted here",
    state_layout="by_enum",
    event_layout="compacted",
    state_items=ENUM_INDEXED_STATE,
    event_items=_entries(
        "PGPGIN", "PGPGOUT", "PGSCAN_KSWAPD", "PGSCAN_DIRECT", "PGSCAN_KHUGEPAGED",
        "PGSTEAL_KSWAPD", "PGSTEAL_DIRECT", "PGSTEAL_KHUGEPAGED", "PGFAULT", "PGMAJFAULT",
        "PGREFILL", "PGACTIVATE", "PGDEACTIVATE", "PGLAZYFREE", "PGLAZYFREED",
    ) + _entries("ZSWPIN", "ZSWPOUT", "ZSWPWB", config="MEMCG_KMEM") + _entries(
        "THP_FAULT_ALLOC", "THP_COLLAPSE_ALLOC", "THP_SWPOUT", "THP_SWPOUT_FALLBACK",
    ),
    booted=False,
)

# Linux 6.17 and 6.19 keep 6.18's lists unchanged (Debian's orig tarballs
# linux_6.17.8 and linux_6.19.11: memcg_node_stat_items[], memcg_stat_items[]
# and memcg_vm_event_stat[] read line by line, the same items, #ifdefs and order).
LINUX_6_17 = dataclasses.replace(
    LINUX_6_18, release="6.17",
    source="Linux 6.17.8 mm/memcontrol.c memcg_node_stat_items[], memcg_stat_items[], "
           "memcg_vm_event_stat[] (Debian linux_6.17.8.orig.tar.xz; as in 6.18)")
# No source of 6.16 or 7.0 is in Debian's registry (their tarballs are
# missing from the pool). Their lists are taken to be those of the next and
# previous release because the booted kernels' own lists (read through
# kallsyms) put every stat pymemcg serves at the slot these tables give,
# hierarchical and local (66 stats on 6.16.12, 69 local ones on 7.0.13);
# slots.py still checks them against each kernel's BTF.
LINUX_6_16 = dataclasses.replace(
    LINUX_6_18, release="6.16",
    source="6.17's lists: Debian has no 6.16 source; the booted 6.16.12's own lists "
           "(kallsyms) matched them slot for slot for all 66 stats served")
LINUX_6_19 = dataclasses.replace(
    LINUX_6_18, release="6.19",
    source="Linux 6.19.11 mm/memcontrol.c memcg_node_stat_items[], memcg_stat_items[], "
           "memcg_vm_event_stat[] (Debian linux_6.19.11.orig.tar.xz; as in 6.18)")
LINUX_7_0 = dataclasses.replace(
    LINUX_6_19, release="7.0",
    source="6.19's lists: Debian has no 7.0 source; the booted 7.0.13's own lists "
           "(kallsyms) matched them slot for slot for all 69 local stats served")

# Linux 7.1 moved PGSCAN*/PGSTEAL*/PGREFILL from the events into
# node_stat_item (and memcg_node_stat_items[]), NR_VMALLOC replaced
# MEMCG_VMALLOC, and MEMCG_ZSWAP_INCOMP joined memcg_stat_items[]
# (Debian linux_7.1.13.orig.tar.xz; linux-source-7.2 7.2.12-1~bpo13+1 has the
# same lists).
_NODE_7_1_MID = _entries(
    "NR_VMALLOC", "NR_KERNEL_STACK_KB", "NR_PAGETABLE", "NR_SECONDARY_PAGETABLE",
    "NR_SWAPCACHE", "PGPROMOTE_SUCCESS", "PGDEMOTE_KSWAPD", "PGDEMOTE_DIRECT",
    "PGDEMOTE_KHUGEPAGED", "PGDEMOTE_PROACTIVE",
    "PGSTEAL_KSWAPD", "PGSTEAL_DIRECT", "PGSTEAL_KHUGEPAGED", "PGSTEAL_PROACTIVE",
    "PGSTEAL_ANON", "PGSTEAL_FILE",
    "PGSCAN_KSWAPD", "PGSCAN_DIRECT", "PGSCAN_KHUGEPAGED", "PGSCAN_PROACTIVE",
    "PGSCAN_ANON", "PGSCAN_FILE")
_MEMCG_7_1 = _entries(
    "MEMCG_SWAP", "MEMCG_SOCK", "MEMCG_PERCPU_B", "MEMCG_KMEM", "MEMCG_ZSWAP_B",
    "MEMCG_ZSWAPPED", "MEMCG_ZSWAP_INCOMP")
_EVENTS_7_1 = _entries("PGPGIN", "PGPGOUT", config="MEMCG_V1") + _entries(
    "PSWPIN", "PSWPOUT", "PGFAULT", "PGMAJFAULT", "PGACTIVATE", "PGDEACTIVATE",
    "PGLAZYFREE", "PGLAZYFREED",
) + _EVENTS_TAIL
LINUX_7_1 = KernelTable(
    release="7.1",
    source="Linux 7.1.13 mm/memcontrol.c memcg_node_stat_items[], memcg_stat_items[], "
           "memcg_vm_event_stat[] (Debian linux_7.1.13.orig.tar.xz)",
    state_layout="compacted",
    event_layout="compacted",
    state_items=_NODE_HEAD + _NODE_7_1_MID + _entries("PGREFILL", "NR_HUGETLB")
    + _MEMCG_7_1,
    event_items=_EVENTS_7_1,
)
LINUX_7_2 = dataclasses.replace(
    LINUX_7_1, release="7.2",
    source="Linux 7.2.12 mm/memcontrol.c memcg_node_stat_items[], memcg_stat_items[], "
           "memcg_vm_event_stat[] (Debian linux-source-7.2 7.2.12-1~bpo13+1; as in 7.1)")
# Linux 7.3 adds NR_VMSCAN_WRITE and PGROTATE_ANON/PGROTATE_FILE to
# memcg_node_stat_items[] (Debian linux-source-7.3 7.3.4-1~bpo13+1)
LINUX_7_3 = KernelTable(
    release="7.3",
    source="Linux 7.3.4 mm/memcontrol.c memcg_node_stat_items[], memcg_stat_items[], "
           "memcg_vm_event_stat[] (Debian linux-source-7.3 7.3.4-1~bpo13+1)",
    state_layout="compacted",
    event_layout="compacted",
    state_items=_NODE_HEAD + _entries("NR_VMSCAN_WRITE") + _NODE_7_1_MID
    + _entries("PGROTATE_ANON", "PGROTATE_FILE", "PGREFILL", "NR_HUGETLB") + _MEMCG_7_1,
    event_items=_EVENTS_7_1,
)

TABLES: Dict[str, KernelTable] = {t.release: t for t in (
    LINUX_6_1, LINUX_6_8, LINUX_6_12, LINUX_6_16, LINUX_6_17, LINUX_6_18, LINUX_6_19,
    LINUX_7_0, LINUX_7_1, LINUX_7_2, LINUX_7_3)}
