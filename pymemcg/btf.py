"""Facts about the running kernel, read from its BTF through the shim."""

from __future__ import annotations

import os
from typing import Dict, Optional

from .errors import NoBtf
from .layout import ENUMS, MEMCG_KFUNCS, RFC_KFUNCS, KernelFacts

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


def _lib():
    from ._pymemcg import ffi, lib
    return ffi, lib


def read_kernel_facts(release: str, path: Optional[str] = None) -> KernelFacts:
    """KernelFacts of the running kernel (path=None) or of a BTF file."""
    if path is None and not os.path.exists(VMLINUX_BTF):
        raise NoBtf(f"this kernel has no BTF ({VMLINUX_BTF} is missing): the BPF backend "
                    f"needs a kernel built with CONFIG_DEBUG_INFO_BTF=y; use backend='text'")
    ffi, lib = _lib()
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
        return KernelFacts(
            release=release,
            enums=enums,
            state_len=array_len("memcg_vmstats", "state"),
            events_len=array_len("memcg_vmstats", "events"),
            memory_events_len=array_len("mem_cgroup", "memory_events"),
            state_local_len=array_len("memcg_vmstats", "state_local"),
            events_local_len=array_len("memcg_vmstats", "events_local"),
            kfuncs=kfuncs,
        )
    finally:
        lib.pmc_btf_close(btf)
