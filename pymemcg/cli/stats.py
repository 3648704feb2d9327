"""`pymemcg stats`: every stat, its unit, and how this host serves it."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from ..reader import stats as list_stats
from .running import EXIT_OK


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    infos = list_stats(local=args.local)
    if args.format == "json":
        json.dump([{"name": s.name, "unit": s.unit, "available": s.available,
                    "backend": s.backend, "via": s.via, "meaning": s.meaning} for s in infos],
                  out, indent=2)
        out.write("\n")
        return EXIT_OK
    header = ["name", "unit", "available", "backend", "via"]
    rows = [[s.name, s.unit, "yes" if s.available else "no", s.backend or "-", s.via]
            for s in infos]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header) - 1)]
    for r in [header] + rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] + "\n")
    return EXIT_OK
