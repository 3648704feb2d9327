"""Exceptions. Every message names the cause and the remedy."""

from __future__ import annotations

#: how many characters of a caller's value a message quotes
QUOTE_WIDTH = 80


def quoted(value: object, width: int = QUOTE_WIDTH) -> str:
    """repr(value), cut to about `width` characters: a message names what it
    was given without repeating a value of any size in full."""
    text = repr(value)
    if len(text) <= width:
        return text
    return f"{text[:width - 20]}...({len(text)} characters)"


class Error(Exception):
    """Base class of every error pymemcg raises on purpose."""


class InvalidArgument(Error, TypeError, ValueError):
    """An argument of the wrong type or value (Reader(local="yes")); the
    message names the argument and what it accepts. Also a TypeError and a
    ValueError, which is what callers catch for a bad argument elsewhere."""


class CgroupNotFound(Error, FileNotFoundError):
    """The path does not exist."""


class NotACgroup(Error, ValueError):
    """The path exists but is not a cgroup directory."""


class NoMemoryController(Error, ValueError):
    """The cgroup is on a hierarchy without the memory controller."""


class UnknownStat(Error, KeyError):
    """A stat name pymemcg does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StatUnavailable(Error, KeyError):
    """A known stat that this kernel or backend cannot serve exactly."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BpfUnavailable(Error, RuntimeError):
    """The BPF backend cannot run on this host (privileges, BTF, bpffs, kernel)."""


class ExtensionMissing(BpfUnavailable):
    """This install has no compiled part (pymemcg._pymemcg), so no BPF."""


class PermissionDenied(BpfUnavailable, PermissionError):
    """The process lacks the privileges to load BPF programs."""


class NoBtf(BpfUnavailable):
    """The running kernel exposes no BTF (/sys/kernel/btf/vmlinux)."""


class FlushUnavailable(BpfUnavailable):
    """flush=True on a kernel without a memcg flush kfunc."""


class VerifierRejected(BpfUnavailable):
    """The kernel's verifier rejected the program; `log` holds its log."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log

    def __str__(self) -> str:
        text = super().__str__()
        if self.log:
            tail = self.log.strip().splitlines()[-40:]
            text += "\n--- verifier log (last lines) ---\n" + "\n".join(tail)
        return text


class BadRingSize(InvalidArgument):
    """OomEvents(ring_pages=...) that the kernel cannot take as a ring
    buffer's size: not a power of two pages, or too large."""


class NumaNodesChanged(Error, RuntimeError):
    """The set of NUMA nodes with memory changed (memory hotplug) since the
    Reader's NUMA selection was made: its per-node maps would miss nodes or
    name gone ones, so the read is refused."""


class ReadError(Error, OSError):
    """A read of the iterator or of a cgroup file failed."""


class PinnedCgroupRemoved(CgroupNotFound, ReadError):
    """The cgroup a shared pin serves was removed: the pin can never serve
    again (a CgroupNotFound, and the ReadError a pin's reader raised for it
    before)."""


class MalformedData(Error, ValueError):
    """memory.stat text or iterator records that do not parse."""


class SelectionMismatch(MalformedData):
    """The program that wrote the records says they hold another selection
    (stats, order, local) than the reader would decode them as."""


class Closed(Error, RuntimeError):
    """The Reader was used after close()."""


class VerifyUnavailable(Error, RuntimeError):
    """pymemcg.verify() cannot run here (not root, no memory controller,
    BPF unavailable, no cgroup to make its probe in)."""


class MalformedName(Error, ValueError):
    """Text that is not a cgroup name or path as pymemcg.names.escape writes it."""


class BadServerLimit(Error, ValueError):
    """A bound of the exporter's HTTP server that cannot hold: a timeout that
    is not seconds > 0, a connection cap below 1, or a cap the process's
    open-file limit (RLIMIT_NOFILE) leaves no room for."""


class PinTooSmall(ReadError):
    """The pinned tree's records do not fit one iterator session."""


class PinMismatch(Error, ValueError):
    """The pin's metadata is missing or made by another pymemcg build."""


class UntrustedMetadata(PinMismatch):
    """The pin's metadata, or a directory it is in, could have been written
    by someone other than root or this user."""


class InvalidPin(Error, ValueError):
    """pin() was asked for an unsafe or malformed pin, or unpin() to remove
    something it cannot."""


class NotAPin(InvalidPin):
    """unpin() was pointed at something it cannot prove is a pymemcg pin (or
    metadata of that pin): nothing was removed."""


class PinGone(ReadError):
    """The pin is not there any more: unpinned, or its bpffs unmounted."""


class PinMoved(ReadError):
    """The pinned cgroup is no longer at the path the pin was made for
    (cgroup v1 allows renames): another cgroup, or nothing, is there now."""


class PrometheusClientMissing(Error, ImportError):
    """prometheus_client is not installed (the `prometheus` extra)."""


class ListenError(Error, OSError):
    """--listen names an address that cannot be parsed or bound."""


class BadInterval(InvalidArgument):
    """A least time between two tree reads (the exporter's min_interval,
    OpenTelemetry's interval) that is not a finite number of seconds >= 0.
    A ValueError (and a TypeError), as InvalidArgument is."""


class OpenTelemetryMissing(Error, ImportError):
    """opentelemetry-api is not installed (the `otel` extra)."""


class WebConfigError(Error, ValueError):
    """The web config file cannot be used: unreadable, not YAML, a key or value
    it does not allow, a certificate or key that does not load."""


class WebConfigExtraMissing(Error, ImportError):
    """PyYAML or bcrypt is not installed (the `web` extra)."""
