"""Where the proxy comes from: HTTPS_PROXY / ALL_PROXY / NO_PROXY, a PAC file, or ~/.ssh/config ProxyCommand."""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import paramiko

from mpicloud.errors import ConnectError
from mpicloud.secret import Secret
from mpicloud.transport.proxy import ProxyConfig


def proxy_from_url(url: str, environ: Mapping[str, str]) -> ProxyConfig:
    """A ProxyConfig from a URL that may carry user:password (as HTTPS_PROXY often does): the password moves
    into a Secret; MPICLOUD_PROXY_USER / MPICLOUD_PROXY_PASSWORD fill in what the URL lacks."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    user = unquote(parts.username) if parts.username else environ.get("MPICLOUD_PROXY_USER")
    password = unquote(parts.password) if parts.password else environ.get("MPICLOUD_PROXY_PASSWORD")
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    scheme = "http" if parts.scheme in ("http", "https") else parts.scheme
    return ProxyConfig(f"{scheme}://{netloc}", user, Secret(password) if password else None)


def bypassed(host: str, no_proxy: str) -> bool:
    """NO_PROXY rules as curl reads them: `*`, domain suffixes (with or without a leading dot), IPs, CIDRs."""
    for raw in (e.strip().lower() for e in no_proxy.split(",")):
        entry = raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw
        if not entry:
            continue
        if entry == "*":
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
            if ipaddress.ip_address(host) in network:
                return True
            continue
        except ValueError:
            pass
        domain = entry.lstrip(".")
        if host.lower() == domain or host.lower().endswith("." + domain):
            return True
    return False


def proxy_from_env(host: str, environ: Mapping[str, str]) -> ProxyConfig | None:
    """The proxy the environment asks for to reach host (HTTPS_PROXY, then ALL_PROXY), unless NO_PROXY."""
    no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
    if bypassed(host, no_proxy):
        return None
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if environ.get(name):
            return proxy_from_url(environ[name], environ)
    return None


def proxy_from_pac(pac_source: str, host: str, port: int, environ: Mapping[str, str]) -> ProxyConfig | None:
    """Evaluate a PAC file's FindProxyForURL for host (JavaScript via pypac); None means DIRECT."""
    from pypac.parser import PACFile

    try:
        answer = PACFile(pac_source).find_proxy_for_url(f"https://{host}:{port}/", host)
    except Exception as exc:  # the PAC engine raises its own types for script errors
        raise ConnectError(f"the proxy auto-configuration script failed: {exc}") from None
    for choice in (c.strip() for c in str(answer).split(";")):
        kind, _, where = choice.partition(" ")
        kind = kind.upper()
        if kind == "DIRECT":
            return None
        if kind in ("PROXY", "HTTP", "HTTPS"):
            return proxy_from_url(f"http://{where.strip()}", environ)
        if kind in ("SOCKS", "SOCKS5"):
            return proxy_from_url(f"socks5://{where.strip()}", environ)
    return None


def fetch_pac(url: str, timeout: float = 10.0) -> str:
    """The PAC script at url (file:// or http(s)://)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text: str = response.read().decode("utf-8", "replace")
            return text
    except OSError as exc:
        raise ConnectError(f"cannot fetch the proxy auto-configuration file {url}: {exc}") from None


class ProxyCommandFactory:
    """A picklable `sock_factory` running an ssh_config ProxyCommand (%h, %p, %r, %% expanded)."""

    def __init__(self, command: str, user: str) -> None:
        self.command, self.user = command, user

    def __call__(self, host: str, port: int, timeout: float) -> Any:
        expanded = (self.command.replace("%%", "\0").replace("%h", host).replace("%p", str(port))
                    .replace("%r", self.user).replace("\0", "%"))
        return paramiko.ProxyCommand(expanded)
