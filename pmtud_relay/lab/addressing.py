"""The lab's addresses and names (documentation prefixes only), and :class:`Server`."""

from __future__ import annotations

import socket
from dataclasses import dataclass

# --- addressing (documentation prefixes only) ---------------------------------------------
VIP4 = "192.0.2.10"
VIP6 = "2001:db8:ffff::10"
CLIENT4 = "203.0.113.2"
CLIENT6 = "2001:db8:c::2"
ROUTER_CLIENT4 = "203.0.113.1"
ROUTER_CLIENT6 = "2001:db8:c::1"
ROUTER4 = "198.51.100.1"
ROUTER6 = "2001:db8:5::1"
CLIENT_MTU = 1500          # client end of the client<->router veth
ROUTER_CLIENT_MTU = 1400   # router end: the bottleneck that makes the router send PTBs
SERVER_MTU = 1500
ICMP_TABLE = 100
DEFAULT_PORT = 8080
DEFAULT_SIZE = 262144
MAX_SERVERS = 40


def server_addr4(i: int) -> str:
    """Unicast IPv4 address of server ``i`` (1-based)."""
    return f"198.51.100.{10 + i}"


def server_addr6(i: int) -> str:
    return f"2001:db8:5::{10 + i}"


def server_mac(i: int) -> str:
    return f"02:00:00:00:05:{0x10 + i:02x}"


def family_of(family: object) -> int:
    """Normalise 4/6, "4"/"6", "ipv4"/"ipv6", "inet"/"inet6", AF_INET/AF_INET6 to 4 or 6."""
    if family in (4, "4", "ipv4", "IPv4", "v4", "inet", socket.AF_INET):
        return 4
    if family in (6, "6", "ipv6", "IPv6", "v6", "inet6", socket.AF_INET6):
        return 6
    raise ValueError(f"unknown address family {family!r}")


@dataclass(frozen=True)
class Server:
    index: int        # 1-based
    name: str         # "s1"
    ns: str           # namespace name
    iface: str        # "eth0" (inside ns)
    bridge_port: str  # "p1" (inside router ns)
    mac: str
    ipv4: str
    ipv6: str

    def addr(self, family: object) -> str:
        return self.ipv4 if family_of(family) == 4 else self.ipv6
