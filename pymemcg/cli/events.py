"""`pymemcg events`: OOM kills as they happen, JSON lines (pymemcg.oom)."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from ..oom import OomEvents
from .running import EXIT_OK, Stop, stop_on_sigterm, write_whole


def cmd_events(args: argparse.Namespace, out: TextIO) -> int:
    """One JSON object per OOM kill, as it happens:

        {"event": "oom_kill", "seq": 1, "time": 1764115200.25, "pid": 4242, "tgid": 4242,
         "comm": "python", "uid": 0, "oom_score_adj": 0, "cgroup": "/kubepods/...",
         "cgroup_id": 1234, "oom_known": true, "global_oom": false,
         "oom_cgroup": "/kubepods/...", "oom_cgroup_id": 1230, "constraint": "memcg",
         "total_vm_kb": 276148, "anon_rss_kb": 32512, ..., "oom_limit_kb": 32768}

    and {"event": "lost", "count": N, "total": T} where events did not fit
    the kernel's ring (--ring-pages makes it larger). Sizes are KiB as the
    kernel logs them, null where unavailable (the OOM's side where
    `oom_known` is false); paths and comm are text (pymemcg.names.escape). Runs until Ctrl-C or SIGTERM, or
    --count kills.
    """
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    kills = 0
    with stop_on_sigterm():
        try:
            with OomEvents(ring_pages=args.ring_pages) as events:
                if args.ready:
                    write_whole(out, dumps({"event": "ready", "method": events.method,
                                            "ring_bytes": events.ring_bytes}) + "\n")
                for item in events:
                    write_whole(out, dumps(item.as_dict()) + "\n")
                    if item.as_dict()["event"] == "oom_kill":
                        kills += 1
                        if args.count is not None and kills >= args.count:
                            break
        except (KeyboardInterrupt, Stop):
            pass
    return EXIT_OK
