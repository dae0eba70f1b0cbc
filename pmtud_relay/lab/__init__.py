"""Network-namespace lab reproducing the ECMP PMTUD black hole (tests and ``pmtud-relay lab``).

    from pmtud_relay.lab import Lab
    with Lab(servers=3) as lab:
        flows = lab.run_transfers(4, flows=12, size=262144, timeout=3.0)

``RoutedLab`` (:mod:`pmtud_relay.lab.routed`) is the L3 variant: each server in its own subnet.

Needs root and iproute2; see :mod:`pmtud_relay.lab.topology` for the layout.
"""

from .routed import RoutedLab
from .topology import (
    CLIENT4,
    CLIENT6,
    ROUTER4,
    ROUTER6,
    VIP4,
    VIP6,
    Lab,
    LabError,
    LabProcess,
    Server,
    cleanup_stale,
    family_of,
    have_prerequisites,
    list_netns,
    parse_route_get_mtu,
)
from .transfer import FlowResult, parse_client_output

__all__ = [
    "Lab", "RoutedLab", "LabError", "LabProcess", "Server", "FlowResult",
    "have_prerequisites", "list_netns", "cleanup_stale", "family_of",
    "parse_route_get_mtu", "parse_client_output",
    "VIP4", "VIP6", "CLIENT4", "CLIENT6", "ROUTER4", "ROUTER6",
]
