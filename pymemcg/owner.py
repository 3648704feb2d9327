"""Who owns a Reader's pins, and when they are stale.

Each process that pins links for a Reader makes a lock directory
`owner-<pid>-<token>` in the pin directory (on bpffs), keeps it open and
holds an flock on it for as long as it runs, and names its pins
`v<format>-<digest>-<token>-<cgroup id>-<order>-<pid>`. The kernel drops the
lock when the last descriptor of that open file goes: the Reader was closed
or the process died (a forked child closes its inherited copy at fork). So a
pin is stale exactly when the lock directory of its token is missing or can
be locked; the pid in the names is for people only. Neither pid reuse nor pid
namespaces change the answer: the token is random, and the lock lives on
bpffs, which every process that sees the pins sees too.

The open directory also anchors the pins: the owner pins and unpins through
/proc/self/fd/<fd>/.., so a bpffs unmounted (or a pin directory renamed)
under a running Reader changes nothing for it; close() still removes its pins
from the bpffs instance it started with.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets

from .errors import BpfUnavailable

_OWNER_RE = re.compile(r"^owner-\d+-([0-9a-f]{8})$")
_PIN_RE = re.compile(r"^v\d+-[0-9a-f]{12}-([0-9a-f]{8})-\d+-\d+-\d+$")
_LEGACY_PIN_RE = re.compile(r"^v\d+-[0-9a-f]{12}-\d+-\d+-(\d+)$")  # before owner tokens
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Owner:
    """This process's lock directory in `pin_dir`, held until close()."""

    def __init__(self, pin_dir: str) -> None:
        self.pin_dir = pin_dir
        self.pid = os.getpid()
        for _ in range(8):
            self.token = secrets.token_hex(4)
            self.name = f"owner-{self.pid}-{self.token}"
            path = os.path.join(pin_dir, self.name)
            try:
                os.mkdir(path, 0o700)
                fd = os.open(path, _DIR_FLAGS)
            except FileExistsError:
                continue
            except OSError as e:
                raise BpfUnavailable(f"cannot create the lock directory {path} "
                                     f"({e.strerror}): run as root") from None
            # blocks only while another process's remove_stale() looks at it
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:
                self.fd = fd
                return
            os.close(fd)  # removed as stale between mkdir and flock: again
        raise BpfUnavailable(f"could not make a lock directory in {pin_dir}: something keeps "
                             f"removing them; check for other tools cleaning {pin_dir}")

    def pin_name(self, prefix: str, cgroup_id: int, order: int) -> str:
        """prefix: v<format>-<digest>"""
        return f"{prefix}-{self.token}-{cgroup_id}-{order}-{os.getpid()}"

    def path(self, name: str) -> str:
        """A path to `name` in the pin directory this owner was made in, even
        if that directory has been renamed or its bpffs unmounted since."""
        return f"/proc/self/fd/{self.fd}/../{name}"

    def forget(self) -> None:
        """Close the descriptor only (a forked child's inherited copy)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        """Remove the lock directory (its pins must be gone) and drop the lock."""
        if self.fd < 0:
            return
        if self.pid == os.getpid():
            try:
                os.rmdir(self.path(self.name))
            except OSError:
                pass
        self.forget()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(pin_dir: str) -> int:
    """Unpin links whose owner no longer runs; remove its lock directory.
    Returns how many pins went."""
    try:
        names = os.listdir(pin_dir)
    except FileNotFoundError:
        return 0
    live, dead = set(), []
    for name in names:
        m = _OWNER_RE.match(name)
        if not m:
            continue
        try:
            fd = os.open(os.path.join(pin_dir, name), _DIR_FLAGS)
        except OSError:  # removed meanwhile, or not a directory: not a lock
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live.add(m.group(1))
            os.close(fd)
            continue
        dead.append((name, fd))  # held while its pins go, so nobody reuses it
    removed = 0
    for name in names:
        m = _PIN_RE.match(name)
        if m:
            stale = m.group(1) not in live
        else:
            # a pymemcg older than owner tokens: its pid is all there is
            m = _LEGACY_PIN_RE.match(name)
            stale = m is not None and not _pid_alive(int(m.group(1)))
        if stale:
            try:
                os.unlink(os.path.join(pin_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
    for name, fd in dead:
        try:
            os.rmdir(os.path.join(pin_dir, name))
        except OSError:
            pass
        os.close(fd)
    return removed
