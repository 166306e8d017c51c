#!/bin/bash
# mpicloud runner delivery (head node): the runner's files are too big for EC2 user data (16 KB), so the
# deployment stores them gzip+base64 in SSM String parameters PREFIX/runner/FILE/0..N-1; this script joins
# them, checks the SHA-256 the user data carries, and installs them in /opt/mpicloud.
# usage: fetch-runner.sh FILE:CHUNKS:SHA256 ...   (FILE: a path relative to /opt/mpicloud)   (PREFIX, REGION from /etc/mpicloud/node.env)
# MPICLOUD_SYSROOT (tests only) prefixes /etc and /opt.
set -euo pipefail
root=${MPICLOUD_SYSROOT:-}
. "$root/etc/mpicloud/node.env"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for item in "$@"; do
  IFS=: read -r file chunks sha <<< "$item"
  mkdir -p "$(dirname "$work/$file")"
  : > "$work/$file.b64"
  for ((i = 0; i < chunks; i++)); do
    aws ssm get-parameter --region "$MPICLOUD_REGION" --name "$MPICLOUD_SSM_PREFIX/runner/$file/$i" \
      --query Parameter.Value --output text | tr -d '\n' >> "$work/$file.b64"
  done
  base64 -d "$work/$file.b64" | gunzip > "$work/$file"
  echo "$sha  $work/$file" | sha256sum -c --quiet - || { echo "fetch-runner.sh: $file is corrupt" >&2; exit 1; }
  install -D -m 755 "$work/$file" "$root/opt/mpicloud/$file"
done
