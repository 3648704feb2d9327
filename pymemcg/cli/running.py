"""How a command runs: its exit status, the warnings it says (once, in our own
words), SIGTERM and SIGHUP ending it as Ctrl-C does, and the pace of the
commands that read again and again."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import warnings
from typing import Any, Iterator, Sequence

from ..reader import Reader

PROG = "pymemcg"

EXIT_OK = 0
EXIT_DEGRADED = 1       # doctor: BPF does not work here, text does
EXIT_MISMATCH = 1       # verify: a stat differs from the kernel's files
EXIT_USAGE = 2          # argparse uses 2 as well
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def warnings_said() -> Iterator[None]:
    """Warnings raised inside (the BPF -> text fallback) go to stderr as
    `pymemcg: warning: ...`, once each, instead of Python's file:line form."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)


def open_reader(names: Sequence[str], local: bool, backend: str, flush: bool = False) -> Reader:
    """A Reader; the BPF -> text fallback warning is said once, in our own words."""
    with warnings_said():
        return Reader(stats=names, local=local, backend=backend, flush=flush)


class Stop(Exception):
    """SIGTERM or SIGHUP arrived: leave the loop and close the Reader as on Ctrl-C."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP, unless ignored as under nohup) into Stop inside
    long-running commands, so that the Reader closes its links and unloads its
    programs instead of the process dying mid-way."""
    def handler(signum: int, frame: Any) -> None:
        raise Stop()
    installed = []
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            installed.append((sig, signal.signal(sig, handler)))
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    try:
        yield
    finally:
        for sig, old in installed:
            signal.signal(sig, old)


def next_tick(due: float, interval: float) -> float:
    """Sleep until `interval` past `due` and return that time; a loop that fell
    behind starts afresh from now rather than bursting catch-up reads."""
    due += interval
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
        return due
    return time.monotonic()
