"""Windows and upload streams sized to the link: what one stream keeps in flight bounds it on a long path."""

from __future__ import annotations

import pytest

from mpicloud.jobs import transfer
from mpicloud.jobs.transfer import MAX_UPLOAD_STREAMS, RANGE, upload_plan
from mpicloud.transport.link import MAX_WINDOW, STREAM_WINDOW, stream_window

MIB = 1 << 20


def test_window_is_the_bandwidth_delay_product_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPICLOUD_BANDWIDTH_MBIT", raising=False)
    assert stream_window(0.0002) == STREAM_WINDOW  # loopback: OpenSSH's own window
    assert stream_window(0.04) == 5_000_000  # 1 Gbit/s x 40 ms
    assert stream_window(0.2) == MAX_WINDOW  # never more than this unread per stream
    monkeypatch.setenv("MPICLOUD_BANDWIDTH_MBIT", "100")
    assert stream_window(0.2) == 2_500_000


@pytest.mark.parametrize("rtt", [0.0002, 0.02])
def test_short_paths_keep_the_usual_ranges(rtt: float) -> None:
    assert upload_plan(256 * MIB, 4, rtt) == (4, RANGE)


@pytest.mark.parametrize(("rtt", "size"), [(0.1, 256 * MIB), (0.2, 256 * MIB), (0.2, 12 * MIB), (1.0, 10 << 30)])
def test_long_paths_get_streams_that_fill_the_link(rtt: float, size: int) -> None:
    streams, span = upload_plan(size, 4, rtt)
    assert 4 < streams <= MAX_UPLOAD_STREAMS
    assert span % MIB == 0 and 8 * MIB <= span <= RANGE
    assert streams * 2 * MIB >= min(MAX_UPLOAD_STREAMS * 2 * MIB, 125_000_000 * rtt)  # in flight: the link


def test_a_lowered_range_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RANGE", 2 * MIB)
    assert transfer.upload_plan(12 * MIB, 4, 0.2)[1] == 2 * MIB
