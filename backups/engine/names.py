"""File names are bytes: how they are kept as text, reversibly, and shown.

Python gives a file name as `str`, with each byte that is not valid UTF-8 as a surrogate
escape (U+DC80..U+DCFF). Such a string cannot be stored in a database text column, nor
written to a UTF-8 stream. The catalog keeps instead a backslash escape that reads as the
name where the name is printable UTF-8: a byte that is not valid UTF-8, and a control
character (a newline in a name), becomes `\\xNN`; a literal backslash becomes `\\\\`.
`name_to_catalog` and `catalog_to_name` are exact inverses on every name a file system
can hold, so a name picked from the file browser restores the very file it shows.
"""

from __future__ import annotations

import re

_NEEDS_ESCAPE = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")
_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f\\]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _escape_ascii(match: re.Match) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else f"\\x{ord(char):02x}"


def name_to_catalog(name: str) -> str:
    """Return the text the catalog stores for a file name (see the module's docstring)."""
    if name.isascii():
        if name.isprintable() and "\\" not in name:
            return name
    elif not _NEEDS_ESCAPE.search(name):
        return name
    text = _CONTROL_OR_BACKSLASH.sub(_escape_ascii, name)
    # Undecodable bytes come back from the surrogate escapes as `\xNN`; nothing else in
    # the text is a backslash any more, so the two kinds of escape cannot be confused.
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        # A surrogate no file name decodes to (a hand-made manifest): shown, not stored.
        return printable(text)


def catalog_to_name(text: str) -> str:
    """Return the file name that the catalog text `text` stands for.

    A backslash that starts neither `\\\\` nor `\\xNN` is taken literally, so a name typed
    by hand without escapes still means what it says.
    """
    if "\\" not in text:
        return text
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        raw += text[position : match.start()].encode("utf-8", "surrogateescape")
        code = match.group(1)
        raw += b"\\" if code == "\\" else bytes((int(code[1:], 16),))
        position = match.end()
    raw += text[position:].encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "surrogateescape")


def printable(text: str) -> str:
    """Return free text (a message, a log line) with undecodable bytes shown as `\\xNN`.

    For text that is stored or printed but never turned back into a name: only what a
    database or a UTF-8 stream cannot hold is escaped.
    """
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(_escape_surrogate, text)


def _escape_surrogate(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
