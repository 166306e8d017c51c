"""A real moto server (separate process) with IAM enforcement switched on after the admin set-up."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3

from mpicloud.render.iam import assume_bucket_role_policy, bucket_access_policy, cross_account_trust_policy
from mpicloud.spec.model import Bucket

ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
REGION = "eu-west-1"


@dataclass
class S3World:
    """The moto endpoint, an admin key, and the bucket seen by the cluster."""

    endpoint: str
    admin: tuple[str, str]
    user_key: tuple[str, str]       # IAM user carrying the bucket policy (grant iam_user)
    node_key: tuple[str, str]       # IAM user that may only assume the bucket role (cross_account_role)
    bucket: Bucket
    role_arn: str

    def client(self, service: str, key: tuple[str, str] | None = None) -> Any:
        """A boto3 client with the admin key (or another key)."""
        key_id, secret = key or self.admin
        session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=REGION)
        return session.client(service, endpoint_url=self.endpoint)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto_server did not start within 30 s")


def _make_user(iam: Any, name: str, policy: dict[str, Any]) -> tuple[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto_server process on a free loopback port; yields its endpoint and ends it (by its PID) after."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait(endpoint, proc)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def moto_world(bucket: Bucket) -> Iterator[S3World]:
    """Start moto_server, create bucket + objects + users + cross-account role, then enforce IAM."""
    with moto_server() as endpoint:
        boot = S3World(endpoint, ("testing", "testing"), ("", ""), ("", ""), bucket, "")
        iam = boot.client("iam")
        admin = _make_user(iam, "admin", ADMIN_POLICY)
        user = _make_user(iam, "cluster-nodes", bucket_access_policy(bucket))
        # moto authorises non-S3 calls against Resource "*" only, so the node user gets the rendered
        # statement widened to "*" here; the exact document (Resource = the role ARN) is checked in test_iam.py
        assume = assume_bucket_role_policy(bucket.model_copy(update={"role_arn": "arn:aws:iam::1:role/x"}))
        assume["Statement"][0]["Resource"] = "*"
        node = _make_user(iam, "node-base", assume)
        # moto matches trust principals literally (an account root does not cover its users): trust the node user
        node_arn = iam.get_user(UserName="node-base")["User"]["Arn"]
        trust = cross_account_trust_policy(bucket.model_copy(update={"trusted_principal_arn": node_arn}))
        role = iam.create_role(RoleName="sim-data-access", AssumeRolePolicyDocument=json.dumps(trust))
        role_arn = role["Role"]["Arn"]
        iam.put_role_policy(RoleName="sim-data-access", PolicyName="bucket",
                            PolicyDocument=json.dumps(bucket_access_policy(bucket)))
        s3 = boot.client("s3")
        s3.create_bucket(Bucket=bucket.name, CreateBucketConfiguration={"LocationConstraint": REGION})
        for key, body in ((f"{bucket.input_prefix}mesh.dat", b"mesh"), ("other/secret.txt", b"secret")):
            s3.put_object(Bucket=bucket.name, Key=key, Body=body)
        reset = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                       headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(reset, timeout=5).close()
        yield S3World(endpoint, admin, user, node, bucket, role_arn)
