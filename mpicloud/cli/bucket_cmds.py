"""`mpicloud render iam|awsconfig SPEC` and `mpicloud bucket install NAME SPEC`: least-privilege bucket access."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from mpicloud.api import Cluster
from mpicloud.cli.app import app, out
from mpicloud.errors import MpicloudError
from mpicloud.render import blobaccess
from mpicloud.render.awsconfig import AccessKey, AwsFiles, aws_files
from mpicloud.render.iam import iam_documents
from mpicloud.secret import secret_from_env
from mpicloud.spec import ClusterSpec, load_spec

render_app = typer.Typer(no_args_is_help=True, help="Render artifacts from a spec (IAM, AWS profile).")
bucket_app = typer.Typer(no_args_is_help=True, help="The customer's own bucket on a running cluster.")
app.add_typer(render_app, name="render")
app.add_typer(bucket_app, name="bucket")

KeyIdEnv = Annotated[str | None, typer.Option(help="env var holding the access key id (iam_user, or "
                                                    "cross_account_role off EC2)")]
SecretEnv = Annotated[str | None, typer.Option(help="env var holding the secret access key")]
OnEc2 = Annotated[bool | None, typer.Option("--on-ec2/--off-ec2",
                                            help="nodes are EC2 instances (default: cloud is aws)")]


@render_app.command("iam")
def render_iam(spec: Annotated[Path, typer.Argument(help="cluster spec with a bucket: section")],
               partition: Annotated[str, typer.Option(help="aws, aws-cn or aws-us-gov")] = "aws") -> None:
    """Print the bucket's IAM documents (permission policy, and trust policies for the grant mode) as JSON."""
    out.print(json.dumps(iam_documents(load_spec(spec), partition), indent=2, sort_keys=True), markup=False)


def _files(spec: ClusterSpec, key_id_env: str | None, secret_env: str | None, on_ec2: bool | None) -> AwsFiles:
    if bool(key_id_env) != bool(secret_env):
        raise MpicloudError("pass both --access-key-id-env and --secret-access-key-env, or neither")
    key = None
    if key_id_env and secret_env:
        key_id = secret_from_env(key_id_env, "access key id").reveal()
        key = AccessKey(key_id, secret_from_env(secret_env, "secret access key"))
    return aws_files(spec, key, on_ec2=on_ec2)


@render_app.command("awsconfig")
def render_awsconfig(
    spec: Annotated[Path, typer.Argument(help="cluster spec with a bucket: section")],
    dest: Annotated[Path | None, typer.Option("--out", help="directory for config + credentials (mode 600)")] = None,
    access_key_id_env: KeyIdEnv = None, secret_access_key_env: SecretEnv = None, on_ec2: OnEc2 = None,
) -> None:
    """Render the AWS `config` (+ `credentials`) pair with the profile `mpicloud` for the bucket grant."""
    files = _files(load_spec(spec), access_key_id_env, secret_access_key_env, on_ec2)
    if dest is None:
        if files.credentials is not None:
            raise MpicloudError("this grant needs a credentials file, which holds a secret: pass --out DIR")
        out.print(files.config, end="", markup=False)
        return
    dest.mkdir(parents=True, exist_ok=True)
    written = [_write_private(dest / "config", files.config)]
    if files.credentials is not None:
        written.append(_write_private(dest / "credentials", files.credentials.reveal()))
    out.print(f"wrote {', '.join(str(p) for p in written)}; use AWS_CONFIG_FILE={dest / 'config'}"
              + (f" AWS_SHARED_CREDENTIALS_FILE={dest / 'credentials'}" if files.credentials else "")
              + " AWS_PROFILE=mpicloud", markup=False)


def _write_private(path: Path, text: str) -> Path:
    """Write a file readable by its owner only (created 600, then renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


@bucket_app.command("install")
def bucket_install(
    name: Annotated[str, typer.Argument(help="registered cluster")],
    spec: Annotated[Path, typer.Argument(help="cluster spec with a bucket: section")],
    access_key_id_env: KeyIdEnv = None, secret_access_key_env: SecretEnv = None, on_ec2: OnEc2 = None,
    sas_env: Annotated[str | None, typer.Option(help="azure_blob: env var holding a container SAS")] = None,
    account_key_env: Annotated[str | None, typer.Option(
        help="azure_blob: env var holding the storage account key; a container SAS (read, list, create, write; "
             "no delete) is made from it here and only the SAS goes to the cluster")] = None,
    days: Annotated[float, typer.Option(help="azure_blob with --account-key-env: the SAS's lifetime")] = 7,
) -> None:
    """Deliver bucket access to the cluster (mode 600): the AWS profile for s3:// URLs, or the container SAS for
    az:// URLs; jobs and the runner use it."""
    loaded = load_spec(spec)
    container = loaded.blob_container
    if container is None:
        files = _files(loaded, access_key_id_env, secret_access_key_env, on_ec2)
        paths = Cluster.get(name).install_bucket_profile(files)
        out.print(f"bucket profile installed on {name}: {', '.join(paths)} (jobs see AWS_PROFILE=mpicloud)",
                  markup=False)
        return
    if bool(sas_env) == bool(account_key_env):
        raise MpicloudError("an azure_blob bucket needs --sas-env or --account-key-env (one of them)")
    if sas_env:
        sas = secret_from_env(sas_env, "container SAS")
    else:
        sas = blobaccess.container_sas(container, secret_from_env(account_key_env or "", "storage account key"), days)
    path = Cluster.get(name).install_blob_config(blobaccess.blob_config(container, sas))
    out.print(f"blob access installed on {name}: {path} (az://{container.account}/{container.container}/)",
              markup=False)
