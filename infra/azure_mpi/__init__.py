"""Azure Windows MS-MPI cluster on pulumi-azure-native: `deploy(spec)` builds it and exports its outputs."""

from __future__ import annotations

import pulumi

from azure_mpi.cluster import MpiCluster, MpiClusterArgs
from mpicloud.spec import ClusterSpec

__all__ = ["MpiCluster", "MpiClusterArgs", "deploy"]


def deploy(spec: ClusterSpec) -> MpiCluster:
    """Create the cluster described by `spec` and export addresses, admin user, SSH command and host keys."""
    cluster = MpiCluster(spec.name, MpiClusterArgs(spec=spec))
    for key, value in cluster.outputs().items():
        pulumi.export(key, value)
    return cluster
