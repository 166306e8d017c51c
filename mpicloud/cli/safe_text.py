"""Text from a cluster shown on a terminal: control characters escaped, so a job cannot drive the terminal."""

from __future__ import annotations

import re
import unicodedata

#: C0 controls except newline and tab, DEL, and the UTF-8 form of the C1 controls (U+0080-U+009F)
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def escape_text(text: str) -> str:
    """One-line text (job names, failure reasons): every control or format character (newlines, escape
    sequences, bidirectional overrides) shown as a \\x.. or \\u.... escape."""
    return "".join(c if unicodedata.category(c)[0] != "C" else _escape_char(c) for c in text)


def _escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class TerminalEscaper:
    """Escapes control bytes of a log streamed in chunks (a C1 control split across two chunks included);
    newline and tab pass through."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """The escaped form of the next chunk (a trailing lead byte is held for the next call)."""
        data = self._held + data
        self._held = b""
        if data.endswith(b"\xc2"):
            data, self._held = data[:-1], b"\xc2"
        return _CONTROL_BYTES.sub(_escape_match, data)

    def flush(self) -> bytes:
        """What is still held at the end of the stream."""
        held, self._held = self._held, b""
        return held


def _escape_match(match: re.Match[bytes]) -> bytes:
    raw = match.group()
    code = raw[0] if len(raw) == 1 else raw[1]
    return (f"\\x{code:02x}" if len(raw) == 1 else f"\\u{code:04x}").encode()
