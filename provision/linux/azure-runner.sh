#!/bin/bash
# mpicloud runner delivery on Azure (head node): the runner's files are a gzipped tar in the VM's userData (custom
# data holds the cloud-config and has no room for them); this script reads it from IMDS, retries until its SHA-256
# is the one the custom data carries (IMDS may briefly serve an older userData), and unpacks it in /opt/mpicloud.
# usage: azure-runner.sh SHA256
# MPICLOUD_SYSROOT (tests only) prefixes /opt; MPICLOUD_IMDS (tests only) replaces the metadata endpoint.
set -euo pipefail
sha=$1
imds=${MPICLOUD_IMDS:-http://169.254.169.254/metadata}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for _ in $(seq 60); do
  if curl -fsS -H Metadata:true "$imds/instance/compute/userData?api-version=2021-01-01&format=text" \
       | base64 -d > "$work/runner.tar.gz" 2>/dev/null \
     && echo "$sha  $work/runner.tar.gz" | sha256sum -c --quiet - 2>/dev/null; then
    install -d -m 755 "${MPICLOUD_SYSROOT:-}/opt/mpicloud"
    tar -xzf "$work/runner.tar.gz" --no-same-owner -C "${MPICLOUD_SYSROOT:-}/opt/mpicloud"
    exit 0
  fi
  sleep 10
done
echo "azure-runner.sh: IMDS userData is not the expected runner bundle" >&2
exit 1
