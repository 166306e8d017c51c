"""The cluster spec: one frozen pydantic model describing a whole cluster on any cloud."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from mpicloud.protocol.pool import MAX_NODES
from mpicloud.spec.sizes import azure_rdma, efa_capable
from mpicloud.spec.targets import Target, target
from mpicloud.spec.targets import platform as os_platform

SPEC_VERSION = 3

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: instance tag keys readable over IMDS (instance_metadata_tags): no spaces, no '/'
_IMDS_TAG_KEY = re.compile(r"^[A-Za-z0-9+\-=.,_:@]{1,128}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Where a secret comes from at the moment it is needed; the spec never holds the value."""

    env: str = Field(description="name of the environment variable that holds the secret")

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_RE.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value


class Admin(_Model):
    """The administrator account created on every node."""

    username: str = "mpiadmin"
    ssh_public_key: str | None = Field(default=None, description="OpenSSH public key line")
    password: SecretRef | None = Field(default=None, description="e.g. {env: MPICLOUD_ADMIN_PASSWORD}")

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,19}$", value):
            raise ValueError("must be 1-20 letters, digits, '_', '.', '-' and start with a letter")
        if value.lower() in {"administrator", "admin", "user", "test", "root", "guest", "owner"}:
            raise ValueError(f"{value!r} is reserved by the clouds; pick another name")
        return value

    @field_validator("ssh_public_key")
    @classmethod
    def _pubkey(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+", value):
            raise ValueError("must be an OpenSSH public key line such as 'ssh-ed25519 AAAA...'")
        return value


class Access(_Model):
    """Who may reach the cluster from outside."""

    allowed_cidrs: list[str] = Field(default_factory=list, description="source networks for SSH/RDP")

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a network such as 203.0.113.0/24") from None
        return values

    @property
    def open_to_world(self) -> bool:
        """True when the spec explicitly opens access to every address."""
        return any(ipaddress.ip_network(c, strict=False).prefixlen == 0 for c in self.allowed_cidrs)


class Shared(_Model):
    """Storage every node sees at the same path."""

    kind: Literal["smb", "nfs", "local"] = "smb"
    path: str = "/shared"


class Installer(_Model):
    """A downloaded installer run at creation (verified by SHA-256 before it runs)."""

    url: str
    sha256: str
    args: list[str] = Field(default_factory=list)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not re.match(r"^[0-9a-fA-F]{64}$", value):
            raise ValueError("must be 64 hex digits")
        return value.lower()

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value


class Software(_Model):
    """Software installed on every node when the cluster is created."""

    packages: list[str] = Field(default_factory=list, description="distribution packages (Linux)")
    pip: list[str] = Field(default_factory=list, description="Python packages")
    installers: list[Installer] = Field(default_factory=list)

    @field_validator("packages", "pip")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+<>=!~,-]*$", value):
                raise ValueError(f"{value!r} is not a package name")
        return values


class _Prefixes(_Model):
    """The customer's storage as the cluster sees it: objects under input_prefix read-only, under
    output_prefix read-write, nothing else."""

    input_prefix: str = "input/"
    output_prefix: str = "output/"

    @field_validator("input_prefix", "output_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or any(c in value for c in "*\\'\"") or ".." in value.split("/"):
            raise ValueError("must be a key prefix such as 'input/' (no leading '/', no '*', '\\', quotes or '..')")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _prefixes_disjoint(self) -> _Prefixes:
        a, b = self.input_prefix, self.output_prefix
        if a.startswith(b) or b.startswith(a):
            raise ValueError("input_prefix and output_prefix must not contain one another")
        return self


class Bucket(_Prefixes):
    """The customer's own S3 bucket."""

    kind: Literal["s3"] = "s3"
    name: str
    region: str | None = None
    grant: Literal["instance_role", "iam_user", "cross_account_role"] | None = None
    kms_key_arn: str | None = None
    role_arn: str | None = Field(default=None, description="cross_account_role: the role to assume")
    external_id: str | None = Field(default=None, description="cross_account_role: the agreed ExternalId")
    trusted_account_id: str | None = Field(default=None, description="cross_account_role: cluster account")
    trusted_principal_arn: str | None = Field(
        default=None, description="cross_account_role: the cluster's node role (narrower than the whole account)")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, Ceph); default AWS")

    @field_validator("name")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", value):
            raise ValueError("must be a valid S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("must be a URL such as https://s3.example.com (scheme and host, no path)")
        return value

    @model_validator(mode="after")
    def _cross_account(self) -> Bucket:
        if self.grant == "cross_account_role" and not (
                self.external_id and (self.trusted_account_id or self.trusted_principal_arn)):
            raise ValueError("grant cross_account_role needs external_id and trusted_account_id "
                             "(or trusted_principal_arn)")
        return self


class BlobContainer(_Prefixes):
    """The customer's own Azure Blob Storage container."""

    kind: Literal["azure_blob"]
    account: str = Field(description="storage account name")
    container: str
    grant: Literal["managed_identity", "sas"] | None = Field(
        default=None, description="managed_identity (Azure clusters; ABAC-scoped role assignments) or sas "
                                  "(a container SAS installed with `mpicloud bucket install`)")
    endpoint_url: str | None = Field(
        default=None, description="blob endpoint (emulators such as Azurite: http://127.0.0.1:10000/ACCOUNT); "
                                  "default https://ACCOUNT.blob.core.windows.net")
    resource_group: str | None = Field(
        default=None, description="managed_identity with Pulumi: the storage account's resource group (same "
                                  "subscription); the program then creates the role assignments itself")

    @field_validator("account")
    @classmethod
    def _account(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9]{3,24}$", value):
            raise ValueError("must be a storage account name (3-24 lower-case letters and digits)")
        return value

    @field_validator("container")
    @classmethod
    def _container(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$", value):
            raise ValueError("must be a container name (3-63 lower-case letters, digits and single '-')")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+(/[a-z0-9]{3,24})?/?$", value):
            raise ValueError("must be a URL such as http://127.0.0.1:10000/devstoreaccount1 (scheme, host and "
                             "at most the account as path)")
        return value.rstrip("/") if value else value


def _storage_kind(value: Any) -> str:
    """A storage section's `kind`; s3 when it has none (every bucket before Azure Blob was S3)."""
    kind = value.get("kind", "s3") if isinstance(value, dict) else getattr(value, "kind", "s3")
    return str(kind)


#: the customer's storage, told apart by `kind`
Storage = Annotated[Annotated[Bucket, Tag("s3")] | Annotated[BlobContainer, Tag("azure_blob")],
                    Discriminator(_storage_kind)]


class AzureOptions(_Model):
    """Options only the Azure program and ARM template read."""

    windows_version: Literal["2022", "2025"] = Field(default="2022", description="os windows: Windows Server version")
    linux_image: Literal["ubuntu-hpc", "ubuntu"] = Field(
        default="ubuntu-hpc", description="os linux: Microsoft's Ubuntu HPC image (InfiniBand drivers, UCX and MPI "
                                          "stacks included) or plain Ubuntu; Open MPI from the distribution on both")
    rdma: bool = Field(default=False, description="InfiniBand for MPI (HB, HC, HX and ND sizes with 'r' only)")
    public_ip: Literal["per_node", "head_nat"] = "per_node"
    accelerated_networking: bool = True
    proximity_placement_group: bool = True
    vnet_cidr: str = "10.0.0.0/16"
    subnet_cidr: str = "10.0.0.0/24"
    resource_group: str | None = None
    patch_mode: Literal["Manual", "AutomaticByOS", "AutomaticByPlatform"] = Field(
        default="Manual", description="Windows Update: Manual (default) never reboots a node in the middle of a job")
    password_ssh: bool = Field(default=True, description="password logins over SSH; false needs admin.ssh_public_key")
    openssh_msi: Installer | None = Field(
        default=None, description="pinned Win32-OpenSSH MSI (url, sha256) if Add-WindowsCapability keeps failing")


#: default SSM parameter of the AMI per OS (public parameters AWS maintains)
AMI_PARAMETERS = {"linux": "/aws/service/debian/release/12/latest/amd64",
                  "windows": "/aws/service/ami-windows-latest/Windows_Server-2022-English-Full-Base"}


class AwsOptions(_Model):
    """Options only the AWS program and CloudFormation template read."""

    ami_ssm_parameter: str | None = Field(
        default=None, description="SSM parameter of the AMI (default: Debian 12 for os linux, Windows Server 2022 "
                                  "Base for os windows)")
    ami: str | None = Field(default=None, pattern=r"^ami-[0-9a-f]{8,17}$",
                            description="pinned AMI id (default: resolved once from ami_ssm_parameter)")
    shared_volume_gb: int = Field(default=100, ge=1, le=16384,
                                  description="EBS volume of the head node's shared directory (kept on replacement)")
    vpc_id: str | None = None
    subnet_id: str | None = None
    vpc_cidr: str = "10.0.0.0/16"
    subnet_cidr: str = "10.0.0.0/24"
    efa: bool = False
    placement_group: bool = True
    root_volume_gb: int = Field(default=30, ge=8, le=16384)
    key_name: str | None = None
    suspend: Literal["stop", "terminate"] = Field(
        default="stop", description="elastic clusters: what happens to an idle compute node's instance (stop: "
                                    "its EBS root volume stays and bills; terminate: nothing bills, the next start "
                                    "launches a fresh one from the launch template)")


class LocalOptions(_Model):
    """Options for the embedded local cluster (real sshd nodes on loopback addresses or in namespaces)."""

    address_base: str = Field(default="127.0.77.1", description="loopback mode: first node's address")
    port: int = Field(default=0, ge=0, le=65535, description="loopback mode: sshd port on every node; 0 picks "
                                                             "a free one")
    network: Literal["loopback", "namespaces"] | None = Field(
        default=None, description="loopback: nodes on 127.x addresses; namespaces (root): each node its own "
                                  "network/UTS/mount namespace on a private bridge in 198.18.0.0/15. Default: "
                                  "namespaces with scheduler slurm, else loopback")

    @field_validator("address_base")
    @classmethod
    def _loopback(cls, value: str) -> str:
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address") from None
        if not address.is_loopback:
            raise ValueError("must be a loopback address in 127.0.0.0/8")
        return value


class NodeRange(_Model):
    """An elastic cluster: a head node that holds the queue and runs no jobs, plus between `min` and `max`
    compute nodes, started when queued jobs need their cores and stopped when idle."""

    min: int = Field(ge=0, le=MAX_NODES, description="compute nodes always up (0: none while the queue is empty)")
    max: int = Field(ge=1, le=MAX_NODES, description="compute nodes at most")

    @model_validator(mode="after")
    def _ordered(self) -> NodeRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


def _node_kind(value: Any) -> str:
    """`nodes` is a range when it is a mapping (or a NodeRange), else a count."""
    return "range" if isinstance(value, dict | NodeRange) else "count"


#: a fixed node count, or an elastic range
NodeCount = Annotated[Annotated[Annotated[int, Field(ge=1, le=256)], Tag("count")] |
                      Annotated[NodeRange, Tag("range")], Discriminator(_node_kind)]


class ClusterSpec(_Model):
    """A whole cluster: where, what OS, how many nodes, who may reach it, storage, software, bucket."""

    version: int = SPEC_VERSION
    name: str
    cloud: Literal["local", "azure", "aws"]
    os: Literal["linux", "windows"] = "linux"
    nodes: NodeCount = Field(
        description="a fixed number of nodes (node0, the head, runs jobs too), or {min, max} compute nodes "
                    "beside a head node (elastic)")
    slots_per_node: int = Field(default=1, ge=1, le=1024)
    size: str | None = None
    region: str | None = None
    admin: Admin = Field(default_factory=Admin)
    access: Access = Field(default_factory=Access)
    shared: Shared | None = None
    software: Software = Field(default_factory=Software)
    idle_shutdown_minutes: float | None = Field(default=None, ge=0.05, le=10080,
                                                description="stop the cluster after this long with no jobs")
    scale_down_idle_minutes: float | None = Field(
        default=None, ge=0.01, le=10080, description="elastic clusters: stop a compute node after this long "
                                                     "without a job (default 10)")
    bucket: Storage | None = None
    azure: AzureOptions | None = None
    aws: AwsOptions | None = None
    local: LocalOptions | None = None
    scheduler: Literal["builtin", "slurm"] = Field(
        default="builtin", description="what schedules jobs on the nodes: mpicloud's built-in queue or Slurm "
                                       "(Linux)")
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be 2-32 lower-case letters, digits and '-', starting with a letter")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        found = target(self.cloud, self.os)
        for section in ("azure", "aws", "local"):
            if getattr(self, section) is not None and section != found.options:
                raise ValueError(f"{section}: this section is only allowed with cloud: {section}")
        if self.cloud != "local" and not self.size:
            raise ValueError(f"size: cloud {self.cloud!r} needs the VM or instance type")
        if self.cloud != "local" and not self.region:
            raise ValueError(f"region: cloud {self.cloud!r} needs a region")
        if self.os == "windows" and self.admin.password is None:
            raise ValueError("os windows needs admin.password (e.g. {env: MPICLOUD_ADMIN_PASSWORD}): "
                             "MS-MPI launches ranks with the password")
        if self.os == "linux" and self.cloud != "local" and not self.admin.ssh_public_key:
            raise ValueError("os linux needs admin.ssh_public_key")
        if self.azure is not None and not self.azure.password_ssh and not self.admin.ssh_public_key:
            raise ValueError("azure.password_ssh false needs admin.ssh_public_key (or nobody can log in over SSH)")
        self._os_options()
        self._rdma_supported()
        if self.cloud == "aws":
            for key in self.tags:
                if not _IMDS_TAG_KEY.match(key) or key in (".", "..", "_index"):
                    raise ValueError(f"tags: key {key!r} is not allowed on AWS instances that expose tags over "
                                     "instance metadata (letters, digits and + - = . , _ : @ only; no spaces or /)")
        if self.blob_container is not None and self.blob_container.grant == "managed_identity" \
                and self.cloud != "azure":
            raise ValueError(f"bucket.grant: managed_identity needs cloud: azure (a {self.cloud} node has no Azure "
                             "identity); use grant: sas")
        self._scheduler_supported()
        self._elastic_supported()
        return self

    def _elastic_supported(self) -> None:
        if not isinstance(self.nodes, NodeRange) and self.scale_down_idle_minutes is not None:
            raise ValueError("scale_down_idle_minutes needs an elastic cluster (nodes: {min: M, max: X})")

    def _os_options(self) -> None:
        """Options of one OS set on a cluster of the other (an Azure Windows image on Linux nodes, ...)."""
        only = {"azure": {"windows_version": "windows", "password_ssh": "windows", "patch_mode": "windows",
                          "openssh_msi": "windows", "linux_image": "linux"},
                # MS-MPI has no EFA support; Windows keeps C:\shared on the root volume
                "aws": {"efa": "linux", "shared_volume_gb": "linux"}}
        for section, fields in only.items():
            options = getattr(self, section)
            for field in sorted(options.model_fields_set if options is not None else ()):
                default = type(options).model_fields[field].default
                if fields.get(field, self.os) != self.os and getattr(options, field) != default:
                    raise ValueError(f"{section}.{field}: only for os {fields[field]}, not os {self.os}")

    def _rdma_supported(self) -> None:
        size = self.size or ""
        if self.azure is not None and self.azure.rdma and not azure_rdma(size):
            raise ValueError(f"azure.rdma: size {size!r} has no InfiniBand (RDMA sizes are HB, HC, HX and ND "
                             "with an 'r' among their feature letters, e.g. Standard_HB120rs_v3)")
        if self.azure is not None and self.azure.rdma and self.os == "linux" \
                and self.azure.linux_image != "ubuntu-hpc":
            raise ValueError("azure.linux_image: azure.rdma on Linux needs ubuntu-hpc (its InfiniBand drivers)")
        if self.aws is not None and self.aws.efa and not efa_capable(size):
            raise ValueError(f"aws.efa: instance type {size!r} has no EFA (e.g. c5n.18xlarge, hpc7a.96xlarge; "
                             "see aws ec2 describe-instance-types --filters Name=network-info.efa-supported,"
                             "Values=true)")

    def _scheduler_supported(self) -> None:
        if self.scheduler == "builtin":
            return
        if self.os != "linux":
            raise ValueError(f"scheduler: {self.scheduler} runs on Linux clusters only; os {self.os} uses the "
                             "built-in queue (scheduler: builtin)")
        if self.cloud == "local" and self.local_options.network == "loopback":
            raise ValueError("scheduler: slurm on the local cluster needs local.network: namespaces "
                             "(one network namespace per node, as root)")

    @property
    def target(self) -> Target:
        """The (cloud, os) target: node names, paths, launcher, bootstrap, stop action, attach command."""
        return target(self.cloud, self.os)

    @property
    def password_only(self) -> bool:
        """Windows nodes without an SSH key: logins (and mpicloud attach) use the admin password."""
        return self.os == "windows" and not self.admin.ssh_public_key

    @property
    def shared_storage(self) -> Shared:
        """The shared storage with defaults filled in per cloud and OS."""
        if self.shared is not None:
            return self.shared
        if self.cloud == "local":
            return Shared(kind="local", path="shared")
        return Shared(kind="smb", path=os_platform(self.os).shared_path)

    @property
    def bucket_grant(self) -> str | None:
        """The bucket grant mode, defaulting to an instance role on AWS and an IAM user elsewhere."""
        if self.bucket is None:
            return None
        if self.bucket.grant:
            return self.bucket.grant
        if isinstance(self.bucket, BlobContainer):
            return "managed_identity" if self.cloud == "azure" else "sas"
        return "instance_role" if self.cloud == "aws" else "iam_user"

    @property
    def s3_bucket(self) -> Bucket | None:
        """The bucket when it is S3 (None without one, or for Azure Blob)."""
        return self.bucket if isinstance(self.bucket, Bucket) else None

    @property
    def blob_container(self) -> BlobContainer | None:
        """The container when the customer's storage is Azure Blob."""
        return self.bucket if isinstance(self.bucket, BlobContainer) else None

    @property
    def blob_identity(self) -> bool:
        """The head node's managed identity reads and writes the customer's Blob container."""
        return self.blob_container is not None and self.bucket_grant == "managed_identity"

    @property
    def node_names(self) -> list[str]:
        """Host names of the nodes, in order; node 0 is the head node."""
        return [self.target.platform.node_name(i) for i in range(self.node_count)]

    @property
    def ami_parameter(self) -> str:
        """The SSM parameter of the AMI: the spec's, else the default of the OS."""
        return self.aws_options.ami_ssm_parameter or AMI_PARAMETERS[self.os]

    @property
    def azure_options(self) -> AzureOptions:
        """Azure options with defaults."""
        return self.azure or AzureOptions()

    @property
    def aws_options(self) -> AwsOptions:
        """AWS options with defaults."""
        return self.aws or AwsOptions()

    @property
    def local_options(self) -> LocalOptions:
        """Local cluster options with defaults."""
        return self.local or LocalOptions()

    @property
    def local_network(self) -> Literal["loopback", "namespaces"]:
        """How local nodes are separated: the explicit choice, else namespaces for Slurm, loopback otherwise."""
        chosen = self.local_options.network
        if chosen is not None:
            return chosen
        return "namespaces" if self.scheduler == "slurm" else "loopback"

    @property
    def elastic(self) -> NodeRange | None:
        """The compute nodes' range of an elastic cluster; None for a fixed one."""
        return self.nodes if isinstance(self.nodes, NodeRange) else None

    @property
    def node_count(self) -> int:
        """Nodes the cluster has at most: fixed ones, or the head plus `max` compute nodes."""
        return self.nodes.max + 1 if isinstance(self.nodes, NodeRange) else self.nodes

    @property
    def total_slots(self) -> int:
        """Slots jobs may use at most (an elastic cluster's head runs none)."""
        return (self.nodes.max if isinstance(self.nodes, NodeRange) else self.nodes) * self.slots_per_node
