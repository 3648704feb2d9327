"""`pymemcg doctor`: which backend works on this host, why, and what to fix.

Each check looks at one thing (kernel, BTF, kfuncs, item tables, privileges,
bpffs, cgroups, each backend tried for real, the stats served) and says ok,
info, warn or fail, with a remedy where there is one."""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

from .. import __version__, catalog
from ..cgroupfs import Mount, locate_own_memory_cgroup, memory_mount
from ..errors import Error
from ..reader import Reader, StatInfo, stats as list_stats
from .format import Style, colour_wanted, human_bytes, isatty, kernel_release
from .running import EXIT_DEGRADED, EXIT_OK, EXIT_USAGE

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
MIN_ITER_KERNEL = (6, 1)
#: bpf(2)'s number per machine, and the commands the probes use
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
BPF_BTF_GET_NEXT_ID = 23
BPF_NO_SUCH_COMMAND = 0x7fff
#: since 6.5 the kernel checks privileges per command, so a command it does
#: not know fails EINVAL for anyone: an EPERM for one came from outside it
PER_COMMAND_CHECKS = (6, 5)
LOCKDOWN = "/sys/kernel/security/lockdown"
UNIT = "packaging/systemd/pymemcg-export.service"
CAPABILITY_REMEDY = (
    "give the process CAP_SYS_ADMIN (systemd: AmbientCapabilities=CAP_SYS_ADMIN and "
    "CapabilityBoundingSet=CAP_SYS_ADMIN, as " + UNIT + " does; Kubernetes: capabilities "
    "add [\"SYS_ADMIN\"]), or run as root: CAP_BPF and CAP_PERFMON are not enough, since "
    "libbpf resolves the program's kernel symbols by walking the kernel's BTF objects "
    "(BPF_BTF_GET_NEXT_ID), which only CAP_SYS_ADMIN may do")


@dataclass
class Check:
    name: str
    status: str          # ok, info, warn, fail
    detail: str
    remedy: str = ""
    data: Dict[str, Any] = field(default_factory=dict)


def _kernel_version(release: str) -> Tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _check_kernel(release: str) -> Check:
    if _kernel_version(release) >= MIN_ITER_KERNEL:
        return Check("kernel", "ok", f"Linux {release}: has cgroup iterators (6.1+)")
    return Check("kernel", "fail", f"Linux {release}: cgroup iterators came in 6.1",
                 "run a 6.1+ kernel for the BPF backend; the text backend works on any kernel")


def _check_btf() -> Check:
    btf = "/sys/kernel/btf/vmlinux"
    if os.path.exists(btf):
        return Check("btf", "ok", f"{btf} ({human_bytes(os.path.getsize(btf))})")
    if os.path.isdir("/sys/kernel"):
        return Check("btf", "fail", f"{btf} is missing: the kernel exposes no BTF",
                     "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution "
                     "kernels since 2021 are)")
    return Check("btf", "fail", f"{btf} is missing, and so is /sys/kernel: sysfs is not "
                 f"mounted here", "mount sysfs at /sys (a container runtime's own /sys has "
                 "the kernel's BTF; do not hide it)")


def _check_kfuncs() -> Check:
    """The memcg kfuncs (Linux 7.0+) in the kernel's BTF, and the BPF flavour they make."""
    from .. import slots
    try:
        from ..kernel_probe import MEMCG_KFUNCS, kernel_facts
        facts = kernel_facts()
    except Exception as e:  # no BTF, extension missing, ...
        return Check("memcg kfuncs", "warn",
                     f"cannot read the kernel's BTF: {' '.join(str(e).split())}",
                     "see the btf line")
    flavour = slots.select_backend(facts)
    have = [k for k in MEMCG_KFUNCS if k in facts.kfuncs]
    missing = [k for k in MEMCG_KFUNCS if k not in facts.kfuncs]
    if not missing:
        return Check("memcg kfuncs", "ok", f"all {len(have)} present (Linux 7.0+); BPF flavour: "
                     f"{flavour or 'kfunc'}; Reader(flush=True) works here",
                     data={"present": have, "flavour": flavour})
    if not have:
        return Check("memcg kfuncs", "info",
                     f"none of the {len(missing)} (bpf_get_mem_cgroup, "
                     f"bpf_mem_cgroup_page_state, ...): they came in Linux 7.0",
                     "nothing to do: the CO-RE backend reads struct mem_cgroup directly instead",
                     data={"present": [], "missing": missing, "flavour": flavour})
    return Check("memcg kfuncs", "warn",
                 f"{len(have)} of {len(MEMCG_KFUNCS)}; missing {', '.join(missing)}",
                 "nothing to do: the CO-RE backend does not need them",
                 data={"present": have, "missing": missing, "flavour": flavour})


def _check_item_tables(infos: List[StatInfo]) -> Check:
    """Where the memory.stat items (state[]/events[] slots) come from."""
    from ..kernel_probe import KALLSYMS_TABLES, kallsyms_lists
    kallsyms = kallsyms_lists()
    if kallsyms is None:
        ks = "/proc/kallsyms is unreadable"
    elif kallsyms:
        ks = f"/proc/kallsyms names {', '.join(kallsyms)}"
    else:
        ks = (f"/proc/kallsyms has no {', '.join(KALLSYMS_TABLES)} (static data, listed only "
              f"with CONFIG_KALLSYMS_ALL=y)")
    items = [s for s in infos if s.name in catalog.STATS
             and catalog.STATS[s.name].kind in (catalog.STATE, catalog.EVENT)]
    through_bpf = [s for s in items if s.available and s.backend == "bpf"]
    vias: Dict[str, int] = {}
    for s in through_bpf:
        how_one = s.via.split(": ", 1)[-1]   # "table: table 6.18 (...)" -> "table 6.18 (...)"
        vias[how_one] = vias.get(how_one, 0) + 1
    how = "; ".join(f"{n} by {via}" for via, n in sorted(vias.items(), key=lambda kv: -kv[1]))
    data = {"kallsyms": kallsyms, "through_bpf": len(through_bpf), "items": len(items),
            "via": vias}
    if through_bpf:
        return Check("item tables", "ok", f"{len(through_bpf)} of {len(items)} memory.stat "
                     f"items through BPF ({how}); {ks}", data=data)
    why = next((s.via for s in items), "")
    return Check("item tables", "warn",
                 f"no memory.stat item is readable through BPF ({why}); {ks}",
                 "through BPF only page counters and memory.events are served here: use "
                 "backend='text' for memory.stat sizes and events, or add this release's lists "
                 "to pymemcg/release_tables.py", data=data)


def _status_field(name: str) -> Optional[str]:
    """A field of /proc/self/status ("Seccomp", "NoNewPrivs", ...)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.strip()
    except OSError:
        pass
    return None


def bpf_probe(cmd: int, attr: bytes = b"") -> int:
    """bpf(cmd, attr): 0 on success, else the errno. A command the kernel does
    not know (BPF_NO_SUCH_COMMAND) fails EINVAL once the call reaches the
    kernel's BPF code: any other answer came from in front of it (a seccomp
    filter, a security module, or before 6.5 a missing privilege)."""
    nr = BPF_SYSCALL.get(platform.machine())
    if nr is None:
        return errno.ENOSYS
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(attr, max(len(attr), 1))
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    # neither command makes a file descriptor: nothing to close
    return 0 if ret >= 0 else ctypes.get_errno()


def _errname(code: int) -> str:
    return errno.errorcode.get(code, str(code)) if code else "no error"


def _privileges() -> Dict[str, Any]:
    caps = _effective_caps()
    has = {name: bool(caps >> bit & 1) for name, bit in
           (("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))}
    seccomp = _status_field("Seccomp")
    return {"euid": os.geteuid(), **has,
            "seccomp": int(seccomp) if seccomp and seccomp.isdigit() else None,
            "seccomp_filters": _status_field("Seccomp_filters"),
            "no_new_privs": _status_field("NoNewPrivs"),
            "bpf_call": bpf_probe(BPF_NO_SUCH_COMMAND),
            # what libbpf needs CAP_SYS_ADMIN for: start_id, next_id, open_flags
            "btf_walk": bpf_probe(BPF_BTF_GET_NEXT_ID, bytes(12))}


def _bpf_refused_in_front(p: Dict[str, Any], release: str) -> Optional[bool]:
    """Whether something in front of the kernel's BPF code refuses bpf(2):
    True, False, or None when a missing privilege would give the same answer."""
    if p["bpf_call"] == errno.EINVAL:
        return False
    if _kernel_version(release) >= PER_COMMAND_CHECKS or p["CAP_SYS_ADMIN"] or p["CAP_BPF"]:
        return True
    return None


def _check_privileges(p: Dict[str, Any]) -> Check:
    has = ", ".join(n for n in ("CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON") if p[n]) or \
        "none of CAP_SYS_ADMIN/CAP_BPF/CAP_PERFMON"
    unpriv = _read_int("/proc/sys/kernel/unprivileged_bpf_disabled")
    detail = f"euid {p['euid']}, capabilities: {has}; kernel.unprivileged_bpf_disabled={unpriv}"
    data = {k: p[k] for k in ("euid", "CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON")}
    if p["CAP_SYS_ADMIN"]:
        return Check("privileges", "ok", detail, data=data)
    return Check("privileges", "fail", detail + "; without CAP_SYS_ADMIN libbpf cannot walk the "
                 "kernel's BTF objects", CAPABILITY_REMEDY, data=data)


def _check_seccomp(p: Dict[str, Any], release: str) -> Check:
    mode = p["seccomp"]
    data = {"mode": mode, "filters": p["seccomp_filters"], "bpf_call": _errname(p["bpf_call"])}
    refused = _bpf_refused_in_front(p, release)
    if not mode:
        if refused:
            return Check("seccomp", "fail", f"no seccomp filter, yet bpf(2) is refused "
                         f"({_errname(p['bpf_call'])}) before the kernel's BPF code",
                         "a security module refuses it (SELinux, AppArmor: see the audit log); "
                         "allow bpf for this program there", data=data)
        return Check("seccomp", "ok", "no seccomp filter", data=data)
    filtered = f"seccomp filter ({p['seccomp_filters'] or 'some'} filters)"
    if refused is False:
        return Check("seccomp", "ok", f"{filtered}: bpf(2) is allowed", data=data)
    if refused is None:
        return Check("seccomp", "warn", f"{filtered}; bpf(2) fails {_errname(p['bpf_call'])}, "
                     f"which the missing privilege explains too: whether the filter allows it "
                     f"shows once the process has CAP_SYS_ADMIN",
                     "see privileges: container runtimes' default seccomp profiles allow bpf(2) "
                     "only to a container holding CAP_SYS_ADMIN", data=data)
    return Check("seccomp", "fail", f"{filtered} refuses bpf(2) ({_errname(p['bpf_call'])})",
                 "the container runtimes' default seccomp profiles (Docker, podman, containerd: "
                 "RuntimeDefault) allow bpf(2) only to a container holding CAP_SYS_ADMIN: add "
                 "SYS_ADMIN to its capabilities (CAP_BPF does not open it), or give it a profile "
                 "that allows bpf; under systemd add bpf to SystemCallFilter= (@system-service "
                 "lacks it), as " + UNIT + " does", data=data)


def _check_lockdown() -> Check:
    """The kernel's lockdown: confidentiality forbids BPF to read kernel memory."""
    try:
        with open(LOCKDOWN) as f:
            text = f.read().strip()
    except OSError as e:
        return Check("lockdown", "info", f"{LOCKDOWN}: {e.strerror} (no lockdown security "
                     f"module, or securityfs is not mounted here): cannot tell",
                     data={"mode": None})
    m = re.search(r"\[(\w+)\]", text)
    mode = m.group(1) if m else text
    if mode == "confidentiality":
        return Check("lockdown", "fail", f"the kernel is locked down ({mode}): BPF programs may "
                     f"not read kernel memory (bpf_probe_read_kernel), which this one does",
                     "boot with lockdown=integrity or none (Secure Boot may set confidentiality "
                     "through the distribution's kernel); the text backend works meanwhile",
                     data={"mode": mode})
    return Check("lockdown", "ok", f"lockdown {mode}: BPF may read kernel memory",
                 data={"mode": mode})


def _check_kallsyms() -> Check:
    """Whether /proc/kallsyms can be read. pymemcg's programs do not need it:
    none has a typeless __ksym extern (which libbpf resolves by reading it),
    and the kernel's item lists are looked up by name inside the kernel."""
    try:
        with open("/proc/kallsyms", "rb") as f:
            f.read(64)
    except OSError as e:
        return Check("kallsyms", "info", f"/proc/kallsyms cannot be read ({e.strerror}, as "
                     f"systemd's ProtectKernelTunables=yes leaves it): pymemcg does not need "
                     f"it (the kernel looks its item lists up by name)",
                     data={"readable": False})
    return Check("kallsyms", "ok", "/proc/kallsyms is readable", data={"readable": True})


def _check_bpffs() -> Check:
    """Only shared pins need bpffs; a Reader's own links are fds."""
    from ..bpffs import BPFFS, is_bpffs
    from ..pins import SHARED_PIN_DIR
    try:
        mounted = is_bpffs(BPFFS)
    except OSError:
        mounted = False
    if not mounted:
        return Check("bpffs", "ok", f"nothing mounted at {BPFFS}: Readers need none; "
                     f"`pymemcg pin` (shared pins) mounts it as root", data={"mounted": False})
    try:
        pins = len(os.listdir(SHARED_PIN_DIR))
    except OSError:
        pins = 0
    writable = os.access(BPFFS, os.W_OK)
    return Check("bpffs", "ok", f"mounted at {BPFFS}{'' if writable else ' read-only'}; {pins} "
                 f"shared pins in {SHARED_PIN_DIR}",
                 data={"mounted": True, "pins": pins, "writable": writable})


def _check_cgroup(mount: Optional[Mount]) -> Check:
    if mount is None:
        return Check("cgroup", "fail", "no cgroup hierarchy has the memory controller",
                     "mount cgroup v2 with the memory controller enabled, or v1 with -o memory")
    own, how = locate_own_memory_cgroup()
    data = {"version": mount.version, "mountpoint": mount.mountpoint, "mount_root": mount.root,
            "own": own, "how": how}
    where = f"v{mount.version}, memory controller at {mount.mountpoint}"
    if own is None:
        return Check("cgroup", "warn", f"{where}; which cgroup this process is in cannot be "
                     f"told: {how}", data=data)
    said = "" if how == "/proc/self/cgroup" else f" ({how})"
    return Check("cgroup", "ok", f"{where}; this process is in {own}{said}", data=data)


def _check_backends(mount: Optional[Mount]) -> Tuple[List[Check], Dict[str, Optional[str]]]:
    """Each backend tried for real on this process's cgroup; backend -> why it
    failed (None: it works)."""
    checks: List[Check] = []
    backends: Dict[str, Optional[str]] = {}
    # this process's cgroup, or where that cannot be told the hierarchy's root
    target = (locate_own_memory_cgroup()[0] or mount.mountpoint) if mount is not None else None
    for backend in ("bpf", "text"):
        if target is None:
            backends[backend] = "no memory cgroup to read"
            continue
        try:
            with Reader(stats=["usage", "anon", "pgfault"], backend=backend,
                        shared_pins=False) as r:
                r.read(target)
                start = time.perf_counter()
                r.read(target)
                took = time.perf_counter() - start
                method = r.read_method
            backends[backend] = None
            checks.append(Check(f"{backend} backend", "ok",
                                f"read {target} in {took * 1e6:.0f} us ({method})",
                                data={"read_method": method}))
        except Error as e:
            msg = " ".join(str(e).split("\n--- verifier log")[0].split())
            backends[backend] = msg
            checks.append(Check(f"{backend} backend", "fail", msg,
                                "see the lines above" if backend == "bpf" else ""))
    return checks, backends


def _check_stats(infos: List[StatInfo], bpf_works: bool, mount: Optional[Mount]) -> Check:
    """How many stats this host gets, and through which backend."""
    by = {"bpf": [s.name for s in infos if s.available and s.backend == "bpf"],
          "text": [s.name for s in infos if s.available and s.backend == "text"],
          "unavailable": [s.name for s in infos if not s.available]}
    why = {s.name: s.via for s in infos if not s.available}
    if bpf_works:
        detail = (f"{len(by['bpf'])} served through BPF (`pymemcg verify` compares them with "
                  f"the kernel's files), {len(by['text'])} through memory.stat text only, "
                  f"{len(by['unavailable'])} unavailable here")
        status = "ok" if by["bpf"] else "warn"
    else:
        # BPF does not load: what the text backend serves is what this host gets
        from ..memory_stat import printed_keys, text_availability
        version_here = mount.version if mount is not None else 2
        keys = printed_keys(mount.mountpoint) if mount is not None else None
        text_ok = [s.name for s in infos
                   if text_availability(s.name, version_here, False, keys)[0]]
        by["unavailable"] = [s.name for s in infos if s.name not in text_ok]
        detail = (f"{len(text_ok)} through memory.stat text (BPF does not load here; it would "
                  f"serve {len(by['bpf'])}), {len(by['unavailable'])} unavailable")
        by["bpf"], by["text"] = [], text_ok
        status = "warn"
    if by["unavailable"]:
        names = by["unavailable"]
        detail += f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
    return Check("stats", status, detail,
                 "`pymemcg stats` lists each stat and why" if by["unavailable"] else "",
                 data={**by, "why": why})


def doctor_checks() -> Tuple[List[Check], Dict[str, Any]]:
    """Everything `pymemcg doctor` looks at, and a summary."""
    release = kernel_release()
    infos = list_stats()
    mount = memory_mount()
    privileges = _privileges()
    checks = [_check_kernel(release), _check_btf(), _check_kfuncs(), _check_item_tables(infos),
              _check_privileges(privileges), _check_seccomp(privileges, release),
              _check_lockdown(), _check_kallsyms(), _check_bpffs(), _check_cgroup(mount)]
    tried, backends = _check_backends(mount)
    checks += tried
    checks.append(_check_stats(infos, backends.get("bpf") is None, mount))
    works = "bpf" if backends.get("bpf") is None else "text" if backends.get("text") is None \
        else None
    summary = {"version": __version__, "kernel": release, "backend": works,
               "cgroup_version": mount.version if mount else None,
               "backend_errors": {k: v for k, v in backends.items() if v}}
    return checks, summary


def _wrapper(out: TextIO, indent: str) -> Callable[[str], str]:
    """On a terminal, wrap text to its width under `indent`; elsewhere one line each."""
    if not isatty(out):
        return lambda text: text
    import shutil
    import textwrap
    width = max(shutil.get_terminal_size().columns - len(indent), 30)

    def wrap(text: str) -> str:
        return ("\n" + indent).join(textwrap.wrap(text, width, break_on_hyphens=False)) or text
    return wrap


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    checks, summary = doctor_checks()
    status = EXIT_OK if summary["backend"] == "bpf" else \
        EXIT_DEGRADED if summary["backend"] == "text" else EXIT_USAGE
    if args.format == "json":
        json.dump({**summary, "checks": [{"name": c.name, "status": c.status, "detail": c.detail,
                                          "remedy": c.remedy, **({"data": c.data} if c.data else {})}
                                         for c in checks]}, out, indent=2)
        out.write("\n")
        return status
    style = Style(colour_wanted(out, args.color))
    colours = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "red"}
    out.write(style(f"pymemcg {__version__} doctor", "bold") +
              f": Linux {summary['kernel']}, cgroup v{summary['cgroup_version']}\n\n")
    name_w = max(len(c.name) for c in checks)
    indent = " " * (2 + 5 + 1 + name_w + 2)
    wrap = _wrapper(out, indent)
    for c in checks:
        tag = style(f"{c.status:<5}", colours[c.status], "bold")
        out.write(f"  {tag} {c.name:<{name_w}}  {wrap(c.detail)}\n")
        if c.remedy and c.status != "ok":
            out.write(f"{indent}{wrap('-> ' + c.remedy)}\n")
    out.write("\n")
    if summary["backend"] == "bpf":
        out.write(style("verdict: the BPF backend works here", "green", "bold") +
                  "; Reader(backend=\"auto\") uses it.\n")
    elif summary["backend"] == "text":
        out.write(style("verdict: BPF does not work here", "yellow", "bold") +
                  f" ({summary['backend_errors'].get('bpf')}); Reader(backend=\"auto\") falls "
                  f"back to memory.stat text with a FallbackWarning.\n")
    else:
        out.write(style("verdict: no backend works here", "red", "bold") + "; see above.\n")
    return status
