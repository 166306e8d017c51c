"""AWS program: a Linux Open MPI or Windows MS-MPI cluster (network, node identity, nodes) from one spec;
`deploy(spec)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from aws.iam import NodeIdentity, NodeIdentityArgs
from aws.network import Network, NetworkArgs
from aws.nodes import Nodes, NodesArgs
from mpicloud.render.aws import cluster_tags
from mpicloud.spec import ClusterSpec

__all__ = ["MpiCluster", "MpiClusterArgs", "deploy"]


@dataclass
class MpiClusterArgs:
    """The whole cluster spec and, for Windows, the administrator password (deploy() reads the stack secret)."""

    spec: ClusterSpec
    admin_password: pulumi.Input[str] | None = None


class MpiCluster(pulumi.ComponentResource):
    """Network + node identity + nodes; outputs how to reach the head node."""

    def __init__(self, name: str, args: MpiClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:aws:MpiCluster", name, None, opts)
        spec = args.spec
        # one explicit provider from spec.region: every resource, invoke and ARN uses that region, never the
        # ambient AWS_REGION / aws:region of the machine running `pulumi up`
        self.provider = aws.Provider(f"{name}-aws", region=spec.region, opts=pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, providers={"aws": self.provider})
        tags = cluster_tags(spec)
        self.network = Network(f"{name}-net", NetworkArgs(spec, tags), child)
        self.identity = NodeIdentity(f"{name}-id", NodeIdentityArgs(spec, tags, args.admin_password), child)
        secret = self.identity.admin_secret
        # the nodes wait for the whole network (internet route included): cloud-init installs packages at boot
        self.nodes = Nodes(f"{name}-nodes", NodesArgs(
            spec, self.network.subnet_id, self.network.availability_zone, self.network.security_group_id,
            self.identity.profile_name, self.identity.head_profile_name, self.identity.ssm_prefix,
            self.identity.key.key_id, tags, secret.arn if secret is not None else None),
            pulumi.ResourceOptions(parent=self, providers={"aws": self.provider}, depends_on=[self.network]))
        template = self.nodes.launch_template
        if template is not None:
            self.identity.allow_node_actions(template.id)
        head_ip = self.nodes.public_ips.apply(lambda ips: ips[0])
        user = spec.admin.username
        self.outputs = {
            "public_ips": self.nodes.public_ips,
            "private_ips": pulumi.Output.all(*[n.private_ip for n in self.nodes.instances]),
            "ami": self.nodes.ami,
            "ssh_command": head_ip.apply(lambda ip: f"ssh {user}@{ip}"),
            "attach_command": head_ip.apply(lambda ip: spec.target.attach_command(
                spec.name, ip, user, spec.slots_per_node, spec.admin.password.env if spec.admin.password else None)),
            # Pulumi cannot read console output: cloud-init prints the host key fingerprints there
            "host_key_fingerprints": self.nodes.instances[0].id.apply(_host_keys_hint(spec.os)),
            **({"launch_template_id": template.id} if template is not None else {}),
        }
        self.register_outputs(self.outputs)


def _host_keys_hint(os: str) -> Callable[[str], str]:
    """How to read the head node's host key fingerprints (Pulumi cannot read them itself)."""
    if os == "windows":
        return lambda _: ("over RDP on N0: C:\\Windows\\System32\\OpenSSH\\ssh-keygen.exe -l -f "
                          "C:\\ProgramData\\ssh\\ssh_host_ed25519_key.pub (the bootstrap prints the same "
                          "MPICLOUD-HOSTKEY lines)")
    return lambda i: (f"aws ec2 get-console-output --latest --output text --instance-id {i} "
                      "| sed -n '/BEGIN SSH HOST KEY FINGERPRINTS/,/END SSH HOST KEY FINGERPRINTS/p'")


#: Windows: the stack secret holding the administrator password (`pulumi config set --secret mpicloud:adminPassword`)
PASSWORD_CONFIG = "adminPassword"


def deploy(spec: ClusterSpec) -> MpiCluster:
    """Create the cluster described by `spec` and export its outputs (Windows: the password from the stack's secret
    config goes to Secrets Manager only)."""
    password = pulumi.Config("mpicloud").require_secret(PASSWORD_CONFIG) if spec.os == "windows" else None
    cluster = MpiCluster(spec.name, MpiClusterArgs(spec, password))
    for key, value in cluster.outputs.items():
        pulumi.export(key, value)
    return cluster
