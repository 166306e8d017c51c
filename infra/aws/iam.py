"""The node role and instance profile: the intra-cluster secrets path, and the bucket when granted by role."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from mpicloud.render.aws import admin_secret_policy, secrets_key_policy, secrets_policy, ssm_prefix
from mpicloud.render.elastic_iam import node_actions_policy
from mpicloud.render.iam import assume_bucket_role_policy, bucket_access_policy, ec2_trust_policy
from mpicloud.spec import ClusterSpec


@dataclass
class NodeIdentityArgs:
    """The spec (cluster name, bucket and its grant mode) and the tags for every resource."""

    spec: ClusterSpec
    tags: dict[str, str]
    #: Windows: the administrator password, kept in a Secrets Manager secret only the nodes may read
    admin_password: pulumi.Input[str] | None = None


class NodeIdentity(pulumi.ComponentResource):
    """Role + instance profile. The bucket policy is attached only for grant instance_role; for
    cross_account_role the role may only assume bucket.role_arn; the nodes then get the AWS config pair with
    `mpicloud bucket install` (render/awsconfig.py), as they do for iam_user. An elastic cluster's head has a role
    of its own: the same policies, and its node actions once the launch template exists (`allow_node_actions`)."""

    profile_name: pulumi.Output[str]
    head_profile_name: pulumi.Output[str]  # the node profile, or an elastic head's own
    policies: list[aws.iam.RolePolicy]
    key: aws.kms.Key  # the deployment's own key for its SSM secrets; its id is the SSM path's nonce
    ssm_prefix: pulumi.Output[str]

    def __init__(self, name: str, args: NodeIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:aws:NodeIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOptions(parent=self)
        self.name, self.spec = name, args.spec
        role = aws.iam.Role(f"{name}-role", assume_role_policy=json.dumps(ec2_trust_policy()), tags=args.tags,
                            opts=child)
        # (name suffix, role): the nodes' role, and an elastic head's own
        self.roles = [("", role)]
        if args.spec.elastic is not None:
            self.roles.append(("-head", aws.iam.Role(f"{name}-head-role", tags=args.tags, opts=child,
                                                     assume_role_policy=json.dumps(ec2_trust_policy()))))
        self.node_role = role
        self.identity, self.partition = aws.get_caller_identity_output(opts=invoke), aws.get_partition_output(
            opts=invoke)
        identity, partition = self.identity, self.partition
        root = pulumi.Output.concat("arn:", partition.partition, ":iam::", identity.account_id, ":root")
        users = pulumi.Output.all(*[r.arn for _, r in self.roles])
        self.key = aws.kms.Key(
            f"{name}-secrets-key", description=f"mpicloud {args.spec.name}: cluster SSH key and Samba password",
            enable_key_rotation=True, deletion_window_in_days=7, tags=args.tags, opts=child,
            policy=pulumi.Output.all(root, users).apply(
                lambda a: json.dumps(secrets_key_policy(a[0], a[1][0] if len(a[1]) == 1 else a[1]),
                                     sort_keys=True)))
        self.ssm_prefix = self.key.key_id.apply(lambda nonce: ssm_prefix(args.spec.name, nonce))
        arn = pulumi.Output.concat("arn:", partition.partition, ":ssm:", args.spec.region or "", ":",
                                   identity.account_id, ":parameter", self.ssm_prefix, "/*")
        self.policies = []
        self._attach("secrets", pulumi.Output.all(arn, self.key.arn).apply(
            lambda a: json.dumps(secrets_policy(a[0], a[1]), sort_keys=True)))
        bucket, grant = args.spec.s3_bucket, args.spec.bucket_grant
        if bucket is not None and grant == "instance_role":
            self._attach("bucket", partition.partition.apply(
                lambda p: json.dumps(bucket_access_policy(bucket, p), sort_keys=True)))
        if bucket is not None and grant == "cross_account_role" and bucket.role_arn:
            self._attach("assume-bucket-role", json.dumps(assume_bucket_role_policy(bucket), sort_keys=True))
        self.admin_secret: aws.secretsmanager.Secret | None = None
        if args.admin_password is not None:
            self._admin_secret(name, args, role, child)
        profiles = [aws.iam.InstanceProfile(f"{name}{suffix}-profile", role=r.name, tags=args.tags, opts=child)
                    for suffix, r in self.roles]
        self.profile_name, self.head_profile_name = profiles[0].name, profiles[-1].name
        self.register_outputs({"profile_name": self.profile_name, "ssm_prefix": self.ssm_prefix})

    def _attach(self, what: str, policy: pulumi.Input[str]) -> None:
        """One policy on every role (the nodes' role keeps the names it always had)."""
        child = pulumi.ResourceOptions(parent=self)
        self.policies += [aws.iam.RolePolicy(f"{self.name}{suffix}-{what}", role=r.id, policy=policy, opts=child)
                          for suffix, r in self.roles]

    def allow_node_actions(self, launch_template_id: pulumi.Input[str]) -> None:
        """An elastic head's node actions (render.elastic_iam): launch from this launch template only, with the
        cluster tag; start/stop/terminate the cluster's instances; pass the nodes' role to EC2 only."""
        spec, (_, head) = self.spec, self.roles[-1]
        policy = pulumi.Output.all(self.identity.account_id, launch_template_id, self.node_role.arn,
                                   self.partition.partition).apply(
            lambda a: json.dumps(node_actions_policy(spec.name, spec.region or "", a[0], a[1], a[2], a[3]),
                                 sort_keys=True))
        self.policies.append(aws.iam.RolePolicy(f"{self.name}-head-node-actions", role=head.id, policy=policy,
                                                opts=pulumi.ResourceOptions(parent=self)))

    def _admin_secret(self, name: str, args: NodeIdentityArgs, role: aws.iam.Role,
                      opts: pulumi.ResourceOptions) -> None:
        """The Windows administrator password in Secrets Manager, readable by the node role only (its policy names
        this secret); never in user data, tags or outputs. Encrypted with Secrets Manager's own key: the
        deployment's key may be used by the node role alone, so the deploying user could not write the secret."""
        self.admin_secret = aws.secretsmanager.Secret(
            f"{name}-admin-password", description=f"mpicloud {args.spec.name}: Windows administrator password",
            recovery_window_in_days=7, tags=args.tags, opts=opts)
        aws.secretsmanager.SecretVersion(f"{name}-admin-password-value", secret_id=self.admin_secret.id,
                                         secret_string=pulumi.Output.secret(args.admin_password), opts=opts)
        # every role: an elastic head reads it too (its bootstrap makes the same administrator account)
        self._attach("admin-password", self.admin_secret.arn.apply(
            lambda arn: json.dumps(admin_secret_policy(arn), sort_keys=True)))
