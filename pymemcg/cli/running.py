"""How a command runs: its exit status, the warnings it says (once, in our own
words), SIGTERM and SIGHUP ending it as Ctrl-C does, and the pace of the
commands that read again and again."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Iterator, Optional, Sequence, TextIO

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


def open_reader(names: Sequence[str], local: bool, backend: str, flush: bool = False,
                for_trees: bool = False) -> Reader:
    """A Reader; the BPF -> text fallback warning is said once, in our own words.
    for_trees: for a command that reads trees alone (Reader(for_trees=True))."""
    with warnings_said():
        return Reader(stats=names, local=local, backend=backend, flush=flush,
                      for_trees=for_trees)


class Stop(Exception):
    """SIGTERM or SIGHUP arrived: leave the loop and close the Reader as on Ctrl-C."""


class _Deferred:
    """A stop signal that arrived while output was being written, kept until
    the write is whole (see whole_output)."""

    writing = 0
    pending: Optional[int] = None


def _stop(signum: int, frame: Any) -> None:
    if _Deferred.writing:
        _Deferred.pending = signum
        return
    raise Stop()


def _interrupt(signum: int, frame: Any) -> None:
    if _Deferred.writing:
        _Deferred.pending = signum
        return
    raise KeyboardInterrupt()


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP, unless ignored as under nohup) into Stop inside
    long-running commands, so that the Reader closes its links and unloads its
    programs instead of the process dying mid-way."""
    installed = []
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            installed.append((sig, signal.signal(sig, _stop)))
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    try:
        yield
    finally:
        for sig, old in installed:
            signal.signal(sig, old)


@contextlib.contextmanager
def whole_output() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait for the output written inside to be
    whole, then stop the command as they would have. An exception raised
    from a signal handler in the middle of a write leaves a cut line behind
    (and a buffered writer may write its tail again at exit): a consumer of
    JSON lines must only ever see whole lines. A reader that never drains
    the pipe keeps the writer waiting, as it would any writer; SIGKILL
    still ends it."""
    main = threading.current_thread() is threading.main_thread()
    old_int = None
    if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        old_int = signal.signal(signal.SIGINT, _interrupt)
    _Deferred.writing += 1
    try:
        yield
    finally:
        _Deferred.writing -= 1
        if old_int is not None:
            signal.signal(signal.SIGINT, old_int)
        pending, _Deferred.pending = _Deferred.pending, None
        if pending is not None and not _Deferred.writing:
            if pending == signal.SIGINT:
                raise KeyboardInterrupt()
            raise Stop()


def write_whole(out: TextIO, text: str) -> None:
    """Write text to out and flush it, whole even if a stop signal arrives
    meanwhile (see whole_output). Where out is a file, the bytes go through
    os.write in a loop: a write(2) that a signal cuts short returns how much
    it wrote, and Python's buffered writer can drop the rest."""
    with whole_output():
        try:
            fd = out.fileno()
        except (AttributeError, ValueError, io.UnsupportedOperation):
            out.write(text)
            out.flush()
            return
        out.flush()
        data = memoryview(text.encode(out.encoding or "utf-8"))
        while data:
            data = data[os.write(fd, data):]


def next_tick(due: float, interval: float) -> float:
    """Sleep until `interval` past `due` and return that time; a loop that fell
    behind starts afresh from now rather than bursting catch-up reads."""
    due += interval
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
        return due
    return time.monotonic()
