"""The compute node pool's contract between the client and the runner (stdlib only; shipped to the nodes).

runner.json's `pool` section (written by the client), the node states the runner reports in status.json's
`pool`, its own record `nodes.json`, and the resize request a client drops into the runner root.
"""

from __future__ import annotations

import json
import socket
import time

#: the runner's record of its compute nodes (states, up-time), and a client's resize request
POOL_FILE, RESIZE_FILE = "nodes.json", "resize.json"
#: a compute node's states: only `up` nodes take new jobs; `draining` ones finish theirs and then stop
UP, STARTING, STOPPED, DRAINING, STOPPING = "up", "starting", "stopped", "draining", "stopping"
NODE_STATES = (UP, STARTING, STOPPED, DRAINING, STOPPING)
#: the most compute nodes a cluster may have (node1..node255 beside the head)
MAX_NODES = 255
#: AWS: the tags on a cluster's instances (the head's node actions find and may touch only these)
CLUSTER_TAG, NODE_TAG = "mpicloud:cluster", "mpicloud:node"
#: Azure Resource Manager's compute API version, for the templates and the head's node actions alike
AZURE_COMPUTE_API = "2024-11-01"
#: Slurm power saving: the reason slurm_power.py gives a node whose resume failed, and Slurm's own for a node that did
#: not register within ResumeTimeout; the runner's Slurm pool makes such a powered-down node usable again
RESUME_FAILED, RESUME_TIMED_OUT = "mpicloud resume failed", "ResumeTimeout reached"


def resize_request(nodes: int | None, force: bool) -> bytes:
    """The resize document: `nodes` compute nodes (None: back to the spec's min/max); `force` cancels the jobs
    of nodes that leave instead of letting them finish."""
    return json.dumps({"nodes": nodes, "force": force}).encode()


def wait_ports(host: str, ports: list[int], deadline: float, poll: float) -> None:
    """Until each of the node's `ports` accepts a TCP connection (sshd, MS-MPI's launch service): a VM that runs
    may still be booting, and the pool gives jobs to a node as soon as its resume command succeeds."""
    for port in ports:
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=5):
                    break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{host} runs but its port {port} does not answer: {error}") from error
                time.sleep(poll)
