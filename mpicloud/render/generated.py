"""Every checked-in generated file under templates/, and `make render` / the drift check that keep them current."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

from mpicloud.render import arm, blobaccess, cfn_bucket
from mpicloud.render.aws.cfn_windows import windows_elastic_template_json, windows_template_json
from mpicloud.render.azure import arm_linux
from mpicloud.render.cloudformation import cluster_template_json, efa_template_json, elastic_template_json

#: relative path under the repository root -> zero-argument renderer returning the file's text
GENERATED: dict[str, Callable[[], str]] = {
    "templates/arm/azuredeploy.json": arm.azuredeploy_json,
    "templates/arm/blob-access.json": blobaccess.blob_access_json,
    "templates/arm/createUiDefinition.json": arm.create_ui_definition_json,
    "templates/arm/elastic/azuredeploy.json": functools.partial(
        arm.azuredeploy_json, arm.EXAMPLE.with_name("azure-windows-elastic.yaml")),
    "templates/arm/linux/azuredeploy.json": arm_linux.azuredeploy_json,
    "templates/arm/linux/createUiDefinition.json": arm_linux.create_ui_definition_json,
    "templates/arm/linux/elastic/azuredeploy.json": functools.partial(
        arm_linux.azuredeploy_json, arm.EXAMPLE.with_name("azure-linux-elastic.yaml")),
    "templates/cloudformation/bucket-access.json": cfn_bucket.bucket_access_json,
    "templates/cloudformation/cluster-efa.json": efa_template_json,
    "templates/cloudformation/cluster-elastic.json": elastic_template_json,
    "templates/cloudformation/cluster.json": cluster_template_json,
    "templates/cloudformation/windows-cluster.json": windows_template_json,
    "templates/cloudformation/windows-cluster-elastic.json": windows_elastic_template_json,
}


def stale(root: Path) -> list[str]:
    """Generated files whose checked-in copy differs from what the renderers produce now."""
    return [rel for rel, render in sorted(GENERATED.items())
            if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != render()]


def write_all(root: Path) -> list[str]:
    """Regenerate every file; returns the paths written."""
    for rel, render in sorted(GENERATED.items()):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(), encoding="utf-8")
    return sorted(GENERATED)


def main(argv: list[str]) -> int:
    """`python -m mpicloud.render.generated [--check] [ROOT]`."""
    check = "--check" in argv
    rest = [a for a in argv if a != "--check"]
    root = Path(rest[0]) if rest else Path.cwd()
    if check:
        out = stale(root)
        for rel in out:
            print(f"{rel} is out of date: run `make render` and commit the result")
        return 1 if out else 0
    for rel in write_all(root):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
