"""Locks that the child of a fork can take.

fork() copies the calling thread only. A lock that another thread of the
parent held at that moment is held in the child by a thread that does not
exist there, so the child's first use of what it guards waits forever (a
pre-fork server's worker, a multiprocessing "fork" worker). Each object of
pymemcg's that keeps threading locks registers them here; in the child of
every fork, before any of the child's own code runs, each such object still
alive gets new locks and then its own reset (what else it must not share
with its parent: see BpfBackend._after_fork).

The child hook never raises: an object that another thread of the parent was
still building at the moment of fork (its __init__ never finishes in the
child, where that thread does not exist) lacks some attributes, so resets
read them with defaults; and each object is reset on its own, so that one
failure skips no other object. A reset that does fail is reported as a
RuntimeWarning.

The C shim's own lock is handled in C (pthread_atfork in csrc/pmc_shim.c).
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

# stored for owners of any type; each registration's reset takes its own owner
Reset = Callable[[Any], None]
_Owner = TypeVar("_Owner")

# id(owner) -> (a weak reference to it, the names of its lock attributes,
# its reset): keyed by id, not by the object, since an owner need not be
# hashable (a dataclass that compares by value is not)
_owners: Dict[int, Tuple["weakref.ref[object]", Tuple[str, ...], Optional[Reset]]] = {}


def renew_in_child(owner: _Owner, *locks: str,
                   reset: Optional[Callable[[_Owner], None]] = None) -> None:
    """In the child of every fork while `owner` lives: a new threading.Lock
    at each attribute of owner named in `locks`, then reset(owner).

    Register as soon as the first lock exists (a half-built owner is reset
    like any other); reset must take an owner whose __init__ stopped
    anywhere after the registration."""
    key = id(owner)

    def forget(ref: "weakref.ref[object]") -> None:
        entry = _owners.get(key)
        if entry is not None and entry[0] is ref:   # not a later owner at the same id
            del _owners[key]

    _owners[key] = (weakref.ref(owner, forget), tuple(locks), reset)


def _said(owner: object, what: str, error: BaseException) -> None:
    try:
        warnings.warn(f"pymemcg: after fork, {what} of a {type(owner).__name__} failed: "
                      f"{error!r}; do not use it in this process", RuntimeWarning)
    except Exception:  # noqa: BLE001 - warnings as errors: the hook must still not raise
        pass


def _after_fork_in_child() -> None:
    for ref, locks, reset in list(_owners.values()):
        owner = ref()
        if owner is None:
            continue
        for name in locks:
            try:
                setattr(owner, name, threading.Lock())
            except Exception as e:  # noqa: BLE001 - see the module docstring
                _said(owner, f"renewing its lock {name}", e)
        if reset is not None:
            try:
                reset(owner)
            except Exception as e:  # noqa: BLE001 - see the module docstring
                _said(owner, "the reset", e)


os.register_at_fork(after_in_child=_after_fork_in_child)
