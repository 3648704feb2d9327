"""Shared pins: a root-made iterator link that other processes read as a file.

`pin()` (root) loads the program for a cgroup, order and selection, pins the
link under a directory the operator chooses, and gives it the owner, group
and mode the operator chooses (default 0600 root; never writable by group or
others). Beside it, in a metadata directory, a JSON file says what the
records hold. Any process with read permission on the pin, root or not, then
reads with `PinReader`: open + read of the pin runs one iterator session
without a bpf() call, decoded by the same code as a Reader's.

Decoding trusts only what root (or the reading user itself) could have
written: the metadata is root's, mode 0644 (cgroup paths and stat names are
no secret: /sys/fs/cgroup shows them to everyone), and a reader refuses
metadata, or directories, that anyone else can write. Every read also checks
that the program's own selection digest (the session trailer) is the one the
metadata implies, so even root-owned metadata cannot relabel values.

A pin's reader gets only the session's 32 KiB (the overflow map is reachable
only through the loader's fds): a tree whose records do not fit raises
PinTooSmall rather than coming back truncated.
"""

from __future__ import annotations

import errno
import json
import os
import stat as stat_mod
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import catalog, numa, wire
from .cgroupfs import Cgroup, TreePaths, resolve_cgroup, still_names
from ._record_h import FORMAT_VERSION
from .decode import Selection, RawRecord, Record, Snapshot
from .errors import (BpfUnavailable, Error, MalformedData, PinnedCgroupRemoved, ReadError,
                     SelectionMismatch, quoted)
# the pin errors, importable from here as they always were (pymemcg.pins.PinMoved)
from .errors import InvalidPin as InvalidPin, NotAPin as NotAPin, PinGone as PinGone
from .errors import PinMismatch as PinMismatch, PinMoved as PinMoved
from .errors import PinTooSmall as PinTooSmall, UntrustedMetadata as UntrustedMetadata
from .record_format import SESSION_BUF_SIZE

SHARED_PIN_DIR = "/sys/fs/bpf/pymemcg-shared"
META_DIR = "/run/pymemcg/pins"


@dataclass(frozen=True)
class PinInfo:
    path: str            # the pin in bpffs
    meta: str            # its metadata file
    root: str            # the cgroup it serves
    tree: bool           # the subtree (pre-order) or the cgroup alone
    stats: List[str]
    local: bool
    owner: int
    group: int
    mode: int
    current: bool        # made by this pymemcg build (same BPF object)
    alive: bool = True   # its cgroup still exists (a removed one stays allocated while pinned)
    # why no pymemcg reader will use it ("" if one will): no metadata, metadata
    # others could write, or metadata that does not describe its program. An
    # orphan still serves whoever may open it.
    orphan: str = ""


def pin_path(pin: str, directory: str = SHARED_PIN_DIR) -> str:
    """The pin that a name (as given to pin()) or a path stands for: a name
    is looked up in `directory`, never in the current directory."""
    return os.path.abspath(pin if "/" in pin else os.path.join(directory, pin))


def _meta_path(pin_path: str, meta_dir: str) -> str:
    return os.path.join(meta_dir, os.path.basename(pin_path) + ".json")


def trusted(st: os.stat_result) -> bool:
    """Only root or this process's user can have written a file or directory
    with this owner and mode. The reading user counts because files it owns
    can only fool itself (and a root reader trusts root alone)."""
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


def _untrusted(what: str, st: os.stat_result,
               remedy: str = "unpin the pin and pin it again") -> UntrustedMetadata:
    return UntrustedMetadata(
        f"{what} is owned by uid {st.st_uid} with mode {stat_mod.S_IMODE(st.st_mode):o}: what "
        f"says how to decode a pin must be owned by root and writable by no one else, or "
        f"whoever can write it could make readers report one stat under another's name; "
        f"{remedy}")


def _read_meta(path: str, meta_dir: str) -> Dict[str, Any]:
    """The metadata of the pin at path, if only root (or this user) could
    have written it. Checked on the open file, not its name."""
    meta = _meta_path(path, meta_dir)
    try:
        fd = os.open(meta, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PinMismatch(f"{path} has no metadata at {meta}: not a pymemcg pin, or made "
                          f"with another metadata directory") from None
    except OSError as e:
        raise PinMismatch(f"cannot read {meta} ({e.strerror}; a symlink is refused)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode) or not trusted(st):
            raise _untrusted(meta, st)
        try:
            doc = json.load(f)
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
            raise PinMismatch(f"{meta} is not pin metadata ({e}): unpin the pin and pin it "
                              f"again") from None
    doc = _validate_meta(doc, meta)
    if "pin" in doc and doc["pin"] != os.path.abspath(path):
        raise PinMismatch(f"{meta} is the metadata of {doc['pin']!r}, not of {path}: unpin "
                          f"the pin and pin it again")
    return doc


#: what pin() writes in a metadata file: key -> (what it must be, test)
_META_FIELDS: Dict[str, Tuple[str, Callable[[Any], bool]]] = {
    "format": ("a whole number", lambda v: type(v) is int),
    "object": ("a string", lambda v: isinstance(v, str)),
    "root": ("an absolute path",
             lambda v: isinstance(v, str) and v.startswith("/") and "\0" not in v),
    "cgroup_id": ("a cgroup id (a whole number >= 0)", lambda v: type(v) is int and v >= 0),
    "tree": ("true or false", lambda v: isinstance(v, bool)),
    "stats": ("a list of stat names",
              lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)),
    "local": ("true or false", lambda v: isinstance(v, bool)),
}
#: keys that may be absent
_META_OPTIONAL: Dict[str, Tuple[str, Callable[[Any], bool]]] = {
    "sources": ("a mapping of stat names to text",
                lambda v: isinstance(v, dict) and all(isinstance(t, str) for t in v.values())),
    "flush": ("true or false", lambda v: isinstance(v, bool)),
    # the pin's absolute path (metadata written before it named its pin lacks it)
    "pin": ("an absolute path", lambda v: isinstance(v, str) and v.startswith("/")),
}


def _validate_meta(doc: object, meta: str) -> Dict[str, Any]:
    """doc, if it has every key pin() writes, each of the type pin() gives
    it; else PinMismatch naming the first key that is missing or wrong."""
    if not isinstance(doc, dict):
        raise PinMismatch(f"{meta} is not pin metadata (a JSON object): unpin the pin and pin "
                          f"it again")
    for fields, required in ((_META_FIELDS, True), (_META_OPTIONAL, False)):
        for key, (what, ok) in fields.items():
            if key not in doc:
                if required:
                    raise PinMismatch(f"{meta} lacks {key!r}: not pin metadata, or another "
                                      f"pymemcg's; unpin the pin and pin it again")
                continue
            if not ok(doc[key]):
                raise PinMismatch(f"{meta}: {key} is {quoted(doc[key])}, not {what}: not "
                                  f"metadata pin() wrote; unpin the pin and pin it again")
    return doc


def _check_trusted_dirs(*directories: str) -> None:
    for directory in directories:
        st = os.stat(directory)
        if not trusted(st):
            raise _untrusted(directory, st, "keep pins and their metadata in directories "
                                            "only root can write")


def _check_dir(directory: str, what: str) -> None:
    st = os.lstat(directory)
    if stat_mod.S_ISLNK(st.st_mode) or not stat_mod.S_ISDIR(st.st_mode):
        raise BpfUnavailable(f"{what} {directory} is a symlink or not a directory: remove it")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise BpfUnavailable(f"{what} {directory} must be owned by this user and writable by "
                             f"no one else (it is uid {st.st_uid}, mode "
                             f"{stat_mod.S_IMODE(st.st_mode):o})")


def _make_dir(directory: str, what: str) -> None:
    try:
        os.makedirs(directory, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise BpfUnavailable(f"cannot create {what} {directory} ({e.strerror}): shared pins need "
                             f"a writable bpffs (and metadata directory); Readers need neither"
                             ) from None
    _check_dir(directory, what)


def pin(root: str, name: str, stats: Sequence[str] = catalog.DEFAULT_STATS, *,
        tree: bool = True, local: bool = False, owner: int = 0, group: int = 0,
        mode: int = 0o600, directory: str = SHARED_PIN_DIR, meta_dir: str = META_DIR) -> PinInfo:
    """Pin a link serving `root` (its subtree, or alone with tree=False).

    The pin gets owner, group and mode, which must not let its group or
    others write it; its metadata is root's, mode 0644. Nothing existing is
    replaced or widened: an existing name is an error (unpin it first).
    """
    from ._pymemcg import lib
    from .backends.bpf_links import INITIAL_OVERFLOW_CAPACITY, BpfSelection, Links
    from .bpffs import BPFFS, ensure_bpffs
    from .programs import ORDER_DESCENDANTS_PRE, ORDER_SELF_ONLY, object_digest

    if not name or "/" in name or name.startswith("."):
        raise InvalidPin(f"pin name {name!r}: use a plain file name")
    if mode & ~0o777 or mode & 0o022:
        # reading needs only read permission; write permission is what
        # bpf(BPF_OBJ_GET) asks of whoever takes hold of the link itself. The
        # owner's write bit is left alone: an owner can chmod its file anyway
        raise InvalidPin(f"mode {mode:o} for pin {name!r}: a pin must not be writable by its "
                         f"group or others, and takes no setuid, setgid or sticky bit; use "
                         f"e.g. 0600, 0640 or 0440")
    cg = resolve_cgroup(root)
    if directory == BPFFS or directory.startswith(BPFFS + "/"):
        ensure_bpffs()
    _make_dir(directory, "the pin directory")
    _make_dir(meta_dir, "the pin metadata directory")
    path = os.path.join(directory, name)
    meta = _meta_path(path, meta_dir)
    if os.path.lexists(path) or os.path.lexists(meta):
        raise BpfUnavailable(f"{path} (or its metadata) exists: unpin it first")
    bpf = BpfSelection(list(stats), local, cg.mount.version)
    links = Links(bpf.iterator(INITIAL_OVERFLOW_CAPACITY))
    try:
        link = links.link(cg, ORDER_DESCENDANTS_PRE if tree else ORDER_SELF_ONLY)
        rc = lib.pmc_link_pin(link.fd, path.encode())
        if rc < 0:
            raise BpfUnavailable(f"pinning at {path} failed ({os.strerror(-rc)}): the "
                                 f"directory must be on bpffs")
        try:
            _share_pin(path, owner, group, mode)
            _write_meta(meta, {
                "format": FORMAT_VERSION, "object": object_digest(),
                "pin": os.path.abspath(path),
                "root": cg.path,
                "cgroup_id": cg.id, "tree": tree, "stats": list(stats), "local": local,
                "sources": bpf.selection.sources,
            })
        except BaseException:
            for p in (path, meta):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            raise
    finally:
        links.release()  # the pin keeps the link, and so the program, alive
    return _info(path, meta_dir)


def _share_pin(path: str, owner: int, group: int, mode: int) -> None:
    """Owner, group and mode of the pin just made, set on the file opened
    rather than on whatever the name means by the time of each call (O_PATH:
    opening a pinned iterator for real would prepare a session)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise BpfUnavailable(f"{path} is not the pin just made: remove it and pin again")
        os.chown(f"/proc/self/fd/{fd}", owner, group)
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _write_meta(meta: str, doc: Dict[str, Any]) -> None:
    fd = os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w") as f:
        # root's and writable by root alone before anything is in it; the
        # pin's owner and group read it as everyone does
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o644)
        json.dump(doc, f)


# The kernel keeps 15 characters of a program's name: every iterator program
# of bpf_src/memcg_iter.bpf.c starts with this.
PIN_PROGRAM_PREFIX = "pmc_memcg_iter"


def _refuse(path: str, why: str) -> NotAPin:
    return NotAPin(f"{path}: {why}; nothing was removed. pymemcg removes only iterator links "
                   f"of its own programs pinned on bpffs, and the metadata that names them "
                   f"(`pymemcg pins` lists them)")


def _pin_location(pin: str, directory: str) -> Tuple[str, str]:
    """The pin's directory and file name. No '..': what a name stands for
    must not depend on where symlinks above it lead."""
    raw = pin if "/" in pin else os.path.join(directory, pin)
    if ".." in raw.split("/"):
        raise _refuse(raw, "a pin path may not contain '..'")
    parent, name = os.path.split(os.path.abspath(raw))
    if not name:
        raise _refuse(raw, "names a directory")
    return parent, name


def _open_dir(directory: str, what: str) -> int:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _refuse(directory, f"cannot open {what} ({e.strerror})") from None
    st = os.fstat(fd)
    if not trusted(st):
        os.close(fd)
        raise _refuse(directory, f"{what} is owned by uid {st.st_uid} with mode "
                                 f"{stat_mod.S_IMODE(st.st_mode):o}: someone else could "
                                 f"swap what is in it")
    return fd


def _check_pin(dir_fd: int, path: str, name: str) -> Optional[Any]:
    """The pin's identity (pmc_pin_ident) if `name` is one of pymemcg's
    iterator links on bpffs, None if nothing is there; NotAPin otherwise."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    if stat_mod.S_ISLNK(st.st_mode):
        raise _refuse(path, "is a symlink, not a pin")
    try:
        from ._pymemcg import ffi, lib
    except ImportError:
        raise BpfUnavailable(f"{path}: this install has no compiled part, so it cannot ask "
                             f"the kernel what the file is; unpin with a full install") from None
    ident = ffi.new("struct pmc_pin_ident *")
    rc = lib.pmc_pin_identify(dir_fd, name.encode(), ident)
    if rc < 0:
        try:
            os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return None  # removed meanwhile
        raise _refuse(path, f"the kernel does not give it as a BPF object "
                            f"({os.strerror(-rc)})")
    if not ident.on_bpffs:
        raise _refuse(path, "is not on a bpffs mount, so it is no pin")
    if not stat_mod.S_ISREG(st.st_mode) or ident.object == lib.PMC_PIN_NOT_BPF:
        raise _refuse(path, "is not a pinned BPF object")
    if ident.object != lib.PMC_PIN_LINK:
        kind = {lib.PMC_PIN_PROG: "a pinned BPF program", lib.PMC_PIN_MAP: "a pinned BPF map"}
        raise _refuse(path, f"is {kind.get(ident.object, 'a pinned BPF object')}, not a link")
    target = ffi.string(ident.target).decode(errors="replace")
    prog = ffi.string(ident.prog_name).decode(errors="replace")
    if target != "cgroup":
        raise _refuse(path, f"is a BPF link of another kind (link type {ident.link_type}, "
                            f"iterator target {target!r})")
    if not prog.startswith(PIN_PROGRAM_PREFIX):
        raise _refuse(path, f"is a cgroup iterator link of the program {prog!r}, not of "
                            f"pymemcg's")
    return ident


def _meta_of_pin(meta_fd: int, meta: str, path: str, ident: Any) -> bool:
    """Whether metadata for the pin at `path` is there (True) or not (False);
    NotAPin if what is there is not provably that pin's: a symlink, not a
    regular file, writable by others, not pin metadata, or describing
    another pin."""
    name = os.path.basename(meta)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=meta_fd)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise _refuse(meta, f"cannot open it ({e.strerror}; a symlink is refused)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise _refuse(meta, "is not a regular file")
        if not trusted(st):
            raise _refuse(meta, f"is owned by uid {st.st_uid} with mode "
                                f"{stat_mod.S_IMODE(st.st_mode):o}, so it is not root's")
        try:
            doc = _validate_meta(json.loads(f.read(1 << 20)), meta)
        except (ValueError, RecursionError):  # PinMismatch is a ValueError
            raise _refuse(meta, "is not pin metadata") from None
    if "pin" in doc:
        if doc["pin"] != path:
            raise _refuse(meta, f"is the metadata of {doc['pin']!r}, not of {path}")
        return True
    # metadata written before it named its pin: it must describe this link
    from .programs import ORDER_DESCENDANTS_PRE
    if ident is None:
        raise _refuse(meta, f"does not name its pin, and there is no pin at {path} to "
                            f"match it with; remove it by hand if it is pymemcg's")
    if doc.get("cgroup_id") != ident.cgroup_id or \
            bool(doc.get("tree")) != (ident.order == ORDER_DESCENDANTS_PRE):
        raise _refuse(meta, f"describes cgroup id {doc.get('cgroup_id')}, not the link at "
                            f"{path} (cgroup id {ident.cgroup_id})")
    return True


def unpin(pin: str, meta_dir: str = META_DIR, directory: str = SHARED_PIN_DIR, *,
          keep_foreign_meta: bool = False) -> List[str]:
    """Remove a pin, named as it was pinned (in `directory`) or by path, and
    its metadata; returns what was removed, [] if neither was there. The
    program goes with the last user of the link.

    Removes only what is provably pymemcg's: a cgroup iterator link of one
    of its programs, pinned on bpffs in a directory only root (or this user)
    can write, and the file in `meta_dir` that names that pin. Anything else
    raises NotAPin and nothing is removed; with keep_foreign_meta, metadata
    that is not provably the pin's is left in place and the pin still goes.
    """
    parent, name = _pin_location(pin, directory)
    path = os.path.join(parent, name)
    meta = _meta_path(path, meta_dir)
    dir_fd = _open_dir(parent, "the pin's directory")
    meta_fd = -1
    try:
        ident = _check_pin(dir_fd, path, name)
        try:
            meta_fd = _open_dir(meta_dir, "the metadata directory")
            has_meta = _meta_of_pin(meta_fd, meta, path, ident)
        except NotAPin:
            if not keep_foreign_meta or ident is None:
                raise
            has_meta = False
        removed = []
        if ident is not None:
            os.unlink(name, dir_fd=dir_fd)
            removed.append(path)
        if has_meta:
            os.unlink(os.path.basename(meta), dir_fd=meta_fd)
            removed.append(meta)
        return removed
    finally:
        os.close(dir_fd)
        if meta_fd >= 0:
            os.close(meta_fd)


def _info(path: str, meta_dir: str) -> PinInfo:
    from .programs import object_digest
    meta = _meta_path(path, meta_dir)
    doc = _read_meta(path, meta_dir)
    st = os.stat(path)
    try:
        current = doc.get("object") == object_digest()
    except Exception:  # no compiled part (an unprivileged reader's install)
        current = False
    try:
        return PinInfo(path, meta, doc["root"], doc["tree"], doc["stats"], doc["local"],
                       st.st_uid, st.st_gid, stat_mod.S_IMODE(st.st_mode), current,
                       _cgroup_alive(path, doc))
    except KeyError as e:
        raise PinMismatch(f"{meta} lacks {e}: not pin metadata") from None


def _cgroup_alive(path: str, doc: Dict[str, Any]) -> bool:
    """The pinned cgroup still exists: a session of the pin visits it (a
    removed cgroup's walk visits nothing; renames do not matter). Where the
    pin cannot be read (another format, no permission), whether its
    directory still has the pinned id."""
    try:
        return bool(PinReader.from_doc(path, doc).records())
    except PinTooSmall:
        return True  # the walk visited more than fits: it is there
    except SelectionMismatch:
        raise PinMismatch(f"{path}: its metadata does not describe what its program reads "
                          f"(it was changed, or is another pin's)") from None
    except (PinMismatch, ReadError, MalformedData, KeyError, TypeError):
        pass
    cgroup_id = doc.get("cgroup_id")
    return isinstance(cgroup_id, int) and still_names(str(doc.get("root")), cgroup_id)


def pins(directory: str = SHARED_PIN_DIR, meta_dir: str = META_DIR) -> List[PinInfo]:
    """Every pin in `directory`; those without metadata a reader would use
    are orphans (PinInfo.orphan says why)."""
    out: List[PinInfo] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    if os.stat(directory).st_dev != os.stat(os.path.join(directory, "..")).st_dev:
        # the kernel (bpf_preload) pins these two in the root of every bpffs
        names = [n for n in names if n not in ("maps.debug", "progs.debug")]
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if stat_mod.S_ISDIR(st.st_mode):
                continue
            try:
                out.append(_info(path, meta_dir))
            except PinMismatch as e:
                out.append(PinInfo(path, _meta_path(path, meta_dir), "", False, [], False,
                                   st.st_uid, st.st_gid, stat_mod.S_IMODE(st.st_mode), False,
                                   orphan=str(e).removeprefix(path + " ")))
        except FileNotFoundError:
            continue  # unpinned meanwhile
    return out


def prune(directory: str = SHARED_PIN_DIR, meta_dir: str = META_DIR,
          other_builds: bool = False, refused: Optional[List[str]] = None) -> List[str]:
    """Remove stale shared pins, and return what was removed: pins whose
    cgroup was removed (the link keeps that cgroup allocated until it is
    unpinned), orphans (pins without metadata a reader would use: they still
    serve whoever may open them), metadata whose pin is gone, and with
    other_builds, pins that another pymemcg build made. What unpin() would
    refuse is left in place, and why is appended to `refused`."""
    removed = []
    for info in pins(directory, meta_dir):
        if info.orphan or not info.alive or (other_builds and not info.current):
            try:
                removed += unpin(info.path, meta_dir, keep_foreign_meta=True)
            except NotAPin as e:
                if refused is not None:
                    refused.append(str(e))
    try:
        names = sorted(os.listdir(meta_dir))
    except FileNotFoundError:
        names = []
    for name in names:
        if not name.endswith(".json") or name in (".json",):
            continue
        pin_path = os.path.join(directory, name[:-len(".json")])
        if os.path.lexists(pin_path):
            continue
        try:
            removed += unpin(pin_path, meta_dir)
        except NotAPin as e:
            if refused is not None:
                refused.append(str(e))
    return removed


class PinReader:
    """Reads a pin with open + read: no bpf() call, so no privilege beyond
    read permission on the pin and its metadata."""

    def __init__(self, path: str, meta_dir: str = META_DIR) -> None:
        _check_trusted_dirs(os.path.dirname(os.path.abspath(path)), meta_dir)
        self._setup(path, _read_meta(path, meta_dir))

    @classmethod
    def from_doc(cls, path: str, doc: Dict[str, Any], sources: Optional[Dict[str, str]] = None) -> "PinReader":
        """A reader of `path` described by its metadata `doc`; `sources`
        replaces the metadata's account of how each stat is read."""
        self = cls.__new__(cls)
        self._setup(path, doc, sources)
        return self

    def _setup(self, path: str, doc: Dict[str, Any], sources: Optional[Dict[str, str]] = None) -> None:
        if doc.get("format") != FORMAT_VERSION:
            raise PinMismatch(f"{path} holds format {doc.get('format')}, this pymemcg reads "
                              f"{FORMAT_VERSION}: re-pin it with this version")
        stats = doc.get("stats")
        if not isinstance(stats, list) or not all(isinstance(n, str) for n in stats):
            raise PinMismatch(f"{path}'s metadata has no list of stat names: re-pin it")
        self.path = path
        self.tree = bool(doc["tree"])
        self.local = bool(doc.get("local"))
        self.selection = Selection(stats, sources if sources is not None else doc.get("sources"))
        # what the pinned program must say its records hold, checked on every
        # read: the metadata alone does not decide how values are labelled
        self._selection = wire.selection_digest(stats, self.local, not self.tree)
        self.root = doc["root"]
        self.cgroup_id = self._root_id = doc["cgroup_id"]
        # a pin's per-node stats are of the nodes that had memory when it was
        # made: each read checks that they still are (numa.NodeWatch)
        self._numa_nodes = numa.selected_nodes(stats)
        self._buf = bytearray(SESSION_BUF_SIZE)
        self._paths = TreePaths()

    def _session(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            raise ReadError(13, f"no read permission on {self.path}: ask the operator to pin "
                                f"it with a group or mode that includes this user") from None
        except FileNotFoundError:
            raise PinGone(2, f"{self.path} is gone: it was unpinned, or the bpffs it was on "
                             f"was unmounted; ask the operator to pin it again "
                             f"(pymemcg pin)") from None
        try:
            return os.readv(fd, [self._buf])
        finally:
            os.close(fd)

    def records(self) -> List[RawRecord]:
        """Record tuples of one complete session, the pinned cgroup first;
        [] when that cgroup was removed."""
        for _ in range(8):
            n = self._session()
            count, _session, visited = wire.parse_trailer(
                self._buf, n, self.selection.record_size, self._selection,
                f"{self.path}'s metadata does not describe what its program reads (it was "
                f"changed, or is another pin's); unpin it and pin it again")
            if count == 0:  # a removed cgroup's walk visits nothing, and claims nothing
                return []
            if visited != wire.VISITED_UNKNOWN:  # else another session ended meanwhile
                break
        else:
            raise ReadError(errno.EAGAIN, f"{self.path}: other sessions of this pin kept "
                                          f"ending at the same moment as ours; read again")
        if visited != count:
            raise PinTooSmall(27, f"{self.path}: the tree has {visited} cgroups but one "
                                  f"iterator session holds {count} records of these stats "
                                  f"(32 KiB): pin fewer stats or a smaller subtree")
        raw = list(self.selection.record.iter_unpack(memoryview(self._buf)[:count *
                                                  self.selection.record_size]))
        if raw and raw[0][0] != self._root_id:
            raise MalformedData(f"{self.path} served cgroup {raw[0][0]}, not {self._root_id}")
        return raw

    def read(self) -> Union[Record, Snapshot]:
        """The pinned cgroup's Record, or its subtree's Snapshot, labelled
        with the path it has now (after the session). A pin of per-node
        stats (`pymemcg pin --numa`) raises NumaNodesChanged once the nodes
        with memory are not those it was pinned for."""
        if self._numa_nodes:
            numa.check_nodes(self._numa_nodes)
        raw = self.records()
        if not raw:
            raise self._removed()
        try:
            cg: Optional[Cgroup] = resolve_cgroup(self.root)
        except Error:
            cg = None
        if cg is None or cg.id != raw[0][0]:
            if not self.records():  # removed after the session, not moved
                raise self._removed()
            now = "nothing" if cg is None else f"cgroup {cg.id}"
            raise PinMoved(errno.ESTALE, f"{self.path} serves cgroup {raw[0][0]}, which is no "
                                         f"longer at {self.root} ({now} is there now): the "
                                         f"pinned cgroup was renamed or moved; unpin the pin "
                                         f"and pin {self.root} again")
        return self.decode(cg, raw)

    def _removed(self) -> PinnedCgroupRemoved:
        return PinnedCgroupRemoved(errno.ENOENT, f"{self.path}: its cgroup {self.root} was "
                                                 f"removed, so the pin can serve nothing "
                                                 f"again; remove it (pymemcg unpin --stale)")

    def decode(self, cg: Cgroup, raw: List[RawRecord]) -> Union[Record, Snapshot]:
        """raw (from records()) as a Record or Snapshot of the cgroup cg."""
        if not self.tree:
            return Record(self.selection, raw[0], cg.relpath)
        return Snapshot(cg.relpath, self.selection, raw, self._paths.paths(cg, raw))
