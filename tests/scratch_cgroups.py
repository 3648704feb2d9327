"""A scratch cgroup for a container runtime (podman, systemd-nspawn) to put
its containers in: a directory under this process's own memory cgroup, at
the same relative path in every cgroup hierarchy of the host (runtimes on a
v1 host make the path in each), removed from all of them afterwards with
whatever the runtime left inside, together with the ancestors this made in
hierarchies where they did not exist."""

from __future__ import annotations

import os
import uuid
from typing import List

from pymemcg.cgroupfs import cgroup_mounts, memory_mount, own_memory_cgroup

from conftest import _rmtree_cgroup


class ScratchCgroup:
    def __init__(self, label: str) -> None:
        own = own_memory_cgroup()
        mount = memory_mount()
        assert own is not None and mount is not None
        parent = "/" + os.path.relpath(own, mount.mountpoint).lstrip(".")
        #: the path relative to each hierarchy's root, e.g. /a/b/pymemcg-podman-123-abcd
        self.relpath = os.path.join(parent, f"pymemcg-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.mountpoints: List[str] = sorted({m.mountpoint for m in cgroup_mounts()})
        # the ancestors missing in each hierarchy: made by the runtime, removed by this
        self._made: List[str] = []
        for mp in self.mountpoints:
            path = mp
            for part in parent.strip("/").split("/"):
                path = os.path.join(path, part)
                if part and not os.path.isdir(path):
                    self._made.append(path)
        os.mkdir(self.path(mount.mountpoint))

    def path(self, mountpoint: str) -> str:
        """The scratch cgroup's directory in the hierarchy mounted at mountpoint."""
        return mountpoint.rstrip("/") + self.relpath

    def enter(self, mountpoints: List[str]) -> None:
        """Move the calling process into the scratch cgroup of these hierarchies
        (made where missing): for a preexec_fn."""
        for mp in mountpoints:
            os.makedirs(self.path(mp), exist_ok=True)
            with open(os.path.join(self.path(mp), "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def remove(self) -> None:
        for mp in self.mountpoints:
            if os.path.isdir(self.path(mp)):
                _rmtree_cgroup(self.path(mp))
        for path in sorted(self._made, key=len, reverse=True):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:     # another runtime's cgroups are in it now: theirs to remove
                pass
