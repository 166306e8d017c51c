#!/bin/bash
# mpicloud deployment values from the VM's own tags over Azure IMDS, so one custom data serves every node of the
# ARM template and the Pulumi program: writes /etc/mpicloud/node.env and the admin's public key (from the VM's
# osProfile) to /etc/mpicloud/admin.pub. usage: azure-node-env.sh
# MPICLOUD_SYSROOT (tests only) prefixes /etc; MPICLOUD_IMDS (tests only) replaces the metadata endpoint.
set -euo pipefail
imds=${MPICLOUD_IMDS:-http://169.254.169.254/metadata}
etc=${MPICLOUD_SYSROOT:-}/etc/mpicloud
md() { curl -fsS --retry 10 -H Metadata:true "$imds/instance/$1?api-version=2021-02-01&format=json"; }
install -d -m 755 "$etc"
md compute > "$etc/compute.json"
md network/interface/0/ipv4/ipAddress/0 > "$etc/address.json"
python3 - "$etc" <<'PY'
import json, sys
etc = sys.argv[1]
with open(f"{etc}/compute.json", encoding="utf-8") as handle:
    compute = json.load(handle)
with open(f"{etc}/address.json", encoding="utf-8") as handle:
    address = json.load(handle)
tags = {tag["name"]: tag["value"] for tag in compute.get("tagsList", [])}
values = {"COUNT": tags["mpicloud:nodes"], "SLOTS": tags["mpicloud:slots"], "IDLE_MINUTES": tags["mpicloud:idle-minutes"],
          "VAULT": tags["mpicloud:vault"], "ARM": tags["mpicloud:arm"], "REGION": compute["location"],
          "PRIVATE_IP": address["privateIpAddress"]}
for name, value in values.items():
    if not value or not all(c.isalnum() or c in ".:/-_" for c in value):
        sys.exit(f"azure-node-env.sh: tag value of {name} is not a plain token")
with open(f"{etc}/node.env", "w", encoding="utf-8") as handle:
    handle.writelines(f"MPICLOUD_{name}={value}\n" for name, value in values.items())
with open(f"{etc}/admin.pub", "w", encoding="utf-8") as handle:
    handle.writelines(key["keyData"].strip() + "\n" for key in compute.get("publicKeys", []))
PY
rm -f "$etc/compute.json" "$etc/address.json"
