"""The compiled part: the cffi binding of the C shim (csrc/pmc_shim.h)."""

from __future__ import annotations

from .errors import BpfUnavailable


def load():
    """(ffi, lib) of the extension, or BpfUnavailable naming the remedy."""
    try:
        from ._pymemcg import ffi, lib
    except ImportError as e:
        raise BpfUnavailable(f"the compiled part of pymemcg is missing ({e}): reinstall with "
                             f"`pip install .` from a checkout, or use backend='text'") from None
    return ffi, lib
