#!/bin/bash
# mpicloud intra-cluster secrets, never in user data: the head node creates the cluster SSH key and the Samba
# password and stores them as SSM SecureString parameters under the deployment's own PREFIX (a nonce per
# deployment), encrypted with the deployment's own KMS key that only the node role may use; workers wait for them.
# With munge (scheduler: slurm) the same goes for Slurm's munge key (1024 random bytes, base64 in SSM), left in
# /etc/mpicloud/munge.key for slurm-node.sh. usage: cluster-secrets.sh head|worker USER [munge]
# (values from /etc/mpicloud/node.env)
# MPICLOUD_SYSROOT (tests only) prefixes /etc and the user's home.
set -euo pipefail
role=$1 user=$2 munge=${3:-}
root=${MPICLOUD_SYSROOT:-}
. "$root/etc/mpicloud/node.env"
prefix=$MPICLOUD_SSM_PREFIX region=$MPICLOUD_REGION kms_key=$MPICLOUD_KMS_KEY
home=$root$(getent passwd "$user" | cut -d: -f6)
group=$(id -gn "$user")
key=$home/.ssh/id_ed25519 password=$root/etc/mpicloud/smb-password
umask 077
install -d -m 700 -o "$user" -g "$group" "$home/.ssh"
install -d -m 700 "$root/etc/mpicloud"

put() { aws ssm put-parameter --region "$region" --name "$prefix/$1" --type SecureString --key-id "$kms_key" \
          --overwrite --value "file://$2" >/dev/null; }
get() { aws ssm get-parameter --region "$region" --name "$prefix/$1" --with-decryption \
          --query Parameter.Value --output text > "$2"; }
fetch() {
  for _ in $(seq 180); do get "$1" "$2" 2>/dev/null && return 0; sleep 10; done
  echo "cluster-secrets.sh: $prefix/$1 did not appear within 30 minutes" >&2; return 1
}

if [ "$role" = head ]; then
  ssh-keygen -q -t ed25519 -N '' -C "mpicloud-cluster" -f "$key" <<< y >/dev/null
  python3 -c 'import secrets; print(secrets.token_urlsafe(24), end="")' > "$password"
  put ssh-key "$key"
  put smb-password "$password"
else
  fetch ssh-key "$key"
  fetch smb-password "$password"
fi
if [ "$munge" = munge ]; then
  munge_b64=$root/etc/mpicloud/munge.key.b64
  if [ "$role" = head ]; then
    head -c 1024 /dev/urandom | base64 -w0 > "$munge_b64"
    put munge-key "$munge_b64"
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
