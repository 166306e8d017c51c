"""Pulumi entry point: load the spec from stack config, run the program for its cloud, export outputs."""

from __future__ import annotations

import pulumi

from mpicloud.spec import parse_spec

spec = parse_spec(pulumi.Config("mpicloud").require("spec"), source="stack config mpicloud:spec")
if spec.cloud == "azure":
    from azure_mpi import deploy as deploy_azure

    deploy_azure(spec)
elif spec.cloud == "aws":
    from aws import deploy as deploy_aws

    deploy_aws(spec)
else:
    raise pulumi.RunError(f"cloud {spec.cloud!r} is not deployed with Pulumi; use `mpicloud up` instead")
