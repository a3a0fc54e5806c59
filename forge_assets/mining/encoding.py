"""Source bytes to text: the one place a repository blob becomes a string.

``decode_source(data, path)`` honours a coding declaration in the first two lines (PEP 263:
``# -*- coding: latin-1 -*-``, ``# vim: set fileencoding=cp1252 :``, Ruby's ``# encoding: ...``,
or the same Emacs/Vim cookie in a ``//``, ``/*``, ``--``, ``;`` or ``%`` comment) and otherwise reads
UTF-8, strictly. A UTF-8 byte-order mark means UTF-8 whatever a cookie says (as CPython does).
It returns None when the bytes are not valid in that encoding: such files are skipped, never mangled.

Text decoded from another encoding is re-encoded as UTF-8 wherever Forge writes it; the cookie line
stays in the text (it is part of the source).
"""

from __future__ import annotations

import codecs
import re

# PEP 263's regular expression, widened to the other comment leaders a cookie appears behind.
_COOKIE = re.compile(rb"^[ \t\f]*(?:#|//|/\*|--|;|%|\*).*?coding[:=][ \t]*([-\w.]+)")
_BOM = codecs.BOM_UTF8


def declared_encoding(data: bytes, path: str = "") -> str | None:
    """The codec a coding cookie in line 1 or 2 names (normalised, e.g. ``iso8859-1``), or None.

    None as well for a UTF-8 byte-order mark, an unknown codec or a codec that is not a text encoding.
    """
    if data.startswith(_BOM):
        return None
    for i, line in enumerate(data.split(b"\n", 2)[:2]):
        m = _COOKIE.match(line)
        if m:
            try:
                info = codecs.lookup(m.group(1).decode("ascii"))
            except (LookupError, UnicodeDecodeError):
                return None
            return info.name if getattr(info, "_is_text_encoding", True) else None
        # PEP 263: a cookie on line 2 counts only when line 1 is a comment or blank.
        if i == 0 and line.strip() and not line.lstrip().startswith((b"#", b"//", b"/*", b"--", b";", b"%")):
            return None
    return None


def decode_source(data: bytes, path: str = "") -> str | None:
    """A source file's text: the encoding its coding cookie declares, else UTF-8; None if the bytes do not decode.

    ``path`` names the file (for callers' messages and future per-language rules); decoding depends on the bytes only.
    """
    encoding = declared_encoding(data, path) or "utf-8"
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def encoding_of(data: bytes, path: str = "") -> str:
    """The encoding decode_source reads these bytes with (``utf-8`` unless a cookie says otherwise)."""
    return declared_encoding(data, path) or "utf-8"


def recode_line(line: str, encoding: str) -> str:
    """A diff line git printed in a file's own encoding (kept as surrogate escapes) as text; bad bytes become U+FFFD."""
    if encoding == "utf-8" and line.isascii():
        return line
    return line.encode("utf-8", "surrogateescape").decode(encoding, "replace")
