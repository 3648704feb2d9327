"""Cgroup paths: validation, the hierarchy a path lives on, ids and names."""

from __future__ import annotations

import operator
import os
import stat
from dataclasses import dataclass
from typing import AbstractSet, Dict, Iterable, Iterator, List, Optional, Tuple, cast

from .decode import PackedRecords, RawRecords
from .record_format import HASH_WORD, ID_WORD, PARENT_WORD
from .errors import CgroupNotFound, InvalidArgument, NoMemoryController, NotACgroup, quoted
from .hashes import name_hash, path_hash

CGROUP_MOUNT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str             # "cgroup" (v1) or "cgroup2"
    options: Tuple[str, ...]
    #: the cgroup the mount shows at its mountpoint, relative to this process's
    #: cgroup namespace root ("/": that root; "/../.." when above it, as for
    #: a host's hierarchy seen from a container in a cgroup namespace of its own)
    root: str = "/"

    @property
    def version(self) -> int:
        return 2 if self.fstype == "cgroup2" else 1

    @property
    def has_memory(self) -> bool:
        if self.version == 1:
            return "memory" in self.options
        try:
            with open(os.path.join(self.mountpoint, "cgroup.controllers")) as f:
                return "memory" in f.read().split()
        except OSError:
            return False


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


_mounts_cache: Optional[List[Mount]] = None


def cgroup_mounts(cached: bool = False) -> List[Mount]:
    """Every cgroup and cgroup2 mount of this mount namespace.

    cached=True reuses the last parse: path lookups re-parse only when no
    known mount matches, since cgroup mounts change rarely.
    """
    global _mounts_cache
    if cached and _mounts_cache is not None:
        return _mounts_cache
    listed: List[Tuple[str, Optional[Mount]]] = []    # (mountpoint, cgroup Mount or None)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5:
                continue
            mountpoint = _unescape(fields[4])
            if len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
                listed.append((mountpoint, None))
                continue
            listed.append((mountpoint, Mount(mountpoint, rfields[0],
                                             tuple(rfields[2].split(",")), _unescape(fields[3]))))
    mounts = [m for i, (_, m) in enumerate(listed)
              if m is not None and not _covered(m.mountpoint, listed[i + 1:])]
    _mounts_cache = mounts
    return mounts


def _covered(mountpoint: str, later: List[Tuple[str, Optional[Mount]]]) -> bool:
    """Whether a mount made later sits on `mountpoint` or on a directory above
    it (a container runtime's own cgroup mount, with the host's mounted over
    it): what is at that path is no longer the earlier mount."""
    for other, _ in later:
        if other != "/" and (mountpoint == other or mountpoint.startswith(other.rstrip("/") + "/")):
            return True
    return False


def memory_mount() -> Optional[Mount]:
    """The hierarchy that carries the memory controller, if any."""
    for m in cgroup_mounts():
        if m.has_memory:
            return m
    return None


def own_memory_cgroup() -> Optional[str]:
    """Absolute path of this process's memory cgroup in the hierarchy mounted
    here, or None when it cannot be told (see locate_own_memory_cgroup)."""
    return locate_own_memory_cgroup()[0]


def _ns_memory_cgroup(mount: Mount) -> Optional[str]:
    """This process's memory cgroup as /proc/self/cgroup gives it: relative to
    its cgroup namespace root."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if (mount.version == 1 and "memory" in controllers.split(",")) or \
                    (mount.version == 2 and hid == "0"):
                return path
    return None


def locate_own_memory_cgroup() -> Tuple[Optional[str], str]:
    """(absolute path of this process's memory cgroup, how it was found), or
    (None, why it cannot be told).

    /proc/self/cgroup names the cgroup relative to this process's cgroup
    namespace root, and mountinfo says which cgroup the mount shows relative
    to the same root: where the mount's cgroup contains ours, the path
    follows. A container in a cgroup namespace of its own that mounts the
    host's hierarchy sees that hierarchy's root above its namespace root
    ("/../.."), whose names the kernel does not give; there the cgroup that
    lists this process (its thread id in `tasks` on v1, its pid in
    cgroup.procs on v2, as numbered in this pid namespace, which numbers
    only its own processes) is ours."""
    mount = memory_mount()
    if mount is None:
        return None, "no cgroup hierarchy has the memory controller"
    in_ns = _ns_memory_cgroup(mount)
    if in_ns is None:
        return None, "/proc/self/cgroup has no line for the memory hierarchy"
    root = mount.root.rstrip("/") or "/"
    if root == "/" or in_ns == root or in_ns.startswith(root + "/"):
        rel = in_ns[len(root):] if root != "/" else in_ns
        return os.path.join(mount.mountpoint, rel.lstrip("/")), "/proc/self/cgroup"
    found = _cgroup_listing_me(mount)
    if found is not None:
        return found, (f"found by this process's id in {mount.mountpoint}: its cgroup namespace "
                       f"names it {in_ns}, the mount shows {mount.root} relative to that")
    return None, (f"this process's cgroup namespace names its cgroup {in_ns}, and the hierarchy "
                  f"mounted at {mount.mountpoint} shows {mount.root} relative to that namespace; "
                  f"no cgroup in it lists this process")


def _cgroup_listing_me(mount: Mount) -> Optional[str]:
    """The cgroup under mount whose member list holds this process, by walking it."""
    me = str(os.getpid())
    members = "tasks" if mount.version == 1 else "cgroup.procs"
    for dirpath, _, _ in os.walk(mount.mountpoint):
        try:
            with open(os.path.join(dirpath, members)) as f:
                if me in f.read().split():
                    return dirpath
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class Cgroup:
    """A validated memory cgroup directory."""

    path: str           # absolute, symlinks resolved
    mount: Mount
    relpath: str        # relative to the hierarchy root: "/" or "/a/b"
    id: int             # kernfs id == st_ino

    @property
    def level(self) -> int:
        return 0 if self.relpath == "/" else self.relpath.count("/")


def _mount_of(path: str) -> Optional[Mount]:
    return _longest_mount(path, cgroup_mounts(cached=True)) or _longest_mount(path, cgroup_mounts())


def _longest_mount(path: str, mounts: List[Mount]) -> Optional[Mount]:
    best = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best.mountpoint):
                best = m
    return best


def resolve_cgroup(path: str) -> Cgroup:
    """Validate `path` as a memory cgroup directory; raise a pymemcg.Error if not."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise NotACgroup(f"{path!r} is not a path: pass the cgroup directory, e.g. "
                         f"{CGROUP_MOUNT}/memory/<group>")
    try:
        path = os.fsdecode(path)
        real = os.path.realpath(path)
        st = os.stat(real)
    except ValueError:  # an embedded NUL byte
        raise NotACgroup(f"{path!r} is not a valid path (it holds a NUL byte)") from None
    except FileNotFoundError:
        raise CgroupNotFound(f"{path}: no such cgroup; check the path (cgroups of this host "
                             f"are under {CGROUP_MOUNT})") from None
    except OSError as e:
        raise NotACgroup(f"{path}: cannot stat ({e.strerror})") from None
    mount = _mount_of(real)
    # what the path named at the stat decides: a look at it again may meet
    # nothing, or another cgroup made since at the same path
    if mount is None or not stat.S_ISDIR(st.st_mode):
        raise NotACgroup(f"{path} is not a cgroup directory: pass a directory under a cgroup "
                         f"mount ({CGROUP_MOUNT}/...)")
    if not os.path.exists(os.path.join(real, "memory.stat")):
        if not still_names(real, st.st_ino):
            # no memory.stat because the directory was removed (or replaced) since
            raise CgroupNotFound(f"{path}: the cgroup was removed")
        where = memory_mount()
        hint = f"use a cgroup under {where.mountpoint}" if where else \
            "this host has no memory controller mounted"
        raise NoMemoryController(f"{path} has no memory controller (no memory.stat): {hint}")
    rel = "/" + os.path.relpath(real, mount.mountpoint)
    rel = "/" if rel == "/." else rel
    return Cgroup(real, mount, rel, st.st_ino)


def path_list(paths: Iterable[str]) -> List[str]:
    """The paths of a read_many call as a list; one path on its own (a str,
    which would otherwise be taken for a list of one-letter paths) is refused."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise InvalidArgument(f"read_many takes a list of paths, not one path ({quoted(paths)}): "
                              f"use read(), or read_many([path])")
    try:
        each = iter(paths)
    except TypeError:
        raise InvalidArgument(f"read_many takes a list of paths, not {quoted(paths)} "
                              f"({type(paths).__name__}): use read_many([path, ...])") from None
    return list(each)


class Replaced(Exception):
    """A path named another cgroup by the time it was opened than the one
    resolved: resolve it again. Raised and caught inside the backends."""


def still_names(path: str, cgroup_id: int) -> bool:
    """Whether the directory at path is (still) the cgroup with this id."""
    try:
        return os.stat(path).st_ino == cgroup_id
    except OSError:
        return False


class PathHashProofs:
    """Whether the path hash the kernel reported for a cgroup may stand for
    the path it was read by, so that a later read of that path skips
    resolving it.

    The hash is computed from the relpath where the kernel's root is ours;
    a cgroup namespace or a mount of a subtree hides the top of the path,
    and then a hash counts only once two slow reads, each checked by stat
    before and after, saw the same one (a single observation could come
    from a cgroup renamed away and back during the read)."""

    def __init__(self, bound: int) -> None:
        # path -> (id, path hash) seen by the last read where the hash could
        # not be computed from the path; forgotten past `bound` entries
        self._seen: Dict[str, Tuple[int, int]] = {}
        self._bound = bound

    def proves(self, path: str, cg: Cgroup, reported: int) -> bool:
        """Whether `reported` stands for path, which was just proven (by
        stat) to name cg. 0: deeper than the program walks, never provable."""
        if reported == 0:
            return False
        if reported == path_hash(cg.relpath):
            return True
        seen = self._seen.get(path)
        self._seen[path] = (cg.id, reported)
        if len(self._seen) > self._bound:
            self._seen.clear()
        return seen == (cg.id, reported)


class NameCache:
    """kernfs id -> directory name, checked against each record's name hash.

    Records carry ids and a hash of the name, not the name. A directory
    listing gives each child's inode number (its kernfs id) and name without a
    stat() per child, so a listing is needed only when a parent shows a child
    that is new or renamed since the last snapshot.
    """

    def __init__(self) -> None:
        self.names: Dict[int, Tuple[int, str]] = {}   # id -> (name hash, name)

    def name(self, parent_path: str, cgroup_id: int, hashed: int) -> Optional[str]:
        """The name of cgroup_id, a child of the directory parent_path."""
        known = self.names.get(cgroup_id)
        if known is not None and known[0] == hashed:
            return known[1]
        try:
            with os.scandir(parent_path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        old = self.names.get(entry.inode())
                        if old is None or old[1] != entry.name:
                            self.names[entry.inode()] = (name_hash(entry.name), entry.name)
        except OSError:
            return None
        known = self.names.get(cgroup_id)
        # a mismatch left here means a rename after the walk: the current name
        return known[1] if known is not None else None

    def forget_except(self, live_ids: AbstractSet[int]) -> None:
        for stale in self.names.keys() - live_ids:
            del self.names[stale]


_SHAPE = operator.itemgetter(0, 1, 2)   # a record's id, parent id, name hash


class TreePaths:
    """Paths for the records of a pre-order walk (a parent before its
    children), kept across snapshots: an unchanged cgroup under an unchanged
    parent reuses its path string, a new or renamed one costs one listing of
    its parent directory."""

    def __init__(self) -> None:
        self.names = NameCache()
        self._prev: Dict[int, Tuple[int, str, str]] = {}   # id -> (name hash, parent path, path)
        # the last walk's shape (root, then (id, parent id, name hash) per
        # record) and what it gave: an unchanged tree reuses both as they are
        self._shape: Optional[Tuple[object, ...]] = None
        self._last: Tuple[List[Optional[str]], Dict[str, int]] = ([], {})

    def paths_and_index(self, root: Cgroup, raw: RawRecords
                        ) -> Tuple[List[Optional[str]], Dict[str, int]]:
        """paths() and {path: position}; the same objects as last time when
        the tree's shape did not change (treat both as read-only)."""
        shape: Tuple[object, ...]
        last = self._shape
        if raw.__class__ is PackedRecords:  # the columns' bytes, no object per record
            if last is not None and last[:2] == (root.mount.mountpoint, root.relpath) and \
                    len(last) == 5 and all(raw.word_equals(word, cast(bytes, column))
                                           for word, column in
                                           zip((ID_WORD, PARENT_WORD, HASH_WORD), last[2:])):
                # compared in place: the columns are copied only when they change
                return self._last
            shape = (root.mount.mountpoint, root.relpath, raw.word_bytes(ID_WORD),
                     raw.word_bytes(PARENT_WORD), raw.word_bytes(HASH_WORD))
        else:
            shape = (root.mount.mountpoint, root.relpath, list(map(_SHAPE, raw)))
        if shape == last:
            return self._last
        paths = self.paths(root, raw)
        index = {p: i for i, p in enumerate(paths) if p is not None}
        # a name not found (removed or renamed meanwhile) is looked for again
        self._shape = shape if len(index) == len(paths) else None
        self._last = (paths, index)
        return self._last

    def paths(self, root: Cgroup, raw: RawRecords) -> List[Optional[str]]:
        """raw: record tuples (id, parent_id, name_hash, ...), root first, or
        PackedRecords."""
        names = self.names
        known = names.names
        mount = root.mount.mountpoint
        top = root.relpath
        rel = {root.id: "" if top == "/" else top}
        out: List[Optional[str]] = [top]
        prev = self._prev
        cur: Dict[int, Tuple[int, str, str]] = {}
        rows: Iterator[Tuple[int, ...]] = zip(
            raw.word_column(ID_WORD), raw.word_column(PARENT_WORD),
            raw.word_column(HASH_WORD)) if raw.__class__ is PackedRecords else iter(raw)
        next(rows, None)  # the root's path is known
        for t in rows:
            parent = rel.get(t[1])
            path: Optional[str] = None
            name: Optional[str]
            if parent is not None:
                c = prev.get(t[0])
                if c is not None and c[0] == t[2] and c[1] is parent:
                    path = rel[t[0]] = c[2]
                    cur[t[0]] = c
                else:
                    hit = known.get(t[0])
                    if hit is not None and hit[0] == t[2]:
                        name = hit[1]
                    else:  # new or renamed: list the parent directory
                        name = names.name(mount + parent, t[0], t[2])
                    if name is not None:
                        path = rel[t[0]] = parent + "/" + name
                        cur[t[0]] = (t[2], parent, path)
            out.append(path)
        self._prev = cur
        if len(known) > 2 * len(raw) + 64:
            names.forget_except(rel.keys())
        return out
