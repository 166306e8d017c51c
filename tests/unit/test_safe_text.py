"""Escaping of cluster text shown on a terminal."""

from __future__ import annotations

from mpicloud.cli.safe_text import TerminalEscaper, escape_text


def test_names_and_reasons_lose_every_control_character() -> None:
    assert escape_text("ok\x1b[31mred\nline\u202eevil\x7f") == "ok\\x1b[31mred\\x0aline\\u202eevil\\x7f"
    assert escape_text("plain ünïcode\tname") == "plain ünïcode\\x09name"


def test_streamed_logs_keep_newlines_tabs_and_text_and_escape_controls_across_chunks() -> None:
    escaper = TerminalEscaper()
    chunks = [b"a\tb\n\x1b]0;t\x07", b"caf\xc3\xa9 \xc2", b"\x9b2J end\xc2", b"\xa9\n"]
    shown = b"".join(escaper.feed(c) for c in chunks) + escaper.flush()
    assert shown == b"a\tb\n\\x1b]0;t\\x07caf\xc3\xa9 \\u009b2J end\xc2\xa9\n"
    assert TerminalEscaper().feed(b"\r\x00") == b"\\x0d\\x00"
