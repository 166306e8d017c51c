"""Least-privilege access to the customer's Azure Blob container, in both grant modes.

managed_identity: two role assignments for the head node's identity, scoped to the container, each with an ABAC
condition: Storage Blob Data Reader only under the input prefix, Storage Blob Data Contributor only under the
output prefix (listing only with a prefix under it). sas: a container SAS (read, list, create, write; no delete)
with an expiry, installed on the cluster as `azure/blob.json` (mode 600)."""

from __future__ import annotations

import datetime
import json
from typing import Any

from mpicloud.errors import RenderError
from mpicloud.secret import Secret
from mpicloud.spec.model import BlobContainer

BLOBS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
#: built-in role definition ids (the same in every tenant)
READER_ROLE = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"       # Storage Blob Data Reader
CONTRIBUTOR_ROLE = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"  # Storage Blob Data Contributor
#: the blob data actions each role grants (what its condition must cover, all of them)
ROLE_ACTIONS = {READER_ROLE: [f"{BLOBS}/read"],
                CONTRIBUTOR_ROLE: [f"{BLOBS}/{a}" for a in ("read", "write", "delete", "add/action", "move/action")]}
#: the condition a role gets, by the prefix it is limited to
ROLE_PREFIX = {READER_ROLE: "input", CONTRIBUTOR_ROLE: "output"}
#: the version of the condition language used below
CONDITION_VERSION = "2.0"


def prefix_condition(actions: list[str], prefix: str) -> str:
    """An ABAC condition: each of the role's blob actions only on blobs under prefix, and listing (read with
    suboperation Blob.List) only with a list prefix under it."""
    read = f"{BLOBS}/read"
    unscoped = [f"!(ActionMatches{{'{read}'}} AND NOT SubOperationMatches{{'Blob.List'}})" if a == read
                else f"!(ActionMatches{{'{a}'}})" for a in actions]
    blob_rule = (f"(({' AND '.join(unscoped)}) OR "
                 f"(@Resource[{BLOBS}:path] StringStartsWith '{prefix}'))")
    list_rule = (f"((!(ActionMatches{{'{read}'}} AND SubOperationMatches{{'Blob.List'}})) OR "
                 f"(@Request[{BLOBS}:prefix] StringStartsWith '{prefix}'))")
    return f"{blob_rule} AND {list_rule}" if read in actions else blob_rule


def container_scope(subscription: str, resource_group: str, account: str, container: str) -> str:
    """The container's resource id, the scope of both role assignments."""
    return (f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Storage/"
            f"storageAccounts/{account}/blobServices/default/containers/{container}")


def role_assignments(container: BlobContainer) -> list[dict[str, str]]:
    """The two assignments (role id, condition) for the spec's prefixes."""
    prefixes = {"input": container.input_prefix, "output": container.output_prefix}
    return [{"role": role, "condition": prefix_condition(ROLE_ACTIONS[role], prefixes[ROLE_PREFIX[role]])}
            for role in (READER_ROLE, CONTRIBUTOR_ROLE)]


def _arm_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def blob_access_template() -> dict[str, Any]:
    """templates/arm/blob-access.json: deployed by the customer in the storage account's resource group, it
    grants a cluster's managed identity (principalId) the two conditional role assignments."""
    def condition(role: str) -> str:
        token = f"@@{ROLE_PREFIX[role].upper()}@@"
        text = prefix_condition(ROLE_ACTIONS[role], token)
        return f"[replace({_arm_string(text)}, {_arm_string(token)}, parameters('{ROLE_PREFIX[role]}Prefix'))]"
    scope = ("[format('Microsoft.Storage/storageAccounts/{0}/blobServices/default/containers/{1}', "
             "parameters('storageAccountName'), parameters('containerName'))]")
    text = {"type": "string"}
    resources = [{
        "type": "Microsoft.Authorization/roleAssignments", "apiVersion": "2022-04-01",
        "name": f"[guid(resourceGroup().id, parameters('storageAccountName'), parameters('containerName'), "
                f"parameters('principalId'), '{role}')]",
        "scope": scope,
        "properties": {
            "roleDefinitionId": f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{role}')]",
            "principalId": "[parameters('principalId')]", "principalType": "ServicePrincipal",
            "description": f"mpicloud: {ROLE_PREFIX[role]} prefix only",
            "conditionVersion": CONDITION_VERSION, "condition": condition(role)},
    } for role in (READER_ROLE, CONTRIBUTOR_ROLE)]
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {"description": "mpicloud: a cluster's managed identity may read only the input prefix and "
                                    "read/write only the output prefix of one container (ABAC conditions)."},
        "parameters": {
            "storageAccountName": {**text, "minLength": 3, "maxLength": 24,
                                   "metadata": {"description": "the storage account (in this resource group)"}},
            "containerName": {**text, "minLength": 3, "maxLength": 63},
            "principalId": {**text, "metadata": {"description": "the cluster head's managed identity "
                                                                "(output headPrincipalId of the cluster)"}},
            "inputPrefix": {**text, "defaultValue": "input/",
                            "metadata": {"description": "ends in '/'; no quote characters"}},
            "outputPrefix": {**text, "defaultValue": "output/",
                             "metadata": {"description": "ends in '/'; no quote characters"}},
        },
        "resources": resources,
    }


def blob_access_json() -> str:
    """blob_access_template as the checked-in file's text."""
    return json.dumps(blob_access_template(), indent=2, sort_keys=True) + "\n"


def container_sas(container: BlobContainer, account_key: Secret, days: float) -> Secret:
    """A container SAS signed with the account key: read, list, create and write (no delete), https only
    unless the endpoint is http (emulators), valid from five minutes ago (clock skew) for `days`."""
    try:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    except ImportError:
        raise RenderError("making a SAS needs azure-storage-blob: pip install 'mpicloud[azure]'") from None
    if not 0 < days <= 365:
        raise RenderError(f"--days must be between 0 and 365, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    https = not (container.endpoint_url or "").startswith("http://")
    sas = generate_container_sas(
        container.account, container.container, account_key=account_key.reveal(),
        permission=ContainerSasPermissions(read=True, list=True, create=True, write=True),
        start=now - datetime.timedelta(minutes=5), expiry=now + datetime.timedelta(days=days),
        protocol="https" if https else "https,http")
    return Secret(sas)


def blob_config(container: BlobContainer, sas: Secret) -> Secret:
    """The cluster's `azure/blob.json`: account, endpoint and SAS, as the node's blobstore.py reads them."""
    endpoint = container.endpoint_url or f"https://{container.account}.blob.core.windows.net"
    return Secret(json.dumps({"account": container.account, "endpoint": endpoint,
                              "container": container.container, "sas": sas.reveal().lstrip("?")}))
