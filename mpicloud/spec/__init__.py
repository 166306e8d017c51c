"""The cluster spec: model, YAML loading, versions."""

from mpicloud.spec.load import load_spec, parse_spec, spec_from_dict
from mpicloud.spec.model import (
    Access,
    Admin,
    AwsOptions,
    AzureOptions,
    Bucket,
    ClusterSpec,
    LocalOptions,
    SecretRef,
    Shared,
    Software,
)

__all__ = [
    "Access", "Admin", "AwsOptions", "AzureOptions", "Bucket", "ClusterSpec", "LocalOptions",
    "SecretRef", "Shared", "Software", "load_spec", "parse_spec", "spec_from_dict",
]
