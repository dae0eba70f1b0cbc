"""Peer relays in the routed lab (``pmtud_relay.lab.routed.RoutedLab``): their argv, the lab's
transfers, their /metrics and datagrams sent to them from a lab node."""

from __future__ import annotations

from pmtud_relay.lab.routed import RoutedLab
from tests.support.netns import PROGRAM_ENV, program
from tests.support.relays import FLOW_TIMEOUT, SIZE, by_server

PORT = 2106

# A retried spread (24-48 flows) makes more PTBs at once than the production bursts (10 per router,
# 40 per peer) allow; the tests are about delivery, not limits (those have unit tests).
BURSTS = ["--source-burst", "100", "--peer-burst", "100"]


def key_bytes(key_file: str) -> bytes:
    """The key of a key file written by the ``key_file`` fixture."""
    with open(key_file) as f:
        return bytes.fromhex(f.read().split(":", 1)[1].strip())


def peer_argv(lab: RoutedLab, name: str, key_file: str, family: int, *extra: str,
              fanout: str = "peers") -> list[str]:
    return ["run", "-i", "eth0", "--fanout", fanout, "--peer-key-file", key_file,
            "--summary-interval", "0.25", *BURSTS, *lab.peer_args(name, family), *extra]


def transfers(lab: RoutedLab, family: int, timeout: float = FLOW_TIMEOUT, min_servers: int = 3):
    """Transfers spread over the servers (retried until ``min_servers`` carry one): (flows, by server)."""
    lab.flush_pmtu()
    flows = lab.run_transfers_spread(family, flows=12, size=SIZE, timeout=timeout, min_servers=min_servers,
                                     attempts=4)
    return flows, by_server(flows)


def scrape(lab: RoutedLab, node: str) -> str:
    """The metrics page of the relay in ``node`` (default address 127.0.0.1:9781 there)."""
    return lab.run(node, program("sockets", "scrape"), env=PROGRAM_ENV).stdout


def send_udp(lab: RoutedLab, node: str, host: str, datagrams: list[bytes], port: int = PORT,
             timeout: float = 20.0) -> None:
    """Send ``datagrams`` from ``node`` to ``host:port``."""
    lab.run(node, program("sockets", "send-udp", host, port, *(d.hex() for d in datagrams)), env=PROGRAM_ENV,
            timeout=timeout)


def send_from_router(lab: RoutedLab, host: str, datagrams: list[bytes], port: int = PORT) -> None:
    send_udp(lab, "router", host, datagrams, port)
