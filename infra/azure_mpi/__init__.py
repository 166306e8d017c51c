"""Azure cluster (Windows MS-MPI or Linux Open MPI) on pulumi-azure-native: `deploy(spec)` builds it and exports
its outputs."""

from __future__ import annotations

import pulumi

from azure_mpi.cluster import PASSWORD_CONFIG, MpiCluster, MpiClusterArgs
from mpicloud.spec import ClusterSpec

__all__ = ["MpiCluster", "MpiClusterArgs", "deploy"]


def deploy(spec: ClusterSpec) -> MpiCluster:
    """Create the cluster described by `spec` and export addresses, admin user, SSH command and host keys.

    Windows: the admin password is the stack secret mpicloud:adminPassword (`pulumi config set --secret`), not an
    environment variable every `pulumi up` would need. Linux: SSH keys only, no password."""
    password = pulumi.Config("mpicloud").require_secret(PASSWORD_CONFIG) if spec.os == "windows" else None
    cluster = MpiCluster(spec.name, MpiClusterArgs(spec=spec, admin_password=password))
    for key, value in cluster.outputs().items():
        pulumi.export(key, value)
    return cluster
