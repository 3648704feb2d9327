"""What `pymemcg.verify()` finds: one Check a comparison, one StatResult a
served stat, one Result the whole run, and the three outcomes. Sizes are
bytes and events counts, as memory.stat prints them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..decode import Value, json_value

EXACT = "exact"
MISMATCH = "mismatch"
NOT_COMPARED = "not compared"


@dataclass
class Check:
    """One comparison: a stat of one cgroup, read one way."""

    cgroup: str            # relative to the probe ("." is the probe)
    local: bool
    method: str            # "read" or "read_tree"
    against: str           # the file and key, e.g. "memory.stat total_rss"
    bpf: Optional[Value]
    file: Optional[Value]
    outcome: str           # EXACT or MISMATCH
    why: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {"cgroup": self.cgroup, "local": self.local, "method": self.method,
                "against": self.against, "bpf": json_value(self.bpf),
                "file": json_value(self.file),
                "outcome": self.outcome, **({"why": self.why} if self.why else {})}


@dataclass
class StatResult:
    """One served stat: its outcome over every check made of it.

    exact: every check equal (at least one made); mismatch: any check
    differed; not compared: no kernel file prints it here (`why` says so).
    `bpf`/`file` are the first mismatch's values, else those of the check
    with the largest value (the most telling one).
    """

    name: str
    outcome: str
    bpf: Optional[Value]
    file: Optional[Value]
    why: str
    against: List[str] = field(default_factory=list)
    checks: List[Check] = field(default_factory=list)

    @property
    def nonzero(self) -> bool:
        """Whether some exact check compared a value other than 0."""
        return any(c.outcome == EXACT and c.file for c in self.checks)

    def as_dict(self, checks: bool = True) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "outcome": self.outcome,
               "bpf": json_value(self.bpf), "file": json_value(self.file),
               "why": self.why, "against": self.against, "nonzero": self.nonzero,
               "comparisons": len(self.checks)}
        if checks:
            out["checks"] = [c.as_dict() for c in self.checks]
        return out


@dataclass
class Result:
    """What verify() found. `ok` is False when any stat mismatched."""

    kernel: str
    cgroup_version: int
    backend: str             # "bpf (core)", "bpf (kfunc, local: core)"
    read_method: str
    probe: str               # the probe's path (removed by now)
    stats: List[StatResult]
    workload: Dict[str, Any]
    duration_s: float

    @property
    def ok(self) -> bool:
        return not any(s.outcome == MISMATCH for s in self.stats)

    @property
    def counts(self) -> Dict[str, int]:
        """served, exact, mismatch, not compared, exact_nonzero, comparisons."""
        out = {"served": len(self.stats), EXACT: 0, MISMATCH: 0, NOT_COMPARED: 0}
        for s in self.stats:
            out[s.outcome] += 1
        out["exact_nonzero"] = sum(1 for s in self.stats if s.outcome == EXACT and s.nonzero)
        out["comparisons"] = sum(len(s.checks) for s in self.stats)
        return out

    def as_dict(self, checks: bool = True) -> Dict[str, Any]:
        return {"kernel": self.kernel, "cgroup_version": self.cgroup_version,
                "backend": self.backend, "read_method": self.read_method,
                "ok": self.ok, "counts": self.counts, "duration_s": self.duration_s,
                "probe": self.probe, "workload": self.workload,
                "stats": [s.as_dict(checks) for s in self.stats]}
