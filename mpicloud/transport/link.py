"""The link a transfer runs over: what one stream must keep in flight to fill it (its bandwidth-delay product)."""

from __future__ import annotations

import os

STREAM_WINDOW = 2 << 20  # a bulk stream's receive window at least (OpenSSH's own channel window)
MAX_WINDOW = 8 << 20  # and at most: a stream never buffers more than this unread
BANDWIDTH_MBIT = 1000.0  # the link windows are sized for (MPICLOUD_BANDWIDTH_MBIT overrides)


def bandwidth_delay(rtt: float) -> int:
    """Bytes in flight that fill the link (MPICLOUD_BANDWIDTH_MBIT, default 1 Gbit/s) at this round-trip time."""
    mbit = float(os.environ.get("MPICLOUD_BANDWIDTH_MBIT") or BANDWIDTH_MBIT)
    return int(mbit * 1e6 / 8 * rtt)


def stream_window(rtt: float) -> int:
    """A bulk stream's receive window: the bandwidth-delay product (so one stream can fill a long path),
    between STREAM_WINDOW and MAX_WINDOW (so a download holds a bounded amount in memory)."""
    return min(MAX_WINDOW, max(STREAM_WINDOW, bandwidth_delay(rtt)))
