#!/bin/bash
# mpicloud shared storage: serve DIR from the head node (Samba or NFS) or mount it on a worker.
# usage: shared-storage.sh server|client --kind smb|nfs --path DIR --user NAME [--password-file F]
#        [--server HOST] [--clients CIDR] [--conf-dir DIR] [--port N] [--listen ADDR] [--daemon]
# --conf-dir/--port/--listen/--daemon let a test run a private smbd; the defaults are the cloud's.
# MPICLOUD_SYSROOT (tests only) prefixes the client's /etc.
# SMB3 without unix extensions has no per-file modes: files created over SMB get mode 0775 on the server
# (force create mode) and every file shows as 0775 on the workers (file_mode), so programs on the share run on
# every node. Clients mount through a systemd automount that retries on every access; while nothing is
# mounted the mount point is immutable, so a job can never write to a bare local /shared by mistake.
set -euo pipefail
etc=${MPICLOUD_SYSROOT:-}/etc
role=${1:?server or client}; shift
kind=smb path=/shared user='' password_file='' server='' clients='' conf_dir=/etc/samba port=445
listen='' daemon=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kind) kind=$2; shift 2 ;;
    --path) path=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --password-file) password_file=$2; shift 2 ;;
    --server) server=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --conf-dir) conf_dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --listen) listen=$2; shift 2 ;;
    --daemon) daemon=1; shift ;;
    *) echo "shared-storage.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$user" ] || { echo "shared-storage.sh: --user is required" >&2; exit 2; }
group=$(id -gn "$user")

smb_conf() {
  local state=$conf_dir/state
  mkdir -p "$state/private" "$state/lock" "$state/cache" "$state/pid" "$state/ncalrpc"
  chmod 700 "$state/private"
  {
    echo "[global]"
    echo "  server role = standalone server"
    echo "  security = user"
    echo "  map to guest = never"
    echo "  server min protocol = SMB3"
    echo "  smb ports = $port"
    if [ -n "$listen" ]; then
      echo "  interfaces = $listen"
      echo "  bind interfaces only = yes"
    fi
    echo "  disable netbios = yes"
    echo "  load printers = no"
    echo "  printing = bsd"
    echo "  printcap name = /dev/null"
    echo "  passdb backend = tdbsam:$state/private/passdb.tdb"
    echo "  private dir = $state/private"
    echo "  lock directory = $state/lock"
    echo "  state directory = $state/lock"
    echo "  cache directory = $state/cache"
    echo "  pid directory = $state/pid"
    echo "  ncalrpc dir = $state/ncalrpc"
    echo "  log file = $state/log.%m"
    echo "[shared]"
    echo "  path = $path"
    echo "  valid users = $user"
    echo "  force user = $user"
    echo "  read only = no"
    echo "  create mask = 0775"
    echo "  force create mode = 0775"
    echo "  directory mask = 0775"
    echo "  force directory mode = 0775"
  } > "$conf_dir/smb.conf"
}

smb_server() {
  [ -n "$password_file" ] || { echo "shared-storage.sh: smb needs --password-file" >&2; exit 2; }
  smb_conf
  local password
  password=$(cat "$password_file")
  printf '%s\n%s\n' "$password" "$password" | smbpasswd -c "$conf_dir/smb.conf" -s -a "$user" >/dev/null
  if [ "$daemon" = 1 ]; then
    smbd -D -s "$conf_dir/smb.conf"
  else
    systemctl enable smbd >/dev/null 2>&1 || true
    systemctl restart smbd
  fi
}

nfs_server() {
  mkdir -p /etc/exports.d
  echo "$path ${clients:?--clients CIDR is required for nfs}(rw,sync,no_subtree_check)" > /etc/exports.d/mpicloud.exports
  systemctl enable --now nfs-kernel-server
  exportfs -ra
}

smb_client() {
  local cred=$etc/mpicloud/smb-credentials uid gid
  uid=$(id -u "$user"); gid=$(id -g "$user")
  install -d -m 700 "$etc/mpicloud"
  (umask 077; printf 'username=%s\npassword=%s\n' "$user" "$(cat "$password_file")" > "$cred")
  echo "//$server/shared $path cifs vers=3.1.1,port=$port,credentials=$cred,uid=$uid,gid=$gid,file_mode=0775,dir_mode=0775,nobrl,$AUTOMOUNT 0 0" >> "$etc/fstab"
}

nfs_client() {
  echo "$server:$path $path nfs4 rw,hard,$AUTOMOUNT 0 0" >> "$etc/fstab"
}

# mounted on first access and retried on every later one (a worker may boot before node0 serves the share)
AUTOMOUNT=_netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30s,x-systemd.requires=network-online.target

mkdir -p "$path"
findmnt -n -M "$path" >/dev/null 2>&1 || chattr -i "$path" 2>/dev/null || true
chown "$user:$group" "$path"
case "$role:$kind" in
  server:smb) smb_server ;;
  server:nfs) nfs_server ;;
  client:smb|client:nfs)
    [ -n "$server" ] || { echo "shared-storage.sh: client needs --server" >&2; exit 2; }
    grep -q " $path " "$etc/fstab" || "${kind}_client"
    chattr +i "$path"
    systemctl daemon-reload
    systemctl restart remote-fs.target || true
    for _ in $(seq 120); do
      findmnt -n -t cifs,smb3,nfs,nfs4 -M "$path" >/dev/null 2>&1 && exit 0
      mount "$path" 2>/dev/null && exit 0
      sleep 5
    done
    echo "shared-storage.sh: could not mount $path from $server" >&2; exit 1 ;;
  *) echo "shared-storage.sh: role must be server or client, kind smb or nfs" >&2; exit 2 ;;
esac
