#!/bin/bash
# mpicloud idle shutdown, run by the runner on the head node. usage: stop-cluster.sh halt|deallocate
# halt (AWS): halt every worker over the intra-cluster SSH key, then the head node itself. With
#   InstanceInitiatedShutdownBehavior=stop (the EC2 default) a halt stops the instance (disks kept).
# deallocate (Azure): deallocate every VM, the head last, through Resource Manager with the head node's managed
#   identity (a custom role holding only virtualMachines/read and deallocate/action on each VM). An Azure VM halted
#   from inside is NOT deallocated and still bills compute: halting is only the fallback when that fails.
# MPICLOUD_SYSROOT (tests only) prefixes /etc; MPICLOUD_IMDS (tests only) replaces the metadata endpoint.
set -uo pipefail
mode=${1:-halt}
etc=${MPICLOUD_SYSROOT:-}/etc/mpicloud

halt() {
  while read -r host _; do
    [ "$host" = node0 ] && continue
    ssh -o BatchMode=yes -o ConnectTimeout=10 "$host" sudo -n /sbin/shutdown -h now || true
  done < "$etc/hostfile"
  sudo -n /sbin/shutdown -h now
}

field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

deallocate() {
  local imds=${MPICLOUD_IMDS:-http://169.254.169.254/metadata} arm=https://management.azure.com/
  local vm group self host
  [ -f "$etc/node.env" ] && . "$etc/node.env" && arm=${MPICLOUD_ARM:-$arm}
  vm=$(curl -fsS -H Metadata:true "$imds/instance/compute?api-version=2021-02-01") || return 1
  # the access token goes to a header file, never onto a command line
  auth=$(mktemp) && trap 'rm -f "$auth"' EXIT
  curl -fsS -H Metadata:true -G "$imds/identity/oauth2/token" --data-urlencode "api-version=2018-02-01" \
    --data-urlencode "resource=$arm" | python3 -c 'import json, sys; print("Authorization: Bearer "
    + json.load(sys.stdin)["access_token"])' > "$auth" || return 1
  group="${arm%/}/subscriptions/$(field subscriptionId <<< "$vm")/resourceGroups/$(field resourceGroupName <<< "$vm")"
  self=$(field name <<< "$vm")
  # VM names are CLUSTER-nodeI (render/azure vm_name); the head node is CLUSTER-node0
  while read -r host _; do
    [ "$host" = node0 ] || deallocate_vm "${self%-node0}-$host" || return 1
  done < "$etc/hostfile"
  deallocate_vm "$self"
}

deallocate_vm() {
  echo "mpicloud: deallocating $1"
  curl -fsS -X POST -H @"$auth" -H 'Content-Length: 0' \
    "$group/providers/Microsoft.Compute/virtualMachines/$1/deallocate?api-version=2024-11-01" > /dev/null
}

case "$mode" in
  halt) halt ;;
  deallocate) deallocate || { echo "mpicloud: deallocation failed; halting instead (the VM still bills)" >&2; halt; } ;;
  *) echo "stop-cluster.sh: unknown mode $mode (halt or deallocate)" >&2; exit 2 ;;
esac
