"""Per-node network, UTS and mount namespaces on a private bridge in 198.18.0.0/15 (root only).

Every object carries the cluster's tag (8 hex digits of its id) in its name, so clusters never touch one
another's objects and `teardown(tag)` finds what a crashed `up` left behind from the tag alone:
bridge `mpc<tag>b`, per node a netns `mpc<tag>n<i>` and a veth `mpc<tag>h<i>` (its peer is `eth0` inside).
A node is a long-lived holder process in its netns with its own UTS and mount namespace (host name, private
/etc/hosts); daemons join a node with `nsenter -t <holder> --net --uts --mount` (not `ip netns exec`, which
remounts /sys and leaves slurmd without /sys/fs/cgroup).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mpicloud.errors import ClusterError

LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544: for lab networks, never routed
PREFIX = 23  # one subnet per cluster: gateway .1, node i at index 2 + i (256 nodes fit)
LOCK = Path("/run/mpicloud-netns.lock")
NETNS_DIR = Path("/run/netns")
SYS_NET = Path("/sys/class/net")


def tag_of(cluster_id: str) -> str:
    """The short tag of a cluster that every namespace object's name carries."""
    return cluster_id[:8]


@dataclass(frozen=True)
class Network:
    """The namespaced network of one cluster: its tag, subnet and node names."""

    tag: str
    subnet: str
    nodes: tuple[str, ...]

    @property
    def bridge(self) -> str:
        """The bridge's interface name."""
        return f"mpc{self.tag}b"

    @property
    def gateway(self) -> str:
        """The host's address on the bridge."""
        return str(ipaddress.IPv4Network(self.subnet)[1])

    def netns(self, index: int) -> str:
        """Node `index`'s network namespace name."""
        return f"mpc{self.tag}n{index}"

    def veth(self, index: int) -> str:
        """Host end of node `index`'s veth pair (in the bridge)."""
        return f"mpc{self.tag}h{index}"

    def address(self, index: int) -> str:
        """Node `index`'s address."""
        return str(ipaddress.IPv4Network(self.subnet)[2 + index])

    def addresses(self) -> list[str]:
        """Every node's address, in node order."""
        return [self.address(i) for i in range(len(self.nodes))]

    def hosts_file(self) -> str:
        """The /etc/hosts every node sees."""
        lines = ["127.0.0.1 localhost", *(f"{self.address(i)} {n}" for i, n in enumerate(self.nodes))]
        return "\n".join(lines) + "\n"


def require_namespaces() -> None:
    """Fail with the reason when this process cannot build namespaces (root, iproute2, util-linux)."""
    if os.geteuid() != 0:
        raise ClusterError("local.network: namespaces needs root (network namespaces and a bridge); "
                           "run as root or use local.network: loopback")
    for program, package in (("ip", "iproute2"), ("nsenter", "util-linux"), ("unshare", "util-linux")):
        if shutil.which(program) is None:
            raise ClusterError(f"local.network: namespaces needs {program}: apt-get install {package}")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Networks of every IPv4 address and route on the host (so no two bridges share a subnet)."""
    used = []
    for args in (["-4", "-j", "addr", "show"], ["-4", "-j", "route", "show", "table", "all"]):
        done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        for row in json.loads(done.stdout or "[]"):
            for text in [f"{a['local']}/{a['prefixlen']}" for a in row.get("addr_info", [])] + [row.get("dst", "")]:
                try:
                    used.append(ipaddress.IPv4Network(text, strict=False))
                except ValueError:
                    continue
    return used


def _lab_networks_in_use() -> list[ipaddress.IPv4Network]:
    """The host's networks inside the lab range (a default route, /0, is no claim on a subnet)."""
    return [n for n in _used_networks() if n.overlaps(LAB_RANGE) and n.prefixlen > 0]


def _free_subnet(tag: str) -> str:
    used = _lab_networks_in_use()
    subnets = list(LAB_RANGE.subnets(new_prefix=PREFIX))
    start = int(tag, 16) % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(n) for n in used):
            return str(subnet)
    raise ClusterError(f"no free /{PREFIX} left in {LAB_RANGE} for the cluster's bridge")


def create(tag: str, nodes: list[str], built: int | None = None, subnet: str | None = None) -> Network:
    """Make the bridge (host address .1) and a netns + veth for the first `built` nodes (default: all; an elastic
    cluster's others are made when they start, `add_node`); holders are started separately. `subnet`: the one a
    stopped cluster had (its nodes keep their addresses), when no other network of the host took it meanwhile."""
    if len(nodes) > 2 ** (32 - PREFIX) - 3:
        raise ClusterError(f"local.network: namespaces holds at most {2 ** (32 - PREFIX) - 3} nodes")
    with open(LOCK, "a") as lock:  # parallel `up`s must not pick the same subnet
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (SYS_NET / f"mpc{tag}b").exists():
            raise ClusterError(f"a bridge named mpc{tag}b already exists; run `up` again (new cluster id)")
        if subnet is not None and any(ipaddress.IPv4Network(subnet).overlaps(n) for n in _lab_networks_in_use()):
            raise ClusterError(f"the cluster's subnet {subnet} is now used by another network of this host; "
                               "remove that network, or `mpicloud down` the cluster (its data goes) and `up` it")
        network = Network(tag=tag, subnet=subnet or _free_subnet(tag), nodes=tuple(nodes))
        _ip("link", "add", network.bridge, "type", "bridge")
        _ip("addr", "add", f"{network.gateway}/{PREFIX}", "dev", network.bridge)
        _ip("link", "set", network.bridge, "up")
    for index in range(len(nodes) if built is None else built):
        add_node(network, index)
    return network


def add_node(network: Network, index: int) -> None:
    """Make node `index`'s netns and its veth into the bridge; what a cut-short earlier try left is made anew
    (the caller made sure no process lives in it)."""
    remove_node(network, index)
    name, veth, peer = network.netns(index), network.veth(index), f"mpc{network.tag}p{index}"
    _ip("netns", "add", name)
    _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
    _ip("link", "set", veth, "master", network.bridge, "up")
    _ip("link", "set", peer, "netns", name)
    _ip("-n", name, "link", "set", peer, "name", "eth0")
    _ip("-n", name, "addr", "add", f"{network.address(index)}/{PREFIX}", "dev", "eth0")
    _ip("-n", name, "link", "set", "eth0", "up")
    _ip("-n", name, "link", "set", "lo", "up")


def remove_node(network: Network, index: int) -> None:
    """Delete node `index`'s netns and veth (its processes ended); nothing when they do not exist."""
    if (NETNS_DIR / network.netns(index)).exists():
        _ip("netns", "del", network.netns(index))
    for link in (network.veth(index), f"mpc{network.tag}p{index}"):  # the peer, if the move into the netns failed
        if (SYS_NET / link).exists():
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


def members(network: Network, index: int) -> list[int]:
    """PIDs of every process in node `index`'s network namespace (its holder, daemons, sessions, jobs)."""
    try:
        inode = (NETNS_DIR / network.netns(index)).stat().st_ino
    except OSError:
        return []
    wanted = f"net:[{inode}]"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.readlink(entry / "ns" / "net") == wanted:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def start_holder(network: Network, index: int, directory: Path, env: dict[str, str],
                 timeout: float = 10.0) -> int:
    """Start node `index`'s holder (own host name and /etc/hosts); return its PID, which daemons enter."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts, pid_file = directory / "hosts", directory / "holder.pid"
    hosts.write_text(network.hosts_file())
    pid_file.unlink(missing_ok=True)
    script = 'hostname "$1" && mount --bind "$2" /etc/hosts && echo $$ > "$3.tmp" && mv "$3.tmp" "$3" && ' \
             'exec sleep infinity'
    argv = ["nsenter", f"--net={NETNS_DIR / network.netns(index)}", "unshare", "--uts", "--mount",
            "--propagation", "private", "--fork", "sh", "-c", script, "holder", network.nodes[index],
            str(hosts), str(pid_file)]
    log = open(directory / "holder.log", "ab")  # noqa: SIM115 - handed to the child
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                             env={**os.environ, **env})
    log.close()
    deadline = time.monotonic() + timeout
    while not pid_file.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            text = (directory / "holder.log").read_text(errors="replace").strip()
            raise ClusterError(f"the namespace of {network.nodes[index]} did not start" + (f": {text}" if text else ""))
        time.sleep(0.02)
    return int(pid_file.read_text())


def enter(holder: int) -> list[str]:
    """The argv prefix that runs a command inside a node (its network, UTS and mount namespaces)."""
    return ["nsenter", "-t", str(holder), "--net", "--uts", "--mount", "--"]


def leftovers(tag: str) -> list[str]:
    """Names of the cluster's namespaces and interfaces that still exist."""
    prefix = f"mpc{tag}"
    found = [p.name for p in NETNS_DIR.glob(f"{prefix}*")] if NETNS_DIR.is_dir() else []
    return sorted(found + [p.name for p in SYS_NET.glob(f"{prefix}*")])


def teardown(tag: str, timeout: float = 5.0) -> list[str]:
    """Delete the cluster's namespaces, veths and bridge (after its processes ended); return what is left.

    The kernel frees a deleted netns (and the veth inside it) asynchronously, hence the wait."""
    if len(tag) != 8 or not all(c in "0123456789abcdef" for c in tag):
        raise ClusterError(f"{tag!r} is not a cluster tag")
    for name in leftovers(tag):
        if (NETNS_DIR / name).exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    deadline = time.monotonic() + timeout
    while leftovers(tag) and time.monotonic() < deadline:
        for name in leftovers(tag):  # veths whose peer's netns is gone, the bridge
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        time.sleep(0.05)
    return leftovers(tag)
