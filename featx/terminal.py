"""The one sanitizer for text featx prints to a terminal.

Class names, file names and CSV cells come from files anyone can write. Printed raw, an escape
sequence inside one (``\\x1b]0;...``, ``\\x1b[2J``) would retitle, clear or recolour the user's
terminal, a carriage return would overwrite what was printed before it, and a bidirectional
override would show the text in another order than it has. Every line the CLI prints (tables,
messages, errors, log records) goes through :func:`clean_text`; single values placed in a table
cell go through :func:`clean`, which also escapes line breaks so one value stays on one line.

Escaped characters are shown as Python writes them (``\\x1b``, ``\\u202e``), and a byte of a
non-UTF-8 file name (held as a lone surrogate by ``surrogateescape``) is shown as ``\\xNN``, the
byte it stands for, so what is printed is both harmless and unambiguous. JSON output needs none
of this: ``json.dumps`` escapes every control character itself.

Examples
--------
>>> clean("red\\x1b[31m")
'red\\\\x1b[31m'
>>> clean("two\\nlines")
'two\\\\nlines'
>>> clean_text("line one\\nline \\x1b]0;owned\\x07two")
'line one\\nline \\\\x1b]0;owned\\\\x07two'
>>> clean("caf\\udce9")  # the byte 0xe9 of a Latin-1 file name
'caf\\\\xe9'
>>> clean("naïve ok")
'naïve ok'
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["CleanFormatter", "clean", "clean_text", "echo"]

# C0 controls, DEL, C1 controls, bidirectional overrides/isolates, line/paragraph separators,
# and lone surrogates (undecodable bytes of file names).
_REST = r"\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_ANY = re.compile(r"[\x00-\x1f" + _REST + "]")
_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f" + _REST + "]")


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: the raw byte o - 0xDC00
        return f"\\x{o - 0xDC00:02x}"
    if c == "\n":
        return "\\n"
    if c == "\r":
        return "\\r"
    if c == "\t":
        return "\\t"
    if o <= 0xFF:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}"


def clean(value: Any) -> str:
    """``str(value)`` with every control, bidi or undecodable character escaped (one line)."""
    return _ANY.sub(_escape, str(value))


def clean_text(text: Any) -> str:
    """Like :func:`clean`, but line breaks (``\\n``) are kept: for whole messages and tables."""
    return _BUT_NEWLINE.sub(_escape, str(text))


def echo(message: Any = "", *, err: bool = False, nl: bool = True) -> None:
    """Print ``message`` (cleaned with :func:`clean_text`) to stdout, or stderr with ``err``.

    Every line the CLI prints goes through here; a test keeps ``click.echo`` out of the rest
    of featx, so a new command cannot print a file's escape sequences raw.
    """
    import click

    click.echo(clean_text(message), err=err, nl=nl)


class CleanFormatter(logging.Formatter):
    """A log formatter whose records are cleaned like everything else featx prints."""

    def format(self, record: logging.LogRecord) -> str:
        return clean_text(super().format(record))
