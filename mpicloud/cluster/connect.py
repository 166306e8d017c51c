"""Turn a registry record into transport endpoints; attach existing clusters (with ~/.ssh/config)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paramiko

from mpicloud.cluster import registry
from mpicloud.cluster.registry import ClusterRecord, Node, ProxySettings
from mpicloud.errors import ClusterError, HostKeyError
from mpicloud.secret import secret_from_env
from mpicloud.spec.targets import platform
from mpicloud.transport.hostkeys import fingerprint, pin_host_key, scan_host_key
from mpicloud.transport.proxy import ProxyConfig, ProxySocketFactory
from mpicloud.transport.proxy_env import ProxyCommandFactory, fetch_pac, proxy_from_env, proxy_from_pac
from mpicloud.transport.ssh import Endpoint, SocketFactory, SSHTransport, connect


def endpoint(record: ClusterRecord, node: Node | None = None) -> Endpoint:
    """How to reach a node of the cluster (the head node by default); any proxy applies to the first hop."""
    node = node or record.head
    password = secret_from_env(record.password_env, f"password of cluster {record.name!r}") \
        if record.password_env else None
    key = Path(record.key_file) if record.key_file else None
    jump = None
    if record.jump is not None:
        jump = Endpoint(host=record.jump.host, port=record.jump.port, user=record.jump_user or record.user,
                        known_hosts=record.known_hosts, cluster=record.name, key_file=key,
                        sock_factory=proxy_for(record, record.jump))
    return Endpoint(host=node.host, port=node.port, user=record.user, known_hosts=record.known_hosts,
                    cluster=record.name, key_file=key, password=password, jump=jump,
                    sock_factory=None if jump else proxy_for(record, node))


def proxy_for(record: ClusterRecord, first_hop: Node) -> SocketFactory | None:
    """The proxy in front of the first hop: the registry's, ~/.ssh/config ProxyCommand, a PAC file
    (MPICLOUD_PAC_URL or the registry's), then HTTPS_PROXY/ALL_PROXY/NO_PROXY. Loopback is never proxied
    unless the registry names a proxy."""
    if record.proxy is not None:
        secret = secret_from_env(record.proxy.password_env, f"proxy password of cluster {record.name!r}") \
            if record.proxy.password_env else None
        return ProxySocketFactory(ProxyConfig(record.proxy.url, record.proxy.username, secret))
    if record.proxy_command:
        return ProxyCommandFactory(record.proxy_command, record.user)
    if _loopback(first_hop.host):
        return None
    pac_url = os.environ.get("MPICLOUD_PAC_URL") or record.pac_url
    found = proxy_from_pac(fetch_pac(pac_url), first_hop.host, first_hop.port, os.environ) if pac_url \
        else proxy_from_env(first_hop.host, os.environ)
    return ProxySocketFactory(found) if found else None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def head_transport(record: ClusterRecord) -> SSHTransport:
    """The pooled connection to the head node."""
    return connect(endpoint(record))


@dataclass
class AttachRequest:
    """What `mpicloud attach` was told about an existing cluster."""

    name: str
    host: str
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    password_env: str | None = None
    os: str = "linux"
    nodes: int = 1
    slots_per_node: int = 1
    shared_path: str | None = None
    python: list[str] | None = None
    runner: str | None = None
    host_key_fingerprint: str | None = None
    jump: str | None = None
    rekey: bool = False
    proxy: ProxySettings | None = None
    pac_url: str | None = None


def resolve_ssh_config(host: str, config_path: Path | None = None) -> dict[str, str | list[str]]:
    """HostName, Port, User, IdentityFile, ProxyJump for an alias from ~/.ssh/config (empty if none)."""
    path = config_path or Path.home() / ".ssh" / "config"
    if not path.is_file():
        return {}
    config = paramiko.SSHConfig.from_path(str(path))
    found = config.lookup(host)
    keys = ("hostname", "port", "user", "identityfile", "proxyjump", "proxycommand")
    return {k: v for k, v in found.items() if k in keys}


def attach(request: AttachRequest, config_path: Path | None = None) -> tuple[ClusterRecord, list[str]]:
    """Register an existing cluster: pin its host key (verified against a fingerprint when given)."""
    try:
        defaults = platform(request.os)
    except ValueError as exc:
        raise ClusterError(f"--{exc}") from None
    existing = (registry.cluster_dir(request.name) / "cluster.json").is_file()
    if existing and not request.rekey:
        raise ClusterError(f"cluster {request.name!r} is already registered; use --rekey to re-pin its host key")
    if existing and registry.load(request.name).provider == "local":
        raise ClusterError(f"cluster {request.name!r} is a local cluster: its host keys were pinned by `mpicloud "
                           "up` and only change with it; nothing was re-pinned (attach it under another name "
                           "to reach it as an attached cluster)")
    ssh = resolve_ssh_config(request.host, config_path)
    host = str(ssh.get("hostname", request.host))
    port = int(request.port or int(str(ssh.get("port", 22))))
    user = request.user or str(ssh.get("user", "")) or None
    if user is None:
        raise ClusterError(f"no user for {request.host}: pass --user or set User in ~/.ssh/config")
    identity = ssh.get("identityfile")
    key_file = request.key_file or (str(Path(identity[0]).expanduser()) if isinstance(identity, list) else None)
    if not key_file and not request.password_env:
        raise ClusterError("give --key FILE or --password-env VAR (the password itself is never an argument)")
    if key_file and not Path(key_file).is_file():
        raise ClusterError(f"--key {key_file}: no such file")
    jump_spec = request.jump or (str(ssh["proxyjump"]) if "proxyjump" in ssh else None)
    record = ClusterRecord(
        name=request.name, provider="attached", os=request.os, user=user,
        nodes=[Node(name=defaults.node_name(0), host=host, port=port)],
        slots_per_node=request.slots_per_node, shared_path=request.shared_path or defaults.shared_path,
        python=request.python or list(defaults.python), runner=request.runner or defaults.runner,
        key_file=key_file, password_env=request.password_env, jump=_jump_node(jump_spec),
        jump_user=_jump_user(jump_spec) or user, teardown="pulumi destroy (or delete the resource group/stack)",
        proxy=request.proxy, pac_url=request.pac_url,
        proxy_command=str(ssh["proxycommand"]) if "proxycommand" in ssh else None)
    notes = _pin(record, request.host_key_fingerprint)
    record.save()
    return record, notes


def _jump_node(spec: str | None) -> Node | None:
    if not spec:
        return None
    hostport = spec.rsplit("@", 1)[-1]
    host, _, port = hostport.partition(":")
    return Node(name="jump", host=host, port=int(port or 22))


def _jump_user(spec: str | None) -> str | None:
    return spec.split("@", 1)[0] if spec and "@" in spec else None


def _pin(record: ClusterRecord, expected: str | None) -> list[str]:
    """Pin the jump host's and head node's keys; return human notes on what was trusted. The keys are pinned
    into a new file that replaces known_hosts only once every key was fetched (and verified): a refused or
    failed re-key leaves the pinned keys as they were."""
    record.dir.mkdir(parents=True, exist_ok=True)
    pending = record.dir / "known_hosts.new"
    pending.unlink(missing_ok=True)
    try:
        notes = [_pin_one(record, node, expected if node is record.head else None, pending)
                 for node in ([record.jump] if record.jump else []) + [record.head]]
        pending.replace(record.known_hosts)
    finally:
        pending.unlink(missing_ok=True)
    return notes


def _pin_one(record: ClusterRecord, node: Node, expected: str | None, known_hosts: Path) -> str:
    sock: Any = None
    jump: SSHTransport | None = None
    if node is record.head and record.jump is not None:
        hop = endpoint(record, record.head).jump
        assert hop is not None
        jump = SSHTransport(replace(hop, known_hosts=known_hosts))  # the jump key was pinned just before
        outer = jump._client.get_transport()
        assert outer is not None
        sock = outer.open_channel("direct-tcpip", (node.host, node.port), ("127.0.0.1", 0))
    elif (factory := proxy_for(record, node)) is not None:
        sock = factory(node.host, node.port, 15.0)
    try:
        key = scan_host_key(node.host, node.port, sock=sock)
    finally:
        if jump is not None:
            jump.close()
    seen = fingerprint(key)
    if expected and seen != expected:
        raise HostKeyError(f"{node.host}:{node.port} presented {seen}, not the expected {expected}; "
                           "nothing was registered or changed")
    pin_host_key(known_hosts, node.host, node.port, key)
    how = "verified against --host-key-fingerprint" if expected else "trusted on first use"
    return f"pinned {node.host}:{node.port} {seen} ({how})"
