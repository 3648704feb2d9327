"""Cgroup names as text: the one escaping rule of every output that must be UTF-8.

A cgroup's name is bytes: cgroupfs accepts any byte except "/" and NUL
(and, at mkdir, newline), and any user a subtree is delegated to can make
one. Python holds such a path as a str decoded with surrogateescape
(os.fsdecode): lossless, and what Record.path and every other str API of
pymemcg give. But an exposition, JSON, CSV, a terminal and an OpenTelemetry
attribute need valid UTF-8, so every output writes a path through
`escape()`:

- "%" becomes "%25";
- each byte that is not part of valid UTF-8 becomes "%HH" (two uppercase
  hex digits);
- so does each byte of a control character (U+0001-U+001F, U+007F,
  U+0080-U+009F) and of the line and paragraph separators (U+2028,
  U+2029): the text is safe to print and holds no line break, whatever a
  reader takes for one (Python's str.splitlines, JavaScript);
- every other character is kept as it is.

So a name that is valid UTF-8 without "%" or control characters (every
name kubelet, the container runtimes and systemd make: systemd's "\\x2d"
stays as it is) is its own text, and cAdvisor's label for it; b"bad\\xffname"
is "bad%FFname". Two distinct names never give the same text: a "%" in the
text always starts an escape, since a literal "%" is escaped too, and each
escape is one byte. Any percent-decoder reads the text back to the bytes
(Python: urllib.parse.unquote_to_bytes); `unescape()` does, and also
refuses text this rule does not write.

Formats add their own quoting on top: the Prometheus text format escapes
backslash and double quote in the label value, JSON and CSV quote as they
do.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Union

from .errors import MalformedName

# what escape() changes: "%", controls, and (in a str from os.fsdecode) the
# surrogates that stand for bytes that are not UTF-8; any other surrogate
# sends a str to the slow path, where os.fsencode refuses it
_CHANGED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029%\ud800-\udfff]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UTF8_FS = sys.getfilesystemencoding().lower() in ("utf-8", "utf8")


def _escaped(m: "re.Match[str]") -> str:
    ch = m.group()
    if "\udc80" <= ch <= "\udcff":          # surrogateescape's stand-in for one byte
        return "%%%02X" % (ord(ch) - 0xDC00)
    return "".join("%%%02X" % b for b in ch.encode("utf-8"))


def escape(path: Union[str, bytes]) -> str:
    """The text form of a cgroup name or path (bytes, or a str as
    os.fsdecode gives it): valid UTF-8, printable, one text per name."""
    if isinstance(path, str):
        if _UTF8_FS and _CHANGED.search(path) is None:
            return path
        try:
            path = os.fsencode(path)
        except UnicodeEncodeError:
            raise MalformedName(f"{path!r} holds a surrogate that no file name decodes to: "
                                f"pass the path as bytes, or as os.fsdecode gives it") from None
    text = bytes(path).decode("utf-8", "surrogateescape")
    return _CHANGED.sub(_escaped, text)


def unescape(text: str) -> bytes:
    """The name or path whose escape() is `text`, as bytes. Raises
    MalformedName for text that escape() does not write (a stray "%",
    lowercase hex, an escape of a byte that needs none, a control character)."""
    if not isinstance(text, str):
        raise MalformedName(f"{text!r} is not text: pass the str that pymemcg wrote")
    parts = _ESCAPE.split(text)
    try:
        raw = b"".join(bytes.fromhex(p) if i % 2 else p.encode("utf-8")
                       for i, p in enumerate(parts))
    except UnicodeEncodeError:
        raw = None
    if raw is None or escape(raw) != text:
        raise MalformedName(f"{text!r} is not a cgroup name as pymemcg writes it (see "
                            f"pymemcg.names): pass the label, field or cell exactly as pymemcg "
                            f"wrote it")
    return raw


def unescape_path(text: str) -> str:
    """unescape() as a str path (os.fsdecode), what pymemcg.Reader and
    Snapshot take: snapshot[unescape_path(label)]."""
    return os.fsdecode(unescape(text))
