"""Proxy hops for SSH connections: HTTP CONNECT (Basic, Digest, NTLM, Negotiate) and SOCKS5."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mpicloud.errors import ConnectError
from mpicloud.secret import Secret


@dataclass(frozen=True)
class ProxyConfig:
    """A proxy: `http://host:port`, `socks5://host:port` or `socks5h://` (names resolved by the proxy)."""

    url: str
    username: str | None = None
    password: Secret | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "socks5", "socks5h") or not parts.hostname:
            raise ConnectError(f"proxy {self.display}: use http://host:port, socks5://host:port or socks5h://")
        if parts.password:
            raise ConnectError(f"proxy {self.display}: put no password in the proxy URL; use the environment "
                               "variable MPICLOUD_PROXY_PASSWORD or the registry's password_env")

    @property
    def scheme(self) -> str:
        """http, socks5 or socks5h."""
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        """The proxy's host."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The proxy's port (3128 for HTTP, 1080 for SOCKS by default)."""
        return urlsplit(self.url).port or (3128 if self.scheme == "http" else 1080)

    @property
    def display(self) -> str:
        """The proxy without any credentials, for messages."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else f"{parts.scheme}://{parts.hostname}"


class ProxySocketFactory:
    """A picklable `sock_factory` for transport endpoints: opens the tunnel through the proxy."""

    def __init__(self, proxy: ProxyConfig) -> None:
        self.proxy = proxy

    def __call__(self, host: str, port: int, timeout: float) -> Any:
        if self.proxy.scheme == "http":
            from mpicloud.transport.proxy_http import http_connect

            return http_connect(self.proxy, host, port, timeout)
        return socks_connect(self.proxy, host, port, timeout)

    def __repr__(self) -> str:
        return f"ProxySocketFactory({self.proxy.display})"


def socks_connect(proxy: ProxyConfig, host: str, port: int, timeout: float) -> socket.socket:
    """A connection to host:port through a SOCKS5 proxy (with or without username/password)."""
    from python_socks import ProxyError, ProxyTimeoutError, ProxyType
    from python_socks.sync import Proxy

    tunnel = Proxy(ProxyType.SOCKS5, proxy.host, proxy.port, username=proxy.username,
                   password=proxy.password.reveal() if proxy.password else None, rdns=proxy.scheme == "socks5h")
    try:
        sock: socket.socket = tunnel.connect(dest_host=host, dest_port=port, timeout=timeout)
    except ProxyTimeoutError:
        raise ConnectError(f"SOCKS proxy {proxy.display} did not answer within {timeout:.0f} s") from None
    except ProxyError as exc:
        raise ConnectError(f"SOCKS proxy {proxy.display} refused {host}:{port}: {exc}") from None
    except OSError as exc:
        raise ConnectError(f"cannot reach SOCKS proxy {proxy.display}: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock
