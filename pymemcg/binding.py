"""The compiled part: the cffi binding of the C shim (csrc/pmc_shim.h)."""

from __future__ import annotations

from typing import Any, Tuple

from .errors import ExtensionMissing
from .record_format import check_compiled

REMEDY = ("install a pymemcg wheel for this platform (manylinux_2_28 x86_64 or aarch64), or "
          "install a C compiler and the libelf and zlib headers (Debian: gcc libelf-dev "
          "zlib1g-dev; RHEL: gcc elfutils-libelf-devel zlib-devel) and reinstall from the "
          "sdist; backend='text' reads memory.stat without it")


def build_note() -> str | None:
    """Why setup.py installed pymemcg without its compiled part, or None (it
    was built, or this is a checkout or an older install without the note)."""
    try:
        from ._build_note import EXTENSION_MISSING_REASON
    except ImportError:
        return None
    reason: str = EXTENSION_MISSING_REASON
    return reason


_checked = False


def load() -> Tuple[Any, Any]:
    """(ffi, lib) of the extension, or ExtensionMissing naming cause and remedy
    (also where the extension was built from another bpf_src/memcg_record.h
    than the Python's record format, pymemcg/_record_h.py)."""
    global _checked
    try:
        from ._pymemcg import ffi, lib
    except ImportError as e:
        cause = build_note() or f"pymemcg._pymemcg does not import ({e})"
        raise ExtensionMissing(f"pymemcg has no compiled part: {cause}; {REMEDY}") from None
    if not _checked:
        differs = check_compiled(ffi, lib)
        if differs is not None:
            raise ExtensionMissing(f"pymemcg's compiled part and its Python come from different "
                                   f"builds of the record format ({differs}): reinstall pymemcg")
        _checked = True
    return ffi, lib
