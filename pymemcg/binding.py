"""The compiled part: the cffi binding of the C shim (csrc/pmc_shim.h)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
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


def records() -> Any:
    """pymemcg._records, the single read made in C (csrc/pmc_records.c). It
    is in the same shared object as pymemcg._pymemcg, loaded from that file
    by name, so that both use one copy of the shim."""
    mod = sys.modules.get("pymemcg._records")
    if mod is not None:
        return mod
    load()
    name, path = "pymemcg._records", sys.modules["pymemcg._pymemcg"].__file__
    if path is None:
        raise ExtensionMissing("pymemcg's compiled part has no file to load pymemcg._records "
                               "from: reinstall pymemcg")
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    try:
        assert spec is not None
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
    except ImportError as e:
        raise ExtensionMissing(f"pymemcg's compiled part ({path}) has no pymemcg._records "
                               f"({e}): it is from an older build; reinstall pymemcg") from None
    sys.modules[name] = mod
    return mod


_FIELD = re.compile(r"(\d*)([IQ])")
_WIDTH = {"I": 4, "Q": 8}


def field_widths(fmt: str) -> bytes:
    """Each field's width in bytes of a record's struct format ("<QQQII2Q"):
    what pymemcg._records reads it by. Formats of other field types or byte
    orders are not records: ValueError."""
    if not fmt.startswith("<") or sys.byteorder != "little":
        raise ValueError(f"{fmt!r}: not a little-endian record format on a little-endian host")
    body = fmt[1:]
    parts = _FIELD.findall(body)
    if "".join(count + kind for count, kind in parts) != body:
        raise ValueError(f"{fmt!r}: a record has fields of types I and Q only")
    return bytes(w for count, kind in parts for w in [_WIDTH[kind]] * int(count or 1))
