"""pymemcg: memory-cgroup statistics read through BPF (a cgroup iterator program,
and a BPF_PROG_RUN fetch program where the kernel takes it), with memory.stat as
the last resort.

    import pymemcg
    with pymemcg.Reader(stats=["anon", "file", "usage", "pgfault"]) as r:
        one = r.read("/sys/fs/cgroup/memory/some/group")
        tree = r.read_tree("/sys/fs/cgroup/memory")

Sizes are bytes and events counts, as memory.stat prints them. Nothing
happens at import time: the BPF program loads when a Reader is made.
"""

from .catalog import DEFAULT_STATS
from .decode import MAX, Record, Snapshot
from .errors import (BadInterval, BadRingSize, BpfUnavailable, CgroupNotFound, Closed, Error, ExtensionMissing,
                     FlushUnavailable, InvalidArgument, InvalidPin, ListenError,
                     MalformedData, MalformedName, NoBtf, NumaNodesChanged,
                     NoMemoryController, NotACgroup, NotAPin, OpenTelemetryMissing,
                     PermissionDenied, PinGone, PinMismatch, PinMoved, PinTooSmall,
                     PrometheusClientMissing, ReadError,
                     SelectionMismatch, StatUnavailable, UnknownStat, UntrustedMetadata,
                     VerifierRejected, VerifyUnavailable, WebConfigError, WebConfigExtraMissing)
from .reader import FallbackWarning, Reader, StatInfo, stats

from ._version import __version__


def __getattr__(name: str) -> object:
    """pins (shared pins: pin(), PinReader) and verify (the proof of exact
    on this host, `pymemcg verify`), imported when first asked for: most
    processes use neither, and importing them is a third of the package's."""
    import importlib
    if name == "pins":
        return importlib.import_module(".pins", __name__)
    if name == "verify":
        verify: object = importlib.import_module(".parity", __name__).verify
        return verify
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Reader", "Record", "Snapshot", "MAX", "stats", "StatInfo", "DEFAULT_STATS", "FallbackWarning",
    "Error", "BpfUnavailable", "CgroupNotFound", "Closed", "ExtensionMissing", "FlushUnavailable",
    "InvalidArgument", "MalformedData", "MalformedName", "NoBtf", "NumaNodesChanged",
    "NoMemoryController", "NotACgroup", "PermissionDenied", "ReadError", "SelectionMismatch",
    "StatUnavailable", "UnknownStat", "VerifierRejected", "VerifyUnavailable", "verify",
    "InvalidPin", "NotAPin", "PinGone", "PinMismatch", "PinMoved", "PinTooSmall",
    "UntrustedMetadata", "BadInterval", "BadRingSize", "ListenError", "PrometheusClientMissing",
    "OpenTelemetryMissing", "WebConfigError", "WebConfigExtraMissing",
    "__version__", "pins",
]
