"""Job lifecycle facts shared by the client and the runner: format version and states."""

from __future__ import annotations

#: the job.json format the client writes and the runner reads (older ones are upgraded by the runner)
JOB_VERSION = 2
#: the states a job ends in; nothing changes a job once it is in one of them
TERMINAL = ("succeeded", "failed", "cancelled")
