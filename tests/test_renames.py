"""A read of a path with a proven route skips hashing the path only while no
cgroup was renamed since the proof (the fetch program counts renames on the
cgroup_rename tracepoint); after a rename the kernel hashes the path again.

cgroup v1 only: cgroup v2 refuses renames, so there the count never moves
and every read of a proven route is an unhashed one.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import pymemcg
from pymemcg.binding import load
from pymemcg.cgroupfs import memory_mount
from pymemcg.decode import Record

from test_identity import renames_allowed

STATS = ["limit", "usage"]
MiB = 1 << 20


def _limit_file() -> str:
    return "memory.limit_in_bytes" if memory_mount().version == 1 else "memory.max"


def _set_limit(path: str, value: int) -> None:
    with open(os.path.join(path, _limit_file()), "w") as f:
        f.write(str(value))


@pytest.fixture
def v1_cgroups(cgroups):
    if not renames_allowed(cgroups.base):
        pytest.skip("this cgroup version does not allow renames (v2)")
    return cgroups


def test_unhashed_reads_until_a_rename(bpf_ok, v1_cgroups):
    """While the count stays, pmc_fetch_read answers from the route alone
    (a route with a wrong hash still reads: the kernel did not hash); a
    rename of any cgroup moves the count, and the next read hashes the path
    (the wrong hash is found out; the right one is proven again, at the new
    count). mkdir and rmdir do not move it."""
    cgroups = v1_cgroups
    path = cgroups.make("read")
    stranger = cgroups.make("stranger")
    ffi, lib = load()
    with pymemcg.Reader(STATS, backend="bpf", shared_pins=False) as reader:
        if not reader.read_method.startswith("BPF_PROG_RUN"):
            pytest.skip(f"no one-call read here: {reader.read_method}")
        first = reader.read(path)
        be = reader._backend
        fetch, route = be._fetch, be._routes[path]
        count = fetch.renames()
        assert route.proof.renames == count
        wrong = ffi.new("struct pmc_fetch_route *", (route.id, route.path_hash ^ 1, count, fetch.ptr))

        def read(proof) -> tuple:
            rc = lib.pmc_fetch_read(proof)
            return rc, be._unpack_record(fetch.record)

        rc, t = read(wrong)
        assert rc == lib.PMC_READ_OK and t[0] == first.id
        assert t[2] == route.path_hash ^ 1   # the route's hash, as given: not the kernel's
        os.rmdir(cgroups.make("made-and-removed"))
        assert fetch.renames() == count and read(wrong)[0] == lib.PMC_READ_OK

        os.rename(stranger, stranger + "-renamed")
        assert fetch.renames() == count + 1
        assert read(wrong)[0] == lib.PMC_READ_OTHER   # hashed: not the route's path
        assert wrong.renames == count                 # and not proven again
        rc, t = read(route.proof)
        assert rc == lib.PMC_READ_OK and t[2] == route.path_hash
        assert route.proof.renames == count + 1       # proven again at the new count
        assert reader.read(path).id == first.id
        os.rename(stranger + "-renamed", stranger)


class Rotation:
    """A thread that rotates the names of two sibling cgroups, x -> t,
    y -> x, t -> y, with a pause after each rename, and counts the renames
    done. holder(k): which of the two had the name x after k renames."""

    ORDER = ("a", None, "b", "b", None, "a")

    def __init__(self, parent: str, steps: int, pause: float) -> None:
        self.parent, self.steps, self.pause = parent, steps, pause
        self.done = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def holder(cls, k: int):
        return cls.ORDER[k % 6]

    def _run(self) -> None:
        x, y, t = (os.path.join(self.parent, n) for n in ("x", "y", "t"))
        try:
            for k in range(self.steps):
                os.rename(*((x, t), (y, x), (t, y))[k % 3])
                self.done += 1
                time.sleep(self.pause)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def __enter__(self) -> "Rotation":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive(), "the rename thread hung"
        assert self.error is None, f"the rename thread failed: {self.error!r}"


@pytest.mark.parametrize("below", ["", "c"])
def test_reads_against_a_rename_rotation(bpf_ok, v1_cgroups, below):
    """read(x) (or read(x/c), whose parent is renamed) while two cgroups
    take turns at the name x: each answer is the cgroup that had the path
    at some time during the call, with that cgroup's own limit, or
    CgroupNotFound when, for a time during the call, no cgroup had it."""
    cgroups = v1_cgroups
    ids, limits = {}, {}
    for i, name in enumerate(("x", "y")):
        top = cgroups.make(f"rot/{name}")
        leaf = cgroups.make(f"rot/{name}/{below}") if below else top
        _set_limit(leaf, (64 + i) * MiB)
        who = "ab"[i]
        ids[who] = os.stat(leaf).st_ino
        limits[ids[who]] = (64 + i) * MiB
    parent = os.path.dirname(top)
    path = os.path.join(parent, "x", below) if below else os.path.join(parent, "x")
    seen = {"unhashed": 0, "present": 0, "gone": 0}
    with pymemcg.Reader(STATS, backend="bpf", shared_pins=False) as reader:
        fetch = reader._backend._fetch
        with Rotation(parent, steps=120, pause=0.003) as rot:
            while rot._thread.is_alive():
                before = rot.done
                count = fetch.renames() if fetch is not None else None
                route = reader._backend._routes.get(path)
                unhashed = route is not None and route.proof is not None and \
                    route.proof.renames == count
                try:
                    rec: Record | None = reader.read(path)
                except pymemcg.CgroupNotFound:
                    rec = None
                after = rot.done
                # the names during the call: every state from the one before
                # it to one past the last counted (a rename under way)
                allowed = {Rotation.holder(k) for k in range(before, after + 2)}
                if rec is None:
                    assert None in allowed, (before, after)
                    seen["gone"] += 1
                    continue
                assert rec.id in {ids[w] for w in allowed if w is not None}, \
                    (rec.id, before, after, allowed)
                assert rec["limit"] == limits[rec.id]
                seen["present"] += 1
                seen["unhashed"] += unhashed
        assert reader.read(os.path.join(parent, "y", below) if below
                           else os.path.join(parent, "y")).id in ids.values()
    assert seen["present"] and seen["gone"], seen
    if fetch is not None:
        assert seen["unhashed"], seen   # the unhashed path was read, and checked
