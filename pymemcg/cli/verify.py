"""`pymemcg verify`: every stat BPF serves here compared with the kernel's own
files, on a probe cgroup it charges and removes (pymemcg.verify does the work;
this module writes its result as a table or JSON)."""

from __future__ import annotations

import argparse
import json
import os
from typing import TextIO

from ..parity import EXACT, MISMATCH, NOT_COMPARED, Result
from .running import EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, Stop, stop_on_sigterm


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    from ..parity import verify
    with stop_on_sigterm():
        try:
            result = verify(args.parent)
        except Stop:
            return EXIT_INTERRUPTED
    out.write(to_json(result) if args.format == "json" else format_table(result))
    return EXIT_OK if result.ok else EXIT_MISMATCH


def format_table(result: Result) -> str:
    """The result as a plain-text table, one row a served stat, and a summary."""
    c = result.counts
    lines = [f"pymemcg verify: Linux {result.kernel}, cgroup v{result.cgroup_version}, "
             f"{result.backend}, single reads by {result.read_method}",
             f"probe: {len(result.workload['cgroups'])} cgroups under "
             f"{os.path.dirname(result.probe)} (OOM kill "
             f"{'done' if result.workload.get('oom_killed') else 'did not happen'}), "
             f"settled {result.workload['settle_s']} s", ""]
    rows = [("STAT", "OUTCOME", "BPF", "FILE", "AGAINST / WHY")]
    for s in result.stats:
        how = s.why if s.outcome != EXACT else \
            f"{len(s.checks)} checks: {', '.join(s.against)}"
        rows.append((s.name, s.outcome, "-" if s.bpf is None else str(s.bpf),
                     "-" if s.file is None else str(s.file), how))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[4])
    lines += ["", f"{c['served']} stats served by BPF: {c[EXACT]} exact ({c['exact_nonzero']} "
                  f"with a nonzero value), {c[MISMATCH]} mismatched, {c[NOT_COMPARED]} not "
                  f"compared (no kernel file prints them here); {c['comparisons']} "
                  f"comparisons in {result.duration_s} s",
              "verdict: " + ("every compared stat is exact" if result.ok else
                             f"{c[MISMATCH]} stat(s) differ from the kernel's files")]
    return "\n".join(lines) + "\n"


def to_json(result: Result, checks: bool = True) -> str:
    """The result as JSON (see Result.as_dict)."""
    return json.dumps(result.as_dict(checks), indent=2) + "\n"
