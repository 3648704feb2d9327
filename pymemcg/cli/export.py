"""`pymemcg export`: Prometheus metrics over HTTP, one tree read per scrape
interval (needs the `prometheus` extra)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .. import catalog
from ..errors import BadInterval, InvalidArgument
from ..exposition import DEFAULT_MIN_INTERVAL, interval_seconds
from ..server_limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT
from .options import add_common, default_root, positive_float, positive_int, selection
from .running import EXIT_OK, PROG, Stop, stop_on_sigterm, warnings_said

DEFAULT_LISTEN = "127.0.0.1:9756"


def seconds_or_zero(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    try:
        return interval_seconds("--min-interval", value)
    except BadInterval:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds >= 0") from None


def add_export_options(export: argparse.ArgumentParser) -> None:
    """The options of `pymemcg export`."""
    add_common(export, catalog.DEFAULT_STATS)
    export.add_argument("--listen", "-l", metavar="ADDR:PORT", default=DEFAULT_LISTEN,
                        help=f"address to serve on (default {DEFAULT_LISTEN}; :9756 for every "
                             f"address; port 0 picks a free one)")
    export.add_argument("--min-interval", metavar="S", type=seconds_or_zero,
                        default=DEFAULT_MIN_INTERVAL,
                        help=f"scrapes within S seconds of the last tree read share it (default "
                             f"{DEFAULT_MIN_INTERVAL:g}; 0: a read per scrape): clients that "
                             f"scrape faster cannot make the exporter walk the cgroups faster")
    export.add_argument("--no-cadvisor", action="store_true",
                        help="only the memcg_<stat> metrics")
    export.add_argument("--numa", action="store_true",
                        help="also cAdvisor's container_memory_numa_pages{type,scope,node}: "
                             "a series per type, scope and NUMA node with memory")
    export.add_argument("--oom-events", action="store_true",
                        help="container_oom_events_total from OOM kill events (BPF), counted "
                             "also for cgroups removed right after the kill, instead of from "
                             "each cgroup's own oom_kill count")
    export.add_argument("--oom-retention", metavar="S", type=seconds_or_zero, default=300.0,
                        help="seconds a removed cgroup's container_oom_events_total stays "
                             "exported with --oom-events (default 300)")
    export.add_argument("--oom-ring-pages", metavar="N", type=positive_int,
                        help="the OOM events' kernel ring in pages, a power of two, with "
                             "--oom-events (default 256 KiB worth): kills that come while it "
                             "is full are counted in pymemcg_oom_events_lost_total")
    export.add_argument("--web-config", metavar="FILE",
                        help="TLS and basic auth, in Prometheus exporters' web-config.yml "
                             "format (needs `pip install 'pymemcg[web]'`)")
    export.add_argument("--read-timeout", metavar="S", type=positive_float,
                        default=DEFAULT_READ_TIMEOUT,
                        help=f"seconds a client has to send a whole request, the TLS "
                             f"handshake included, from its connect or its previous answer "
                             f"(default {DEFAULT_READ_TIMEOUT:g}); then it is closed")
    export.add_argument("--write-timeout", metavar="S", type=positive_float,
                        default=DEFAULT_WRITE_TIMEOUT,
                        help=f"seconds an answer may take to make, and again to write "
                             f"(default {DEFAULT_WRITE_TIMEOUT:g}): a client that reads slower "
                             f"is closed")
    export.add_argument("--max-connections", metavar="N", type=positive_int,
                        default=DEFAULT_MAX_CONNECTIONS,
                        help=f"clients connected at once (default {DEFAULT_MAX_CONNECTIONS}); "
                             f"at the cap a new one replaces the one that has waited longest, "
                             f"so prompt scrapers are served while idle ones fill the rest. "
                             f"Lowered, with a warning, to what the open-file limit allows")


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from ..cgroupfs import resolve_cgroup
    from ..server_limits import Limits
    from ..prometheus import MemcgCollector, listen_url, make_server, parse_listen
    host, port = parse_listen(args.listen)
    limits = Limits(args.read_timeout, args.write_timeout, args.max_connections)
    web = None
    if args.web_config is not None:    # a bad file fails before the BPF program loads
        from .. import web_config
        web = web_config.load(args.web_config)
    if args.oom_ring_pages is not None and not args.oom_events:
        raise InvalidArgument("--oom-ring-pages sizes the ring of --oom-events: add "
                              "--oom-events, or leave --oom-ring-pages out")
    for asked, option in ((args.oom_events, "--oom-events"), (args.numa, "--numa")):
        if asked and (args.no_cadvisor or args.local):
            raise InvalidArgument(f"{option} serves one of cAdvisor's metrics, which "
                                  "--no-cadvisor and --local leave out: drop one or the other")
    names = selection(args, catalog.DEFAULT_STATS)
    root = default_root(args.root)
    # a ROOT that is no cgroup fails here, as `snapshot` does, rather than serving
    # pymemcg_scrape_error 1 from the start (one that goes away later is served so)
    resolve_cgroup(root)
    with stop_on_sigterm():
        try:
            with warnings_said():
                collector = MemcgCollector(root, names, local=args.local, backend=args.backend,
                                           cadvisor=not args.no_cadvisor and not args.local,
                                           flush=args.flush, min_interval=args.min_interval,
                                           oom_events=args.oom_events,
                                           oom_retention=args.oom_retention,
                                           oom_ring_pages=args.oom_ring_pages,
                                           numa=args.numa)
            with collector:
                with warnings_said():     # a connection cap lowered to the file limit
                    server = make_server(collector, host, port, limits)
                if web is not None:
                    web_config.secure(server, web)
                oom = collector.oom_rows
                ring = f", OOM events ring {oom.counts.events.ring_bytes} bytes" if oom else ""
                try:
                    print(f"{PROG}: serving memory metrics of {root} on {listen_url(server)} "
                          f"(backend {collector.reader.backend}{ring}); Ctrl-C stops",
                          file=sys.stderr, flush=True)
                    server.serve_forever()
                finally:
                    server.server_close()
        except (KeyboardInterrupt, Stop):
            pass
    return EXIT_OK
