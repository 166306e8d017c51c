"""Proxy configuration: environment variables, NO_PROXY, PAC files, secrets, unsupported schemes."""

from __future__ import annotations

import socket
import threading

import pytest

from mpicloud.errors import ConnectError
from mpicloud.secret import Secret
from mpicloud.transport.proxy import ProxyConfig
from mpicloud.transport.proxy_env import ProxyCommandFactory, bypassed, proxy_from_env, proxy_from_pac
from mpicloud.transport.proxy_http import http_connect


def test_env_proxy_moves_url_credentials_into_a_secret() -> None:
    found = proxy_from_env("node.example.com", {"HTTPS_PROXY": "http://alice:p%40ss@proxy.corp:8080"})
    assert found is not None
    assert (found.url, found.username) == ("http://proxy.corp:8080", "alice")
    assert found.password == Secret("p@ss")
    assert "p@ss" not in repr(found) and "p@ss" not in found.display


def test_env_precedence_and_extra_credentials() -> None:
    env = {"ALL_PROXY": "socks5h://socks.corp:1080", "MPICLOUD_PROXY_USER": "bob", "MPICLOUD_PROXY_PASSWORD": "pw"}
    found = proxy_from_env("a.example.com", env)
    assert found is not None and found.scheme == "socks5h" and found.port == 1080 and found.username == "bob"
    assert proxy_from_env("a.example.com", {**env, "HTTPS_PROXY": "proxy.corp:3128"}).url == "http://proxy.corp:3128"


@pytest.mark.parametrize(("host", "rules", "expected"), [
    ("node0.corp.example", ".corp.example", True),
    ("node0.corp.example", "corp.example", True),
    ("corp.example", "corp.example", True),
    ("evilcorp.example", "corp.example", False),
    ("10.1.2.3", "10.0.0.0/8", True),
    ("11.1.2.3", "10.0.0.0/8", False),
    ("203.0.113.7", "203.0.113.7", True),
    ("anything", "*", True),
    ("node0.corp.example", "other.example, .corp.example:22", True),
])
def test_no_proxy_rules(host: str, rules: str, expected: bool) -> None:
    assert bypassed(host, rules) is expected
    assert (proxy_from_env(host, {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": rules}) is None) is expected


PAC = """function FindProxyForURL(url, host) {
  if (isPlainHostName(host) || dnsDomainIs(host, ".internal")) return "DIRECT";
  if (shExpMatch(host, "*.hpc.example")) return "SOCKS5 socks.corp:1080";
  return "PROXY proxy.corp:3128; DIRECT";
}"""


def test_pac_file_decides_per_host() -> None:
    assert proxy_from_pac(PAC, "n0.internal", 22, {}) is None
    socks = proxy_from_pac(PAC, "n0.hpc.example", 22, {})
    assert socks is not None and socks.url == "socks5://socks.corp:1080"
    http = proxy_from_pac(PAC, "20.1.2.3", 22, {"MPICLOUD_PROXY_USER": "u"})
    assert http is not None and http.url == "http://proxy.corp:3128" and http.username == "u"
    with pytest.raises(ConnectError, match="auto-configuration script failed"):
        proxy_from_pac("function FindProxyForURL(url, host) { return undefinedThing(); }", "h", 22, {})


def test_proxy_url_must_not_carry_a_password() -> None:
    with pytest.raises(ConnectError, match="no password in the proxy URL"):
        ProxyConfig("http://u:secret@proxy:3128")
    with pytest.raises(ConnectError, match="use http://host:port"):
        ProxyConfig("ftp://proxy:21")


def test_proxy_command_expansion() -> None:
    factory = ProxyCommandFactory("echo -x proxy:3128 %h %p %r %%", "alice")
    command = factory("node0", 2222, 5.0)
    try:
        assert command.cmd == ["echo", "-x", "proxy:3128", "node0", "2222", "alice", "%"]
    finally:
        command.close()


def test_unsupported_scheme_names_what_the_proxy_offered() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Bearer realm=x\r\n"
                     b"Proxy-Authenticate: Kerberos-Only\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    proxy = ProxyConfig(f"http://127.0.0.1:{port}", "u", Secret("pw"))
    with pytest.raises(ConnectError) as caught:
        http_connect(proxy, "node0", 22, 5.0)
    assert "offers no scheme mpicloud supports" in str(caught.value)
    assert "offered: bearer, kerberos-only" in str(caught.value)
    server.close()
