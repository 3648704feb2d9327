"""bpffs: where shared pins live. Readers need none (their links are fds)."""

from __future__ import annotations

import ctypes
import errno
import os

from .errors import BpfUnavailable, PermissionDenied

BPFFS = "/sys/fs/bpf"


def is_bpffs(path: str) -> bool:
    """Whether a bpffs is mounted exactly at path."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == path and right.split()[0] == "bpf":
                return True
    return False


def ensure_bpffs() -> None:
    """Mount bpffs at /sys/fs/bpf if nothing is mounted there."""
    if is_bpffs(BPFFS):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    # mode=0700: bpffs defaults to a world-writable sticky root, where any
    # user could make the pin directory before root does
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        cls = PermissionDenied if err in (errno.EPERM, errno.EACCES) else BpfUnavailable
        raise cls(f"bpffs is not mounted at {BPFFS} and mounting it failed "
                  f"({os.strerror(err)}): run as root or `mount -t bpf bpf {BPFFS}`")
