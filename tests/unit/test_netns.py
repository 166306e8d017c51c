"""Namespaced local network: names fit the kernel's 15-character limit, addresses stay in 198.18.0.0/15."""

from __future__ import annotations

import ipaddress

import pytest

from mpicloud.cluster import netns
from mpicloud.errors import ClusterError


def test_names_fit_interface_limit_and_carry_the_tag() -> None:
    network = netns.Network(tag="0123abcd", subnet="198.19.254.0/23", nodes=tuple(f"node{i}" for i in range(256)))
    names = [network.bridge, *(network.veth(i) for i in range(256)), *(network.netns(i) for i in range(256))]
    assert max(len(n) for n in names) <= 15
    assert all(n.startswith("mpc0123abcd") for n in names)
    addresses = [ipaddress.IPv4Address(a) for a in network.addresses()]
    subnet = ipaddress.IPv4Network(network.subnet)
    assert all(a in subnet and a in netns.LAB_RANGE for a in addresses)
    assert len(set(addresses)) == 256 and ipaddress.IPv4Address(network.gateway) not in addresses
    assert addresses[-1] != subnet.broadcast_address


def test_hosts_file_names_every_node() -> None:
    network = netns.Network(tag="0123abcd", subnet="198.18.4.0/23", nodes=("node0", "node1"))
    assert network.hosts_file() == "127.0.0.1 localhost\n198.18.4.2 node0\n198.18.4.3 node1\n"


@pytest.mark.parametrize("tag", ["", "../etc", "0123abc", "0123abcde", "0123ABCD", "*"])
def test_teardown_refuses_anything_but_a_tag(tag: str) -> None:
    with pytest.raises(ClusterError, match="is not a cluster tag"):
        netns.teardown(tag)
