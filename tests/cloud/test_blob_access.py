"""Azure Blob least privilege: the ABAC conditions of both role assignments, evaluated (Azurite does not evaluate
RBAC), and the customer-side ARM template that deploys them (Azure schemas)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mpicloud.render import blobaccess
from mpicloud.render.abac_check import allowed, condition_holds
from mpicloud.spec import spec_from_dict
from mpicloud.spec.model import BlobContainer
from tests.cloud.armcheck import ArmSchemas

B = blobaccess.BLOBS
PATH, PREFIX = f"@Resource[{B}:path]", f"@Request[{B}:prefix]"


def _container(**fields: Any) -> BlobContainer:
    spec = spec_from_dict({"name": "ab", "cloud": "local", "nodes": 1, "bucket": {
        "kind": "azure_blob", "account": "simdata", "container": "runs", **fields}})
    assert spec.blob_container is not None
    return spec.blob_container


def _blob(verb: str, path: str) -> dict[str, Any]:
    return {"action": f"{B}/{verb}", "suboperation": None, PATH: path}


def _list(prefix: str | None) -> dict[str, Any]:
    return {"action": f"{B}/read", "suboperation": "Blob.List", **({PREFIX: prefix} if prefix is not None else {})}


ALLOWED = [_blob("read", "input/a"), _blob("read", "input/case/mesh.dat"), _blob("read", "output/b"),
           _blob("write", "output/b"), _blob("add/action", "output/b/log"), _blob("delete", "output/b"),
           _list("input/"), _list("input/case/"), _list("output/run1/")]
DENIED = [_blob("read", "other/x"), _blob("read", "input-old/x"), _blob("read", "inputs"),
          _blob("write", "input/x"), _blob("add/action", "input/x"), _blob("delete", "input/a"),
          _blob("move/action", "input/a"), _blob("write", "other/x"), _blob("write", "output-old/x"),
          _list("other/"), _list("input-old/"), _list(""), _list(None),
          {"action": f"{B}/tags/write", "suboperation": None, PATH: "output/b"}]


def _id(request: dict[str, Any]) -> str:
    return f"{request['action'].split('blobs/')[-1]}:{request.get(PATH) or request.get(PREFIX)}"


@pytest.mark.parametrize("request_", ALLOWED, ids=_id)
def test_conditions_allow_the_input_and_output_prefixes(request_: dict[str, Any]) -> None:
    assert allowed(blobaccess.role_assignments(_container()), blobaccess.ROLE_ACTIONS, request_)


@pytest.mark.parametrize("request_", DENIED, ids=_id)
def test_conditions_deny_everything_else(request_: dict[str, Any]) -> None:
    assert not allowed(blobaccess.role_assignments(_container()), blobaccess.ROLE_ACTIONS, request_)


def test_every_action_of_each_role_is_under_its_condition() -> None:
    """A role action the condition does not name would be allowed everywhere: each must be denied outside."""
    for assignment in blobaccess.role_assignments(_container()):
        for action in blobaccess.ROLE_ACTIONS[assignment["role"]]:
            assert not condition_holds(assignment["condition"], {"action": action, PATH: "elsewhere/x",
                                                                 "suboperation": None}), action


def test_the_evaluator_reads_precedence_and_refuses_what_it_does_not_know() -> None:
    assert condition_holds("ActionMatches{'a'} OR ActionMatches{'b'} AND ActionMatches{'c'}", {"action": "a"})
    assert not condition_holds("(ActionMatches{'a'} OR ActionMatches{'b'}) AND ActionMatches{'c'}", {"action": "a"})
    with pytest.raises(ValueError, match="cannot read"):
        condition_holds("@Resource[x] StringLike 'a*'", {})


def _template_condition(expression: str, parameters: dict[str, str]) -> str:
    """Evaluate the template's `[replace('<text>', '<token>', parameters('<name>'))]` like ARM does."""
    found = re.fullmatch(r"\[replace\('((?:[^']|'')*)', '([^']*)', parameters\('(\w+)'\)\)\]", expression)
    assert found, expression
    return found.group(1).replace("''", "'").replace(found.group(2), parameters[found.group(3)])


def test_customer_template_deploys_the_same_conditions() -> None:
    template = blobaccess.blob_access_template()
    container = _container(input_prefix="cases/in/", output_prefix="cases/out/")
    values = {"inputPrefix": "cases/in/", "outputPrefix": "cases/out/"}
    deployed = [{"role": r["properties"]["roleDefinitionId"].split("'")[-2],
                 "condition": _template_condition(r["properties"]["condition"], values)}
                for r in template["resources"]]
    assert deployed == blobaccess.role_assignments(container)
    assert allowed(deployed, blobaccess.ROLE_ACTIONS, _blob("read", "cases/in/a"))
    assert not allowed(deployed, blobaccess.ROLE_ACTIONS, _blob("write", "cases/in/a"))
    # deterministic names: deploying twice updates the same two assignments
    assert all(r["name"].startswith("[guid(resourceGroup().id") for r in template["resources"])


def test_customer_template_matches_the_azure_schemas(arm_schema_dir: Path) -> None:
    schemas = ArmSchemas(arm_schema_dir)
    assert schemas.template_errors(blobaccess.blob_access_template()) == []


def test_spec_refuses_quotes_in_blob_prefixes() -> None:
    with pytest.raises(Exception, match="input_prefix"):
        _container(input_prefix="in'put/")
