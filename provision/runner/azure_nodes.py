"""Azure node actions for the runner's pool, run on the head with its managed identity (stdlib only):
`resume NODE` starts the node's VM (created up front with the cluster) and waits until it runs; `suspend NODE`
deallocates it (a deallocated VM bills its disks, not compute). Idempotent: Resource Manager accepts both for
a VM already in that state.

Settings: runner.json `pool.azure`: arm (Resource Manager endpoint), subscription, resource_group, cluster
(VM names are `<cluster>-<node>`, as render.azure.vm_name), api_version (default the templates' compute API),
ready_ports (resume waits until the node answers on each), imds (default the instance metadata endpoint).
The template knows none of the deployment's values: `configure --root ROOT [--arm URL]`, run once by the head's
bootstrap, fills them in from the head VM's own instance metadata (its subscription, resource group and name;
Resource Manager from --arm, else the VM's `mpicloud:arm` tag) and sets the pool's `max` to the compute nodes
runner.json lists. No secret anywhere: the token comes from the
managed identity at each action. Shipped to Linux and Windows nodes alike (stdlib only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the protocol package installed beside this file
from mpicloud.protocol.atomic import write_text
from mpicloud.protocol.pool import AZURE_COMPUTE_API as COMPUTE_API
from mpicloud.protocol.pool import wait_ports

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
           f"?api-version={settings.get('api_version', COMPUTE_API)}"


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
    wait_ports(node, list(settings.get("ready_ports") or []), deadline, poll)
    return state


def suspend(settings: dict[str, Any], node: str) -> str:
    bearer = token(settings)
    call(settings, bearer, "POST", vm_url(settings, node, "deallocate"))
    return "deallocating"


#: what resume and suspend need in pool.azure (configure adds the deployment's values)
REQUIRED = ("arm", "subscription", "resource_group", "cluster")


def instance(settings: dict[str, Any], tries: int = 10, wait: float = 6.0) -> dict[str, Any]:
    """This VM's compute metadata (subscriptionId, resourceGroupName, name, tagsList) from the instance metadata
    endpoint, tried again for about a minute (at boot it may not answer yet)."""
    request = urllib.request.Request(f"{settings.get('imds', IMDS)}/instance/compute?api-version=2021-02-01",
                                     headers={"Metadata": "true"})
    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return dict(json.load(answer))
    for _ in range(tries - 1):
        try:
            return fetch()
        except OSError:
            time.sleep(wait)
    return fetch()  # the last try's error is the one reported


def configure(root: Path, arm: str | None) -> dict[str, Any]:
    """Fill runner.json's pool.azure with the deployment's values from the head VM's metadata and bound the pool
    by the compute nodes runner.json lists (every VM the deployment created); atomic replace."""
    path = root / "runner.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    pool, head = config["pool"], str(config["nodes"][0]["name"])
    meta = instance(pool["azure"])
    tags = {t["name"]: t["value"] for t in meta.get("tagsList") or []}
    name = str(meta["name"])
    if not name.endswith(f"-{head}"):
        raise ValueError(f"this VM is {name!r}, not the head node {head!r} of a cluster")
    pool["azure"].update(arm=arm or tags["mpicloud:arm"], subscription=meta["subscriptionId"],
                         resource_group=meta["resourceGroupName"], cluster=name[:-len(head) - 1])
    pool["max"] = len(config["nodes"]) - 1
    pool["min"] = min(int(pool["min"]), pool["max"])
    # the runner's user keeps owning its configuration (cloud-init runs this as root)
    write_text(path, json.dumps(config, sort_keys=True, indent=2) + "\n", owner_of=path)
    return dict(pool["azure"])


def main(argv: list[str]) -> int:
    """`azure_nodes.py resume|suspend --root ROOT NODE` (the pool's resume_command/suspend_command);
    `azure_nodes.py configure --root ROOT [--arm URL]` (the head's bootstrap, once)."""
    parser = argparse.ArgumentParser(prog="azure_nodes.py")
    parser.add_argument("action", choices=("resume", "suspend", "configure"))
    parser.add_argument("--root", type=Path, required=True, help="the runner root (runner.json)")
    parser.add_argument("--arm", help="configure: the Resource Manager endpoint")
    parser.add_argument("node", nargs="?", help="resume/suspend: the node's name (N1, node2, ...)")
    args = parser.parse_intermixed_args(argv)  # the pool appends the node after --root ROOT
    if args.action == "configure":
        print(f"configured: {configure(args.root, args.arm)}", flush=True)
        return 0
    if not args.node:
        parser.error(f"{args.action} needs a node name")
    settings = json.loads((args.root / "runner.json").read_text(encoding="utf-8"))["pool"]["azure"]
    missing = [key for key in REQUIRED if not settings.get(key)]
    if missing:
        parser.exit(2, f"azure_nodes.py: runner.json's pool.azure has no {', '.join(missing)}: the head's boot did not "
                       "run `azure_nodes.py configure` (see cloud-init's or the bootstrap's log)\n")
    done = resume(settings, args.node) if args.action == "resume" else suspend(settings, args.node)
    print(f"{args.action} {args.node}: {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
