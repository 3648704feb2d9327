"""`pymemcg verify`: every stat BPF serves here compared with the kernel's own
files, on a probe cgroup it charges and removes (pymemcg.verify does the work)."""

from __future__ import annotations

import argparse
from typing import TextIO

from .running import EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, Stop, stop_on_sigterm


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    from ..verify import format_table, to_json, verify
    with stop_on_sigterm():
        try:
            result = verify(args.parent)
        except Stop:
            return EXIT_INTERRUPTED
    out.write(to_json(result) if args.format == "json" else format_table(result))
    return EXIT_OK if result.ok else EXIT_MISMATCH
