"""HTTP CONNECT tunnels with Basic, Digest (RFC 7616), NTLM and Negotiate proxy authentication."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import sys

from mpicloud.errors import ConnectError
from mpicloud.transport.proxy import ProxyConfig

PREFERENCE = ("negotiate", "ntlm", "digest", "basic")


class _Response:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.status, self.reason, self.headers = status, reason, headers

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def get(self, name: str) -> str:
        values = self.all(name)
        return values[0] if values else ""


def _read_response(sock: socket.socket, proxy: ProxyConfig) -> _Response:
    """Read status line and headers byte by byte (nothing of the tunnel behind them), then any body."""
    raw = b""
    while not raw.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectError(f"HTTP proxy {proxy.display} closed the connection")
        raw += byte
        if len(raw) > 65536:
            raise ConnectError(f"HTTP proxy {proxy.display} sent oversized headers")
    lines = raw.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/\d\.\d (\d{3}) ?(.*)", lines[0])
    if not match:
        raise ConnectError(f"{proxy.display} is not an HTTP proxy (answered {lines[0][:60]!r})")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
    response = _Response(int(match.group(1)), match.group(2), headers)
    length = int(response.get("content-length") or 0)
    while length > 0:
        chunk = sock.recv(min(length, 65536))
        if not chunk:
            break
        length -= len(chunk)
    return response


def _offered(response: _Response) -> dict[str, str]:
    """Scheme (lower case) -> its challenge parameters, from every Proxy-Authenticate header."""
    offered: dict[str, str] = {}
    for value in response.all("proxy-authenticate"):
        scheme, _, params = value.partition(" ")
        offered.setdefault(scheme.lower(), params.strip())
    return offered


def _open(proxy: ProxyConfig, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    except OSError as exc:
        raise ConnectError(f"cannot reach HTTP proxy {proxy.display}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send_connect(sock: socket.socket, target: str, authorization: str | None) -> None:
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", "Proxy-Connection: keep-alive"]
    if authorization:
        lines.append(f"Proxy-Authorization: {authorization}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def http_connect(proxy: ProxyConfig, host: str, port: int, timeout: float) -> socket.socket:
    """A tunnel to host:port through an HTTP proxy, authenticating when the proxy asks (407)."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = _open(proxy, timeout)
    _send_connect(sock, target, None)
    response = _read_response(sock, proxy)
    if response.status == 407:
        sock, response = _authenticate(sock, proxy, target, response, timeout)
    if response.status != 200:
        sock.close()
        raise ConnectError(f"HTTP proxy {proxy.display} refused CONNECT {target}: {response.status} "
                           f"{response.reason}")
    sock.settimeout(None)
    return sock


def _authenticate(sock: socket.socket, proxy: ProxyConfig, target: str, challenge: _Response,
                  timeout: float) -> tuple[socket.socket, _Response]:
    offered = _offered(challenge)
    names = ", ".join(sorted(offered)) or "none"
    usable = [s for s in PREFERENCE if s in offered and (proxy.password or _sspi_default(s))]
    if not usable:
        unsupported = not any(s in offered for s in PREFERENCE)
        why = "offers no scheme mpicloud supports" if unsupported else "needs credentials"
        raise ConnectError(f"HTTP proxy {proxy.display} asks for authentication (407) and {why}; it offered: "
                           f"{names}. Set MPICLOUD_PROXY_USER and MPICLOUD_PROXY_PASSWORD (or the registry's "
                           "proxy username and password_env)")
    scheme = usable[0]
    if challenge.get("proxy-connection").lower() == "close" or challenge.get("connection").lower() == "close":
        sock.close()
        sock = _open(proxy, timeout)
    if scheme in ("ntlm", "negotiate"):
        response = _spnego(sock, proxy, target, scheme)
    else:
        header = _basic(proxy) if scheme == "basic" else _digest(proxy, target, offered["digest"])
        _send_connect(sock, target, header)
        response = _read_response(sock, proxy)
    if response.status == 407:
        sock.close()
        raise ConnectError(f"HTTP proxy {proxy.display} rejected the {scheme} credentials of user "
                           f"{proxy.username!r} (it offered: {names})")
    return sock, response


def _basic(proxy: ProxyConfig) -> str:
    assert proxy.password is not None
    token = base64.b64encode(f"{proxy.username or ''}:{proxy.password.reveal()}".encode()).decode()
    return f"Basic {token}"


def _digest(proxy: ProxyConfig, target: str, params: str) -> str:
    """RFC 7616 Digest (MD5 or SHA-256, optionally -sess) with qop=auth when offered."""
    assert proxy.password is not None
    fields = {k.lower(): a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', params)}
    algorithm = fields.get("algorithm", "MD5").upper()
    hash_name = "sha256" if algorithm.startswith("SHA-256") else "md5"

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode()).hexdigest()

    user, realm, nonce = proxy.username or "", fields.get("realm", ""), fields.get("nonce", "")
    cnonce, count = os.urandom(8).hex(), "00000001"
    ha1 = h(f"{user}:{realm}:{proxy.password.reveal()}")
    if algorithm.endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"CONNECT:{target}")
    qop = "auth" if "auth" in [q.strip() for q in fields.get("qop", "").split(",")] else ""
    answer = h(f"{ha1}:{nonce}:{count}:{cnonce}:{qop}:{ha2}") if qop else h(f"{ha1}:{nonce}:{ha2}")
    parts = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{target}"',
             f"algorithm={algorithm}", f'response="{answer}"']
    if qop:
        parts += [f"qop={qop}", f"nc={count}", f'cnonce="{cnonce}"']
    if "opaque" in fields:
        parts.append(f'opaque="{fields["opaque"]}"')
    return "Digest " + ", ".join(parts)


def _sspi_default(scheme: str) -> bool:
    """On Windows, NTLM and Negotiate can use the signed-in user's credentials (no password), as browsers do."""
    return sys.platform == "win32" and scheme in ("ntlm", "negotiate")


def _spnego(sock: socket.socket, proxy: ProxyConfig, target: str, scheme: str) -> _Response:
    """The NTLM or Negotiate handshake on one kept-alive connection (pyspnego)."""
    import spnego

    context = spnego.client(proxy.username, proxy.password.reveal() if proxy.password else None,
                            hostname=proxy.host, service="HTTP", protocol=scheme)
    label = "NTLM" if scheme == "ntlm" else "Negotiate"
    token = context.step()
    while True:
        _send_connect(sock, target, f"{label} {base64.b64encode(token or b'').decode()}")
        response = _read_response(sock, proxy)
        challenge = next((v for v in response.all("proxy-authenticate") if v.lower().startswith(scheme + " ")), "")
        if response.status != 407 or not challenge or context.complete:
            return response
        token = context.step(base64.b64decode(challenge.split(" ", 1)[1]))
