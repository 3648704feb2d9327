"""The comparison: BPF's values against the kernel's files, each BPF read
bracketed by two reads of the files, over every cgroup of the probe,
hierarchical and local, single reads and one tree walk; and each served
stat's outcome over all of its checks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import catalog
from ..decode import MAX, Value
from ..numa import NUMA_FILE, is_numa
from .files import V1_KMEM_FILE, FileValues, file_values, read_files
from .probe import LEAVES, PROBE_CGROUPS
from .results import EXACT, MISMATCH, NOT_COMPARED, Check, StatResult

if TYPE_CHECKING:
    from ..reader import Reader
    from .probe import Probe

#: the kernel folds per-CPU stat updates in at least this often (seconds)
FLUSH_PERIOD_S = 2.0

Key = Tuple[str, bool, str]     # (cgroup, local, method)


def compare(bpf: Mapping[str, Optional[Value]], before: FileValues, after: FileValues,
            names: Sequence[str]) -> Dict[str, Tuple[str, Optional[Value], Optional[Value], str]]:
    """Decide each of `names` from one bracketed read: files, BPF, files.

    Returns name -> (outcome, bpf value, file value, why) for every name whose
    file value held still across the BPF read (the same before and after):
    EXACT when BPF read that value, MISMATCH otherwise. Names whose file value
    moved are left out: the caller reads them again.
    """
    out: Dict[str, Tuple[str, Optional[Value], Optional[Value], str]] = {}
    for name in names:
        if name not in before or name not in after:
            continue
        (was, _), (now, _) = before[name], after[name]
        if was != now:
            continue
        got = bpf.get(name)
        if got == now:
            out[name] = (EXACT, got, now, "")
        elif got is None:
            out[name] = (MISMATCH, None, now, "BPF returned no value for it")
        else:
            diff = f" (difference {got - now:+d})" if isinstance(got, int) and \
                isinstance(now, int) else ""
            out[name] = (MISMATCH, got, now, f"BPF read {got}, the file says {now}{diff}")
    return out


def served_by_bpf(reader: Reader) -> List[str]:
    """The stats `reader` serves through BPF, in its order."""
    return [n for n, src in reader.sources.items() if src.startswith("bpf/")]


def compare_probe(probe: Probe, version: int, hier: Sequence[Reader], local: Sequence[Reader],
                  attempts: int) -> Tuple[Dict[str, List[Check]], List[str], int]:
    """Every check of every served stat, by name, the served names in catalog
    order (then the NUMA ones), and the rounds of reads it took: single
    reads and tree walks, hierarchical and local, read again while a value
    moves. hier, local: the readers of each (the catalog's stats, and the
    NUMA ones, which do not fit the same record)."""
    groups = {False: list(hier), True: list(local)}
    readers = {k: (rs, [n for r in rs for n in served_by_bpf(r)]) for k, rs in groups.items()}
    both = set(readers[False][1]) | set(readers[True][1])
    served = [n for n in catalog.STATS if n in both] + \
        [n for n in dict.fromkeys(readers[False][1] + readers[True][1]) if n not in catalog.STATS]
    decided: Dict[Tuple[Key, str], Check] = {}
    moving: Dict[Tuple[Key, str], Check] = {}
    lag_since: Dict[Tuple[Key, str], float] = {}
    rels = PROBE_CGROUPS

    def expect(files: Mapping[str, Optional[str]], is_local: bool, rel: str) -> FileValues:
        return file_values(files, version, is_local, rel in LEAVES)[0]

    def settle_one(key: Key, bpf: Dict[str, Optional[Value]], before: FileValues,
                   after: FileValues) -> None:
        rel, is_local, method = key
        names = [n for n in readers[is_local][1] if (key, n) not in decided]
        outcomes = compare(bpf, before, after, names)
        for n in names:
            if n not in after:
                continue
            if n in outcomes:
                outcome, got, want, why = outcomes[n]
                if outcome == MISMATCH and after[n][1].startswith(V1_KMEM_FILE):
                    # a live counter against a flushed stat: they agree once
                    # the kernel's next periodic flush has folded the stat in
                    age = time.monotonic() - lag_since.setdefault((key, n), time.monotonic())
                    if age <= FLUSH_PERIOD_S + 0.5:
                        moving[(key, n)] = Check(
                            rel, is_local, method, after[n][1], got, want, MISMATCH,
                            f"{why}; still so {age:.1f} s after it was first seen (the file is "
                            f"a live page counter, the stat is flushed every "
                            f"{FLUSH_PERIOD_S:g} s)")
                        continue
                decided[(key, n)] = Check(rel, is_local, method, after[n][1], got, want,
                                          outcome, why)
                moving.pop((key, n), None)
            else:
                was, now = before.get(n, (None, ""))[0], after[n][0]
                moving[(key, n)] = Check(
                    rel, is_local, method, after[n][1], bpf.get(n), now, MISMATCH,
                    f"the file's value moved in each of {attempts} reads (last: from {was} "
                    f"to {now}, BPF read {bpf.get(n)} between): the probe never went quiet")

    rounds = 0
    for attempt in range(attempts):
        rounds += 1
        # single reads: files, BPF (hierarchical and local), files
        for rel in rels:
            path = probe.cgroup(rel)
            files0 = read_files(path, version)
            recs = {is_local: {k: v for r in rs for k, v in r.read(path).as_dict().items()}
                    for is_local, (rs, _) in readers.items()}
            files1 = read_files(path, version)
            for is_local in readers:
                settle_one((rel, is_local, "read"), recs[is_local],
                           expect(files0, is_local, rel), expect(files1, is_local, rel))
        # one tree walk of the probe per reader, bracketed the same way
        for is_local, (rs, _) in readers.items():
            tree0 = {rel: read_files(probe.cgroup(rel), version) for rel in rels}
            snaps = [r.read_tree(probe.path) for r in rs]
            tree1 = {rel: read_files(probe.cgroup(rel), version) for rel in rels}
            for rel in rels:
                bpf = {}
                for snap in snaps:
                    key = snap.root if rel == "." else snap.root.rstrip("/") + "/" + rel
                    bpf.update(snap[key].as_dict() if key in snap else {})
                settle_one((rel, is_local, "read_tree"), bpf, expect(tree0[rel], is_local, rel),
                           expect(tree1[rel], is_local, rel))
        if not moving:
            break
        time.sleep(0.2 * (attempt + 1))

    checks: Dict[str, List[Check]] = {}
    for (_, name), check in list(decided.items()) + list(moving.items()):
        checks.setdefault(name, []).append(check)
    for name in checks:
        checks[name].sort(key=lambda c: (c.local, rels.index(c.cgroup), c.method))
    return checks, served, rounds


def why_not_compared(probe: Probe, version: int, hier: Sequence[Reader],
                     local: Sequence[Reader]) -> Dict[str, str]:
    """Why a served stat has no file to compare with: the probe's reason,
    hierarchical first, then local (read from the now quiet files)."""
    files = read_files(probe.path, version)
    out: Dict[str, str] = {}
    served_h = {n for r in hier for n in served_by_bpf(r)}
    served_l = {n for r in local for n in served_by_bpf(r)}
    for is_local, served in ((False, served_h), (True, served_l)):
        values, why = file_values(files, version, is_local, False)
        for name in served:
            if is_numa(name) and name not in why and name not in values:
                # --- NUMA: the file's reason, or a line it does not print ---
                why[name] = why.get(NUMA_FILE, f"this kernel's {NUMA_FILE} does not print "
                                               f"{name.split(':')[0]}")
            if name in why and why[name] != out.get(name):
                text = ("local values: " if is_local and name in out else "") + why[name]
                out[name] = "; ".join(filter(None, (out.get(name), text)))
    return out


def summarise(name: str, checks: List[Check], why_not: str) -> StatResult:
    """One served stat's outcome over all of its checks (`why_not`: why no
    file prints it, for a stat with no check)."""
    against = list(dict.fromkeys(c.against for c in checks))
    if not checks:
        return StatResult(name, NOT_COMPARED, None, None, why_not or "no kernel file prints "
                          "it here", against)
    bad = [c for c in checks if c.outcome == MISMATCH]
    # the largest value set, a limit not set (MAX) only where every one is
    shown = bad[0] if bad else max(checks, key=lambda c: -1 if c.file is MAX else c.file or 0)
    why = f"{shown.cgroup} {'local' if shown.local else 'hierarchical'} ({shown.method}): " \
          f"{shown.why}" if bad else ""
    return StatResult(name, MISMATCH if bad else EXACT, shown.bpf, shown.file, why, against,
                      checks)

