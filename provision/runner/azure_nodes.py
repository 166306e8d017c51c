"""Azure node actions for the runner's pool, run on the head with its managed identity (stdlib only):
`resume NODE` starts the node's VM (created up front with the cluster) and waits until it runs; `suspend NODE`
deallocates it (a deallocated VM bills its disks, not compute). Idempotent: Resource Manager accepts both for
a VM already in that state.

Settings: runner.json `pool.azure`: arm (Resource Manager endpoint), subscription, resource_group, cluster
(VM names are `<cluster>-<node>`, as render.azure.vm_name), imds (default the instance metadata endpoint).
Not shipped to the nodes yet (see docs/elastic.md): Azure clusters run Windows, whose bootstrap leaves the pool
out for now.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the protocol package installed beside this file
from mpicloud.protocol.pool import AZURE_COMPUTE_API as COMPUTE_API

IMDS = "http://169.254.169.254/metadata"


def token(settings: dict[str, Any]) -> str:
    """An access token for Resource Manager from the VM's managed identity (instance metadata endpoint)."""
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": settings["arm"]})
    request = urllib.request.Request(f"{settings.get('imds', IMDS)}/identity/oauth2/token?{query}",
                                     headers={"Metadata": "true"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return str(json.load(answer)["access_token"])


def vm_url(settings: dict[str, Any], node: str, action: str = "") -> str:
    """The VM's Resource Manager URL (with /start, /deallocate or /instanceView) and the API version."""
    group = (f"{settings['arm'].rstrip('/')}/subscriptions/{settings['subscription']}/resourceGroups/"
             f"{settings['resource_group']}")
    suffix = f"/{action}" if action else ""
    return f"{group}/providers/Microsoft.Compute/virtualMachines/{settings['cluster']}-{node}{suffix}" \
           f"?api-version={COMPUTE_API}"


def call(settings: dict[str, Any], bearer: str, method: str, url: str) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {bearer}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        body = answer.read()
    return json.loads(body) if body.strip() else None


def power_state(settings: dict[str, Any], bearer: str, node: str) -> str:
    """`running`, `deallocated`, `starting`, ... from the VM's instance view."""
    view = call(settings, bearer, "GET", vm_url(settings, node, "instanceView"))
    codes = [s["code"] for s in view.get("statuses", []) if s["code"].startswith("PowerState/")]
    return codes[0].split("/", 1)[1] if codes else "unknown"


def resume(settings: dict[str, Any], node: str, timeout: float = 900.0, poll: float = 5.0) -> str:
    bearer = token(settings)
    call(settings, bearer, "POST", vm_url(settings, node, "start"))
    deadline = time.monotonic() + timeout
    while (state := power_state(settings, bearer, node)) != "running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"VM {settings['cluster']}-{node} is {state}, not running")
        time.sleep(poll)
    return state


def suspend(settings: dict[str, Any], node: str) -> str:
    bearer = token(settings)
    call(settings, bearer, "POST", vm_url(settings, node, "deallocate"))
    return "deallocating"


def main(argv: list[str]) -> int:
    """`azure_nodes.py resume|suspend --root ROOT NODE` (the pool's resume_command/suspend_command)."""
    action, node, root = argv[0], argv[-1], Path(argv[argv.index("--root") + 1])
    settings = json.loads((root / "runner.json").read_text(encoding="utf-8"))["pool"]["azure"]
    done = resume(settings, node) if action == "resume" else suspend(settings, node)
    print(f"{action} {node}: {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
