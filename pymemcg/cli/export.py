"""`pymemcg export`: Prometheus metrics over HTTP, one tree read per scrape
(needs the `prometheus` extra)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .. import catalog
from .options import default_root, selection
from .running import EXIT_OK, PROG, Stop, stop_on_sigterm, warnings_said

DEFAULT_LISTEN = "127.0.0.1:9756"


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from ..prometheus import MemcgCollector, listen_url, make_server, parse_listen
    host, port = parse_listen(args.listen)
    web = None
    if args.web_config is not None:    # a bad file fails before the BPF program loads
        from .. import web_config
        web = web_config.load(args.web_config)
    names = selection(args, catalog.DEFAULT_STATS)
    root = default_root(args.root)
    with stop_on_sigterm():
        try:
            with warnings_said():
                collector = MemcgCollector(root, names, local=args.local, backend=args.backend,
                                           cadvisor=not args.no_cadvisor and not args.local,
                                           flush=args.flush)
            with collector:
                server = make_server(collector, host, port)
                if web is not None:
                    web_config.secure(server, web)
                try:
                    print(f"{PROG}: serving memory metrics of {root} on {listen_url(server)} "
                          f"(backend {collector.reader.backend}); Ctrl-C stops",
                          file=sys.stderr, flush=True)
                    server.serve_forever()
                finally:
                    server.server_close()
        except (KeyboardInterrupt, Stop):
            pass
    return EXIT_OK
