"""Where the kernel matrix keeps its files, and what all of vm/ shares: the
log line, the error type, and the lock that lets one run at a time use
build/vm/."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "vm"
RESULTS = BUILD / "results"


def log(msg: str) -> None:
    print(f"[matrix {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class MatrixError(Exception):
    pass


def acquire_lock():
    """One run at a time per checkout (they share build/vm/run and results)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    lock = open(BUILD / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another matrix run in this checkout holds build/vm/.lock: waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock
