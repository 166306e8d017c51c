"""What the Pulumi program and the CloudFormation template share: ports, tags the nodes read, the secrets policy."""

from __future__ import annotations

from typing import Any, TypeVar

from mpicloud.spec.model import ClusterSpec

SSH_PORT = 22
#: CloudFormation has no loops: the template declares this many nodes, NodeCount switches them on by Conditions
MAX_TEMPLATE_NODES = 8
ROOT_DEVICE = "/dev/xvda"
METADATA_OPTIONS = {"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1,
                    "instance_metadata_tags": "enabled"}
TAG_NODES, TAG_SLOTS, TAG_SSM_PREFIX, TAG_IDLE = (
    "mpicloud:nodes", "mpicloud:slots", "mpicloud:ssm-prefix", "mpicloud:idle-minutes")
T = TypeVar("T")


def ssm_prefix(cluster: str) -> str:
    """SSM parameter path under which the head node stores the intra-cluster secrets."""
    return f"/mpicloud/{cluster}"


def node_tags(count: T, slots: T, prefix: T, idle: T) -> dict[str, T]:
    """Instance tags the nodes read over IMDS (node-env.sh): literals (Pulumi) or `Ref`s (CloudFormation)."""
    return {TAG_NODES: count, TAG_SLOTS: slots, TAG_SSM_PREFIX: prefix, TAG_IDLE: idle}


def literal_node_tags(spec: ClusterSpec) -> dict[str, str]:
    """node_tags from the spec itself."""
    idle = spec.idle_shutdown_minutes
    return node_tags(str(spec.nodes), str(spec.slots_per_node), ssm_prefix(spec.name),
                     "0" if idle is None else f"{idle:g}")


def cluster_tags(spec: ClusterSpec) -> dict[str, str]:
    """Tags on every taggable resource: the spec's own plus the cluster name."""
    return {**spec.tags, "mpicloud:cluster": spec.name}


def secrets_policy(parameter_arn_prefix: Any) -> dict[str, Any]:
    """Let the nodes put and read the intra-cluster secrets under one SSM path (SecureString, aws/ssm key)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ClusterSecrets", "Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:PutParameter"],
         "Resource": parameter_arn_prefix}]}
