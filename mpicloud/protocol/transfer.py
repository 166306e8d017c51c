"""The pack-stream format shared by the client and the node's transfer helper (provision/runner/transfer.py).

A pack stream is a sequence of frames: `FRAME` (name length, data size), the UTF-8 name, the data, then the
32-byte SHA-256 of the data. The first frame is `MANIFEST` (JSON, see below), then the small files the
client lacks, then `SKIPPED` (JSON list of {"path", "reason"} for files that changed while being sent); a
frame with an empty name ends the stream.

The manifest is {"files": [{"path", "size", "mtime", "mode"}], "links": [{"path", "target"}],
"skipped": [{"path", "reason"}]}: regular files, symbolic links that stay inside the directory (sent as
links, never followed), and everything that cannot be sent, each with the reason.
"""

from __future__ import annotations

FRAME = "!HQ"
#: names of the two bookkeeping frames: absolute, so that no file name (always relative) can be taken for them
MANIFEST = "/manifest"
SKIPPED = "/skipped"
#: the client keeps its transfer bookkeeping (state, part files) in DEST/BOOKKEEPING/; a remote top-level
#: entry of this name is never sent
BOOKKEEPING = ".mpicloud"
#: files at least this big are sent in byte ranges, smaller ones packed
BIG = 32 << 20
#: exit status of `send` when the file is no longer what the listing said (size or mtime changed)
CHANGED = 4
#: a range transfer records how far it got this often (a resumed range starts there after a hash check)
MARK_EVERY = 4 << 20


def upload_mark(sha: str) -> str:
    """Name prefix, in the input store, of the progress markers of an object's upload (+ the range's offset)."""
    return f".{sha}.r"
