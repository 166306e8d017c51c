"""What the Pulumi program and the CloudFormation template share: ports, tags the nodes read, the secrets policy."""

from __future__ import annotations

from typing import Any, TypeVar

from mpicloud.protocol.pool import CLUSTER_TAG
from mpicloud.spec.model import ClusterSpec

SSH_PORT = 22
#: Windows nodes: RDP from the allowed networks too
RDP_PORT = 3389
#: the CloudFormation template declares this many nodes (the spec's limit), NodeCount switches them on by Conditions
MAX_TEMPLATE_NODES = 256
ROOT_DEVICE = "/dev/xvda"
METADATA_OPTIONS = {"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1,
                    "instance_metadata_tags": "enabled"}
TAG_NODES, TAG_SLOTS, TAG_SSM_PREFIX, TAG_IDLE, TAG_KMS_KEY = (
    "mpicloud:nodes", "mpicloud:slots", "mpicloud:ssm-prefix", "mpicloud:idle-minutes", "mpicloud:kms-key")
#: on the head node only: the EBS volume holding the shared directory (outlives the instance)
TAG_SHARED_VOLUME = "mpicloud:shared-volume"
#: on an elastic cluster's head only: the compute nodes' launch template (node-env.sh -> runner.json pool.aws)
TAG_LAUNCH_TEMPLATE = "mpicloud:launch-template"
#: instance tags only Windows nodes read: the node's index and the ARN of the admin password's secret
TAG_INDEX, TAG_SECRET = "mpicloud:index", "mpicloud:secret"
#: where the shared volume is attached on the head node (Nitro instances show it as an NVMe device)
SHARED_VOLUME_DEVICE = "/dev/sdf"
T = TypeVar("T")


def ssm_prefix(cluster: str, nonce: str) -> str:
    """SSM path of one deployment's secrets and runner pieces: the cluster name and a per-deployment nonce (the id
    of the deployment's own KMS key), so a redeploy under the same name never reads an older deployment's values."""
    return f"/mpicloud/{cluster}/{nonce}"


def node_tags(count: T, slots: T, prefix: T, idle: T, key: T) -> dict[str, T]:
    """Instance tags the nodes read over IMDS (node-env.sh): literals (Pulumi) or `Ref`s (CloudFormation)."""
    return {TAG_NODES: count, TAG_SLOTS: slots, TAG_SSM_PREFIX: prefix, TAG_IDLE: idle, TAG_KMS_KEY: key}


def idle_tag(spec: ClusterSpec) -> str:
    """The idle-minutes tag value of the spec."""
    idle = spec.idle_shutdown_minutes
    return "0" if idle is None else f"{idle:g}"


def cluster_tags(spec: ClusterSpec) -> dict[str, str]:
    """Tags on every taggable resource: the spec's own plus the cluster name."""
    return {**spec.tags, CLUSTER_TAG: spec.name}


#: what the node role may do with the deployment's key (SSM SecureString put and get)
KEY_USE_ACTIONS = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
#: what the account may do with the key: manage it, never use it (only the node role decrypts)
KEY_ADMIN_ACTIONS = ["kms:CancelKeyDeletion", "kms:CreateAlias", "kms:Delete*", "kms:Describe*", "kms:Disable*",
                     "kms:Enable*", "kms:Get*", "kms:List*", "kms:Put*", "kms:Revoke*", "kms:ScheduleKeyDeletion",
                     "kms:TagResource", "kms:UntagResource", "kms:Update*"]


def secrets_policy(parameter_arn_prefix: Any, key_arn: Any) -> dict[str, Any]:
    """Let the nodes put and read the intra-cluster secrets under the deployment's SSM path, encrypted with the
    deployment's own KMS key (not aws/ssm, which every principal of the account may use)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ClusterSecrets", "Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:PutParameter"],
         "Resource": parameter_arn_prefix},
        {"Sid": "ClusterSecretsKey", "Effect": "Allow", "Action": KEY_USE_ACTIONS, "Resource": key_arn}]}


def admin_secret_policy(secret_arn: Any) -> dict[str, Any]:
    """Windows nodes: read the administrator password of this deployment's secret, nothing else."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "AdminPassword", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
         "Resource": secret_arn}]}


def secrets_key_policy(account_root_arn: Any, node_role_arn: Any) -> dict[str, Any]:
    """Key policy of the deployment's key: the account administers it, only the node role uses it."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "AccountAdministers", "Effect": "Allow", "Principal": {"AWS": account_root_arn},
         "Action": KEY_ADMIN_ACTIONS, "Resource": "*"},
        {"Sid": "NodesUse", "Effect": "Allow", "Principal": {"AWS": node_role_arn}, "Action": KEY_USE_ACTIONS,
         "Resource": "*"}]}
