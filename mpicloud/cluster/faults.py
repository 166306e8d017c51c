"""Named failure points for recovery tests: MPICLOUD_FAIL_AT=<point> raises there, <point>:kill dies there."""

from __future__ import annotations

import os
import signal

from mpicloud.errors import ClusterError

ENV = "MPICLOUD_FAIL_AT"


def point(name: str) -> None:
    """Fail (ClusterError) or die (SIGKILL, no cleanup) here when MPICLOUD_FAIL_AT names this point."""
    wanted = os.environ.get(ENV, "")
    if wanted == name:
        raise ClusterError(f"failing at {name!r} as {ENV} asks")
    if wanted == f"{name}:kill":
        os.kill(os.getpid(), signal.SIGKILL)
