"""ARM validation offline: the Azure JSON schemas from <shared>/schemas/arm, plus unknown-key detection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing._core import Resolver
from referencing.jsonschema import DRAFT4

BASE = "https://schema.management.azure.com/schemas/"
PROVIDER_FILES = {
    ("Microsoft.Compute", "2024-11-01"): "2024-11-01/Microsoft.Compute.json",
    ("Microsoft.Network", "2024-05-01"): "2024-05-01/Microsoft.Network.NRP.json",
    ("Microsoft.Authorization", "2022-04-01"): "2022-04-01/Microsoft.Authorization.json",
}
SPECIAL = {("Microsoft.Compute/virtualMachines/extensions", "2024-11-01"):
           "2024-11-01/Microsoft.Compute.Extensions.json"}
Schema = tuple[Any, Resolver[Any]]


class ArmSchemas:
    """A registry that maps schema.management.azure.com URLs to local files and refuses every other URI."""

    def __init__(self, directory: Path) -> None:
        def retrieve(uri: str) -> Resource[Any]:
            if not uri.startswith(BASE):
                raise LookupError(f"refusing to fetch {uri}")
            contents = json.loads((directory / uri[len(BASE):].split("#", 1)[0]).read_text(encoding="utf-8"))
            return Resource.from_contents(contents, default_specification=DRAFT4)
        self.registry: Registry[Any] = Registry(retrieve=retrieve)  # type: ignore[call-arg]

    def errors(self, ref: str, instance: Any) -> list[str]:
        """Schema errors of `instance` against `ref`, the most relevant detail for each."""
        validator = Draft4Validator({"$ref": ref}, registry=self.registry)
        out = []
        for error in validator.iter_errors(instance):
            detail = best_match([error]) if error.context is None else best_match(error.context) or error
            out.append(f"{'/'.join(map(str, error.absolute_path))}: {detail.message[:200]}")
        return out

    def template_errors(self, template: dict[str, Any]) -> list[str]:
        """The skeleton against deploymentTemplate.json, then each resource by type and apiVersion."""
        errs = self.errors(BASE + "2019-04-01/deploymentTemplate.json#", dict(template, resources=[]))
        for res in template["resources"]:
            errs += [f"{res['type']}: {e}" for e in self.errors(resource_ref(res), res)]
        return errs

    def unknown_keys(self, ref: str, instance: Any) -> list[str]:
        """Keys the schema does not define (the schemas allow unknown keys, Azure silently ignores typos)."""
        resolver = self.registry.resolver()
        return _unknown([_resolve({"$ref": ref}, resolver)], instance, "")


def resource_ref(res: dict[str, Any]) -> str:
    """The schema of one resource: <provider file>#/resourceDefinitions/<type segments joined by _>."""
    namespace, *path = res["type"].split("/")
    rel = SPECIAL.get((res["type"], res["apiVersion"])) or PROVIDER_FILES[(namespace, res["apiVersion"])]
    return f"{BASE}{rel}#/resourceDefinitions/{'_'.join(path)}"


def _resolve(schema: Any, resolver: Resolver[Any]) -> Schema:
    while isinstance(schema, dict) and "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        schema, resolver = resolved.contents, resolved.resolver
    return schema, resolver


def _branches(schemas: list[Schema]) -> list[Schema]:
    """Flatten oneOf/anyOf/allOf into the object schemas that define `properties`."""
    out: list[Schema] = []
    todo = list(schemas)
    while todo:
        schema, resolver = _resolve(*todo.pop())
        if not isinstance(schema, dict):
            continue
        if "properties" in schema:
            out.append((schema, resolver))
        for key in ("oneOf", "anyOf", "allOf"):
            todo += [(s, resolver) for s in schema.get(key, [])]
        if "items" in schema and isinstance(schema["items"], dict):
            out.append(({"__items__": schema["items"]}, resolver))
    return out


def _unknown(schemas: list[Schema], instance: Any, path: str) -> list[str]:
    branches = _branches(schemas)
    if isinstance(instance, list):
        items = [(s["__items__"], r) for s, r in branches if "__items__" in s]
        return [e for i, v in enumerate(instance) for e in (_unknown(items, v, f"{path}/{i}") if items else [])]
    objects = [(s, r) for s, r in branches if "properties" in s]
    if not isinstance(instance, dict) or not objects:
        return []
    errs = []
    for key, value in instance.items():
        children = [(s["properties"][key], r) for s, r in objects if key in s["properties"]]
        if not children:
            errs.append(f"{path}/{key}")
        else:
            errs += _unknown(children, value, f"{path}/{key}")
    return errs


def checkov(template: dict[str, Any], skips: dict[str, str], folder: Path) -> dict[str, Any]:
    """checkov --framework arm over the template (written to folder/azuredeploy.json), skipping `skips`: the
    JSON report."""
    (folder / "azuredeploy.json").write_text(json.dumps(template, indent=2))
    exe = Path(sys.executable).with_name("checkov")
    proc = subprocess.run([str(exe), "-f", str(folder / "azuredeploy.json"), "--framework", "arm", "--skip-download",
                           "--compact", "--quiet", "-o", "json", "--skip-check", ",".join(sorted(skips))],
                          capture_output=True, text=True, timeout=240, cwd=folder, check=False)
    assert proc.stdout, proc.stderr[-2000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report
