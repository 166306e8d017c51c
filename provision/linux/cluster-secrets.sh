#!/bin/bash
# mpicloud intra-cluster secrets, never in user data: the head node creates the cluster SSH key and the Samba
# password and stores them, workers wait for them. AWS: SSM SecureString parameters under the deployment's own
# PREFIX (a nonce per deployment), encrypted with the deployment's own KMS key that only the node role may use.
# Azure (MPICLOUD_VAULT set): secrets of the cluster's own Key Vault, written by the head node's managed identity
# (Key Vault Secrets Officer on that vault) and read by the workers' (Key Vault Secrets User); the access token and
# the values go through files and pipes, never a command line.
# With munge (scheduler: slurm) the same goes for Slurm's munge key (1024 random bytes, base64 in SSM), left in
# /etc/mpicloud/munge.key for slurm-node.sh. usage: cluster-secrets.sh head|worker USER [munge]
# (values from /etc/mpicloud/node.env)
# MPICLOUD_SYSROOT (tests only) prefixes /etc and the user's home.
set -euo pipefail
role=$1 user=$2 munge=${3:-}
root=${MPICLOUD_SYSROOT:-}
. "$root/etc/mpicloud/node.env"
home=$root$(getent passwd "$user" | cut -d: -f6)
group=$(id -gn "$user")
key=$home/.ssh/id_ed25519 password=$root/etc/mpicloud/smb-password
umask 077
install -d -m 700 -o "$user" -g "$group" "$home/.ssh"
install -d -m 700 "$root/etc/mpicloud"

if [ -n "${MPICLOUD_VAULT:-}" ]; then
  imds=${MPICLOUD_IMDS:-http://169.254.169.254/metadata}
  vault=${MPICLOUD_VAULT_URL:-https://$MPICLOUD_VAULT.vault.azure.net}
  auth=$(mktemp)
  trap 'rm -f "$auth"' EXIT
  token() {
    curl -fsS -H Metadata:true "$imds/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net" \
      | python3 -c 'import json, sys; print("Authorization: Bearer " + json.load(sys.stdin)["access_token"])' > "$auth"
  }
  put() {
    token && python3 -c 'import json, sys; print(json.dumps({"value": open(sys.argv[1]).read()}))' "$2" \
      | curl -fsS -X PUT -H @"$auth" -H 'Content-Type: application/json' --data-binary @- \
          "$vault/secrets/$1?api-version=7.4" >/dev/null
  }
  get() {
    token && curl -fsS -H @"$auth" "$vault/secrets/$1?api-version=7.4" \
      | python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["value"])' > "$2.part" && mv "$2.part" "$2"
  }
else
  prefix=$MPICLOUD_SSM_PREFIX region=$MPICLOUD_REGION kms_key=$MPICLOUD_KMS_KEY
  put() { aws ssm put-parameter --region "$region" --name "$prefix/$1" --type SecureString --key-id "$kms_key" \
            --overwrite --value "file://$2" >/dev/null; }
  get() { aws ssm get-parameter --region "$region" --name "$prefix/$1" --with-decryption \
            --query Parameter.Value --output text > "$2"; }
fi
store() {  # a new identity's role on the vault can take minutes to apply: retry like fetch
  for _ in $(seq 90); do put "$1" "$2" 2>/dev/null && return 0; sleep 10; done
  echo "cluster-secrets.sh: could not store $1 within 15 minutes" >&2; return 1
}
fetch() {
  for _ in $(seq 180); do get "$1" "$2" 2>/dev/null && return 0; sleep 10; done
  echo "cluster-secrets.sh: $prefix/$1 did not appear within 30 minutes" >&2; return 1
}

if [ "$role" = head ]; then
  ssh-keygen -q -t ed25519 -N '' -C "mpicloud-cluster" -f "$key" <<< y >/dev/null
  python3 -c 'import secrets; print(secrets.token_urlsafe(24), end="")' > "$password"
  store ssh-key "$key"
  store smb-password "$password"
else
  fetch ssh-key "$key"
  fetch smb-password "$password"
fi
if [ "$munge" = munge ]; then
  munge_b64=$root/etc/mpicloud/munge.key.b64
  if [ "$role" = head ]; then
    head -c 1024 /dev/urandom | base64 -w0 > "$munge_b64"
    store munge-key "$munge_b64"
  else
    fetch munge-key "$munge_b64"
  fi
  base64 -d "$munge_b64" > "$root/etc/mpicloud/munge.key"
  rm -f "$munge_b64"
fi
ssh-keygen -y -f "$key" > "$key.pub"
cat "$root/etc/mpicloud/admin.pub" "$key.pub" >> "$home/.ssh/authorized_keys"
printf 'Host node*\n  StrictHostKeyChecking accept-new\n' >> "$home/.ssh/config"
chown -R "$user:$group" "$home/.ssh"
