"""container_oom_events_total from OOM kill events (pymemcg.oom), for the
exporters (pymemcg.prometheus, pymemcg.otel).

cAdvisor counts, per container, the OOM kills whose victim was in it
(task_memcg of the kernel log's oom-kill line) since cAdvisor started,
exports the count for every container it knows (0 without kills), and
drops a container's series when the container is destroyed
(manager/manager.go watchForNewOoms; a kill is counted only where the
container is still known when its log line is parsed, so the kill that ends
a container is mostly lost). Here the counts come from BPF events that
carry the victim cgroup's id and path read at the kill: a kill in a cgroup
removed before the next scrape is counted and exported under that path.
A removed cgroup's series is then dropped as cAdvisor drops a destroyed
container's, but only `retention` seconds after the first scrape that found
it gone (cAdvisor's own is dropped at once, before a scraper could see the
last kill).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from . import forksafe
from .containers import CgroupIdentity, identify
from .decode import Snapshot
from .errors import InvalidArgument
from .exposition import IDENTITY_LABELS, TreeLabels
from .names import escape
from .oom import OomEvent, OomEvents, OomEventsLost

_log = logging.getLogger(__name__)

#: seconds a removed cgroup's series stays (several scrape intervals)
DEFAULT_RETENTION = 300.0
#: removed cgroups kept at most; beyond, the longest gone are dropped first
MAX_GONE = 65536

NAME = "container_oom_events_total"
HELP = "Count of out of memory events observed for the container"
LOST_NAME = "pymemcg_oom_events_lost_total"
LOST_HELP = ("OOM kills whose events were lost (the kernel's ring was full) or had no "
             "readable cgroup path: container_oom_events_total misses them")
ERROR_NAME = "pymemcg_oom_events_error"
ERROR_HELP = ("1 if OOM event counting has stopped (the log says why): "
              "container_oom_events_total and pymemcg_oom_events_lost_total are then "
              "left out, not kept at counts that no longer grow; else 0")


class _Count:
    __slots__ = ("path", "count", "gone_at")

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self.gone_at: Optional[float] = None


class OomCounts:
    """Kills per victim cgroup (by kernfs id) since this object was made,
    fed by a thread of its own from `events` (default: new OomEvents with a
    ring of `ring_pages` pages (see OomEvents), closed by close()).

    `series(live_ids)` gives, for one scrape, the counts of the cgroups in
    the tree and those of removed cgroups still within `retention` seconds
    of the first scrape that found them gone."""

    def __init__(self, events: Optional[OomEvents] = None,
                 retention: float = DEFAULT_RETENTION,
                 ring_pages: Optional[int] = None) -> None:
        if not (isinstance(retention, (int, float)) and 0 <= retention < float("inf")):
            raise InvalidArgument(f"retention must be finite seconds >= 0, not {retention!r}")
        if events is not None and ring_pages is not None:
            raise InvalidArgument("ring_pages sizes the OomEvents that OomCounts makes: "
                                  "with events given, size their ring where they are made")
        self.retention = float(retention)
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")
        self._counts: Dict[int, _Count] = {}
        self.missed = 0     # lost events, and events without a path
        self.failed: Optional[str] = None   # why counting stopped, if it did
        self._closing = False
        self._own = events is None
        self.events = events if events is not None else OomEvents(ring_pages=ring_pages)
        self._thread = threading.Thread(target=self._feed, name="pymemcg-oom-counts", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        try:
            for item in self.events:
                self.add(item)
        except Exception as e:  # noqa: BLE001 - a thread's end must be said, not lost
            self.failed = f"{type(e).__name__}: {e}"
        else:
            if self._closing:
                return
            # the events were closed by someone other than close()
            self.failed = "the OOM events were closed"
        _log.error("pymemcg: OOM event counting stopped: %s", self.failed)

    @property
    def stopped(self) -> Optional[str]:
        """Why counting has stopped, or None while it counts. Counts that
        no longer grow are no counts to export: the exporters leave them
        out and say this instead."""
        if self.failed is not None:
            return self.failed
        if not self._thread.is_alive():
            # close(), or the child of a fork (the thread stayed in the parent)
            return "OOM event counting is not running"
        return None

    def add(self, item: object) -> None:
        """Count one item of OomEvents."""
        with self._lock:
            if isinstance(item, OomEventsLost):
                self.missed += item.count
            elif isinstance(item, OomEvent):
                if item.cgroup is None:
                    self.missed += 1
                    return
                entry = self._counts.get(item.cgroup_id)
                if entry is None:
                    entry = self._counts[item.cgroup_id] = _Count(item.cgroup)
                entry.count += 1

    def series(self, live_ids: Sequence[int], now: Optional[float] = None
               ) -> Tuple[Dict[int, int], List[Tuple[str, int]]]:
        """({id: count} of the live cgroups with kills, [(path, count)] of the
        removed ones still kept); ages the removed ones (call once a scrape)."""
        now = time.monotonic() if now is None else now
        live = set(live_ids)
        counts: Dict[int, int] = {}
        gone: List[Tuple[float, int, _Count]] = []
        with self._lock:
            for cgroup_id, entry in list(self._counts.items()):
                if cgroup_id in live:
                    entry.gone_at = None
                    counts[cgroup_id] = entry.count
                    continue
                if entry.gone_at is None:
                    entry.gone_at = now
                if now - entry.gone_at > self.retention:
                    del self._counts[cgroup_id]
                else:
                    gone.append((entry.gone_at, cgroup_id, entry))
            if len(gone) > MAX_GONE:
                gone.sort(key=lambda g: g[0])
                for _, cgroup_id, _ in gone[:len(gone) - MAX_GONE]:
                    del self._counts[cgroup_id]
                gone = gone[len(gone) - MAX_GONE:]
        return counts, [(entry.path, entry.count) for _, _, entry in gone]

    def close(self) -> None:
        """Stop counting; closes the OomEvents if this object made them."""
        self._closing = True
        if self._own:
            self.events.close()
        elif self._thread.is_alive():
            return      # the caller's events: closing them ends the thread
        self._thread.join(timeout=5)


def under(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it (both relative to the hierarchy root)."""
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def gone_identity(path: str) -> Optional[CgroupIdentity]:
    """The identity of a removed cgroup's path, or None where cAdvisor
    exports nothing for it."""
    ident = identify(path)
    return None if ident.cadvisor_skips else ident


Row = Tuple[List[str], List[str], int]


class Rows:
    """A scrape's container_oom_events_total rows, as (label names, label
    values, count): every cgroup of the tree cAdvisor exports (0 without
    kills), labelled as the exporter's other cAdvisor metrics ("id" and the
    identity labels), then the removed cgroups still kept, below `root`
    (relative to the hierarchy root). Label sets per tree shape are cached."""

    def __init__(self, counts: OomCounts, root: str) -> None:
        self.counts = counts
        self.root = root or "/"
        self._labels: Optional[TreeLabels] = None
        self._lock = threading.Lock()
        forksafe.renew_in_child(self, "_lock")

    def rows(self, snap: Snapshot) -> List[Row]:
        with self._lock:
            labels = self._labels
            if labels is None or not labels.same_shape(snap.shared_paths):
                labels = self._labels = TreeLabels(snap.shared_paths)
        ids = snap.ids()
        live, gone = self.counts.series(ids)
        names = ["id", *labels.cadvisor_names]
        out: List[Row] = [(names, list(values), live.get(ids[row], 0))
                          for row, values in zip(labels.cadvisor_rows, labels.cadvisor_values)]
        for path, count in gone:
            ident = gone_identity(path)
            if ident is None or not under(path, self.root):
                continue
            extra = [n for n in IDENTITY_LABELS
                     if n in labels.cadvisor_names or getattr(ident, n)]
            out.append((["id", *extra], [escape(path), *(getattr(ident, n) or "" for n in extra)],
                        count))
        return out
