"""Facts about a kernel that slot resolution needs, and how they are read.

From BTF (through the shim): the memcg enums, the lengths of the arrays in
struct memcg_vmstats and struct mem_cgroup, and which memcg kfuncs exist.
From kernel memory, where /proc/kallsyms lists them (CONFIG_KALLSYMS_ALL):
the kernel's own item lists, copied out by a one-shot BPF program. Facts can
also be read from a vmlinux file or a JSON fixture (tools/capture_facts.py),
so that resolution is tested over kernels other than the running one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple

from . import forksafe
from .errors import NoBtf

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
STATE_ENUMS = ("node_stat_item", "memcg_stat_item")
EVENT_ENUMS = ("vm_event_item",)
# --- pressure (PSI): include/linux/psi_types.h ---
PSI_ENUMS = ("psi_states", "psi_aggregators")
ENUMS = STATE_ENUMS + EVENT_ENUMS + ("memcg_memory_event",) + PSI_ENUMS
#: exists where the kernel accounts pressure (CONFIG_PSI=y and not booted
#: with psi=0: kernel/sched/psi.c psi_proc_init makes /proc/pressure then only)
PROC_PRESSURE_MEMORY = "/proc/pressure/memory"

#: Linux 7.0+ mm/bpf_memcontrol.c
MEMCG_KFUNCS = ("bpf_get_mem_cgroup", "bpf_put_mem_cgroup", "bpf_mem_cgroup_page_state",
                "bpf_mem_cgroup_vm_events", "bpf_mem_cgroup_memory_events",
                "bpf_mem_cgroup_usage", "bpf_mem_cgroup_flush_stats")
#: the seed's RFC patch (never merged; kernels that carry it take struct cgroup *)
RFC_KFUNCS = ("memcg_stat_fetch", "memcg_node_stat_fetch", "memcg_vm_event_fetch",
              "memcg_flush_stats")
#: the kernel's static item lists (mm/memcontrol.c), in kallsyms with CONFIG_KALLSYMS_ALL
KALLSYMS_TABLES = ("memcg_node_stat_items", "memcg_stat_items", "memcg_vm_event_stat")

#: the scalar fields the FIELD stats read ("struct.member"): which of them a
#: kernel's BTF has is a fact (KernelFacts.fields)
FIELD_FACTS = ("mem_cgroup.soft_limit", "mem_cgroup.zswap_max", "mem_cgroup.oom_group",
               "cgroup.nr_descendants", "cgroup.nr_dying_descendants")

#: set to 0 to resolve without the kernel's kallsyms lists (built-in tables alone)
KALLSYMS_ENV = "PYMEMCG_KALLSYMS"


@dataclass(frozen=True)
class KernelFacts:
    """What resolution needs to know about a kernel: BTF, and kallsyms lists."""

    release: str                                     # "6.18"
    enums: Mapping[str, Mapping[str, int]]           # enum type -> enumerator -> value
    state_len: Optional[int]                         # len(memcg_vmstats.state)
    events_len: Optional[int]                        # len(memcg_vmstats.events)
    memory_events_len: Optional[int]                 # len(mem_cgroup.memory_events)
    state_local_len: Optional[int] = None            # None: no state_local[] (< 6.2)
    events_local_len: Optional[int] = None
    kfuncs: FrozenSet[str] = frozenset()
    # the kernel's own lists (kallsyms), as enum values in slot order
    kallsyms_state: Optional[Tuple[int, ...]] = None
    kallsyms_events: Optional[Tuple[int, ...]] = None
    # which of FIELD_FACTS BTF has ("mem_cgroup.zswap_max"); None: not captured
    fields: Optional[FrozenSet[str]] = None
    # --- pressure (PSI) ---
    # struct psi_group's arrays as BTF has them (flattened): total[] is
    # [NR_PSI_AGGREGATORS][NR_PSI_STATES - 1] u64 ns, avg[] is
    # [NR_PSI_STATES - 1][3] fixed point; None: not in BTF (CONFIG_PSI=n)
    psi_total_len: Optional[int] = None
    psi_avg_len: Optional[int] = None
    cgroup_has_psi: bool = False                     # struct cgroup has `psi`
    # the address of psi_system (the v2 root's psi group), from kallsyms like
    # the lists; 0: not listed. Of this boot only: never compared nor saved.
    psi_system: int = dataclasses.field(default=0, compare=False)
    # --- NUMA: struct lruvec_stats (a memcg's per-node stats), None: not in
    # BTF, or not captured (older fixtures) ---
    lruvec_state_len: Optional[int] = None
    lruvec_state_local_len: Optional[int] = None

    def value(self, name: str) -> Optional[int]:
        for values in self.enums.values():
            if name in values:
                return values[name]
        return None

    def enum_of(self, name: str) -> Optional[str]:
        for enum, values in self.enums.items():
            if name in values:
                return enum
        return None

    def has(self, name: str) -> bool:
        return self.enum_of(name) is not None


def release_of(uname_release: str) -> str:
    """'6.18.44-fc-v657' -> '6.18'."""
    m = re.match(r"(\d+)\.(\d+)", uname_release)
    return f"{m.group(1)}.{m.group(2)}" if m else uname_release


def read_btf_facts(release: str, path: Optional[str] = None) -> KernelFacts:
    """KernelFacts from the running kernel's BTF (path=None) or a vmlinux/BTF
    file; no kallsyms lists."""
    if path is None and not os.path.exists(VMLINUX_BTF):
        raise NoBtf(f"this kernel has no BTF ({VMLINUX_BTF} is missing): the BPF backend "
                    f"needs a kernel built with CONFIG_DEBUG_INFO_BTF=y; use backend='text'")
    from .binding import load
    ffi, lib = load()
    handle = ffi.new("struct pmc_btf **")
    rc = lib.pmc_btf_open(path.encode() if path else ffi.NULL, handle)
    if rc < 0:
        raise NoBtf(f"cannot load BTF ({os.strerror(-rc)}): the BPF backend needs the "
                    f"kernel's BTF; use backend='text'")
    btf = handle[0]
    try:
        enums: Dict[str, Dict[str, int]] = {}
        buf = ffi.new("char[]", 1 << 16)
        for name in ENUMS:
            n = lib.pmc_btf_enum(btf, name.encode(), buf, len(buf))
            if n < 0:
                continue
            values = enums[name] = {}
            for line in ffi.string(buf, n).decode().splitlines():
                key, value = line.split()
                values[key] = int(value)

        def array_len(struct: str, member: str) -> Optional[int]:
            size = lib.pmc_btf_member_size(btf, struct.encode(), member.encode())
            return size // 8 if size >= 0 else None

        kfuncs = frozenset(f for f in MEMCG_KFUNCS + RFC_KFUNCS
                           if lib.pmc_btf_has_func(btf, f.encode()))
        fields = frozenset(f for f in FIELD_FACTS
                           if lib.pmc_btf_member_size(btf, *(p.encode() for p in f.split("."))) >= 0)
        return KernelFacts(
            release=release,
            enums=enums,
            state_len=array_len("memcg_vmstats", "state"),
            events_len=array_len("memcg_vmstats", "events"),
            memory_events_len=array_len("mem_cgroup", "memory_events"),
            state_local_len=array_len("memcg_vmstats", "state_local"),
            events_local_len=array_len("memcg_vmstats", "events_local"),
            kfuncs=kfuncs,
            fields=fields,
            psi_total_len=array_len("psi_group", "total"),
            psi_avg_len=array_len("psi_group", "avg"),
            cgroup_has_psi=array_len("cgroup", "psi") is not None,
            lruvec_state_len=array_len("lruvec_stats", "state"),
            lruvec_state_local_len=array_len("lruvec_stats", "state_local"),
        )
    finally:
        lib.pmc_btf_close(btf)


def kallsyms_lists() -> Optional[List[str]]:
    """Which of KALLSYMS_TABLES /proc/kallsyms names (None: unreadable)."""
    try:
        with open("/proc/kallsyms", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return [n for n in KALLSYMS_TABLES
            if re.search(rb" " + n.encode() + rb"(\t.*)?$", data, re.M) is not None]


def with_kernel_lists(facts: KernelFacts) -> KernelFacts:
    """Add the kernel's own item lists where it has their symbols (Debian's
    kernels: CONFIG_KALLSYMS_ALL), copied out by a one-shot BPF program that
    looks them up by name (not by reading /proc/kallsyms, which makes the
    kernel write its whole symbol table as text). Without privileges, or
    without the symbols, the facts stay as they are."""
    if os.geteuid() != 0:
        return facts
    memcg_items = sorted(v for k, v in facts.enums.get("memcg_stat_item", {}).items()
                         if k != "MEMCG_NR_STAT")
    state_n = (facts.state_len or 0) - len(memcg_items)
    events_n = facts.events_len or 0
    if state_n <= 0 and events_n <= 0:
        return facts
    from .binding import load
    ffi, lib = load()
    state = ffi.new("unsigned int[256]")
    events = ffi.new("unsigned int[256]")
    got_s, got_e = ffi.new("unsigned int *"), ffi.new("unsigned int *")
    psi_system = ffi.new("unsigned long long *")
    rc = lib.pmc_read_kernel_tables(max(state_n, 0), max(events_n, 0), state, events, got_s,
                                    got_e, psi_system)
    if rc < 0:
        return facts
    # memcg_stat_items[] follows the node items in state[]: MEMCG_SWAP..
    # in enum order in every release that compacts state[] (6.10+)
    kstate = tuple(state[i] for i in range(got_s[0])) + tuple(memcg_items) \
        if got_s[0] else None
    kevents = tuple(events[i] for i in range(got_e[0])) if got_e[0] else None
    return dataclasses.replace(facts, kallsyms_state=kstate, kallsyms_events=kevents,
                               psi_system=psi_system[0])


def kallsyms_enabled() -> bool:
    return os.environ.get(KALLSYMS_ENV, "1") not in ("0", "")


_lock = threading.Lock()
forksafe.renew_in_child(sys.modules[__name__], "_lock")
_cache: Dict[bool, KernelFacts] = {}


def kernel_facts() -> KernelFacts:
    """The running kernel's facts, read once per process: BTF, and the
    kernel's own item lists unless PYMEMCG_KALLSYMS=0."""
    use_kallsyms = kallsyms_enabled()
    with _lock:
        facts = _cache.get(use_kallsyms)
        if facts is None:
            facts = read_btf_facts(release_of(os.uname().release))
            if use_kallsyms:
                facts = with_kernel_lists(facts)
            _cache[use_kallsyms] = facts
        return facts


def facts_to_json(facts: KernelFacts) -> Dict[str, Any]:
    doc = dataclasses.asdict(facts)
    doc["kfuncs"] = sorted(facts.kfuncs)
    if facts.fields is not None:
        doc["fields"] = sorted(facts.fields)
    del doc["psi_system"]   # an address of one boot
    return doc


def facts_from_json(doc: Mapping[str, Any]) -> KernelFacts:
    fields = {f.name for f in dataclasses.fields(KernelFacts)}
    kw = {k: v for k, v in doc.items() if k in fields}
    kw["kfuncs"] = frozenset(kw.get("kfuncs", ()))
    if kw.get("fields") is not None:
        kw["fields"] = frozenset(kw["fields"])
    for k in ("kallsyms_state", "kallsyms_events"):
        if kw.get(k) is not None:
            kw[k] = tuple(kw[k])
    return KernelFacts(**kw)


def psi_running() -> bool:
    """Whether the running kernel accounts pressure: CONFIG_PSI=y and not
    booted with psi=0 (nor with CONFIG_PSI_DEFAULT_DISABLED and no psi=1).
    kernel/sched/psi.c makes /proc/pressure only then."""
    return os.path.exists(PROC_PRESSURE_MEMORY)
