"""Shared fixtures: the network namespaces of the end-to-end tests (tests marked ``netns``) and
the peer key. What they build comes from tests/support/; test modules import helpers from there
and never from one another (tests/test_suite_layout.py)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess

import pytest

from tests.support import frames as F
from tests.support.netns import FaultNS, need_root_and, run_json


@pytest.fixture
def netns_ok() -> None:
    """Skip unless the namespace lab can run here (root and iproute2)."""
    from pmtud_relay.lab import have_prerequisites

    ok, why = have_prerequisites()
    if not ok:
        pytest.skip(why)


@pytest.fixture
def lab(netns_ok):
    """A fresh ECMP black-hole lab (client, router, injector, s1..s3), always torn down."""
    from pmtud_relay.lab import Lab

    with Lab(servers=3) as the_lab:
        yield the_lab


@pytest.fixture
def routed_lab(netns_ok):
    """The routed lab (client, ECMP router, s1..s3 each in its own subnet), always torn down."""
    from pmtud_relay.lab.routed import RoutedLab

    with RoutedLab(servers=3) as the_lab:
        yield the_lab


@pytest.fixture
def ns():
    """A FaultNS (veth pair v0/v1, VIPs on lo) for the daemon, always deleted."""
    need_root_and()
    with FaultNS() as the_ns:
        yield the_ns


@pytest.fixture
def key_file(tmp_path) -> str:
    """A peer key file (key id 1, a random 32-byte key, mode 0600)."""
    path = tmp_path / "peer.key"
    path.write_text(f"1:{secrets.token_hex(32)}\n")
    os.chmod(path, 0o600)
    return str(path)


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def veth_netns():
    """A fresh network namespace holding an up veth pair pmr0 <-> pmr1; always deleted."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace and AF_PACKET sockets")
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        pytest.skip("needs CAP_NET_RAW to open AF_PACKET sockets")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip)")
    name = f"pmr-veth-{os.getpid()}-{secrets.token_hex(3)}"
    made = _ip("netns", "add", name)
    # As root with iproute2 present this must work (like every other namespace fixture): fail, do not skip.
    assert made.returncode == 0, f"ip netns add {name} failed (rc {made.returncode}): {made.stderr.strip()}"
    try:
        _ip("netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
        _ip("netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
        for args in (
            ("link", "add", "name", "pmr0", "type", "veth", "peer", "name", "pmr1"),
            ("link", "set", "pmr0", "address", F.HOST_MAC),
            ("link", "set", "pmr1", "address", F.ROUTER_MAC),
            ("link", "set", "pmr0", "up"),
            ("link", "set", "pmr1", "up"),
        ):
            done = _ip("-n", name, *args)
            assert done.returncode == 0, f"ip -n {name} {' '.join(args)}: {done.stderr}"
        yield name
    finally:
        _ip("netns", "del", name)


@pytest.fixture
def netns_program():
    """``run_json(netns, NAME, *args, payload=..., timeout=...)`` (tests/support/netns.py): a
    module of tests/support/ns_programs run in a namespace, JSON in and out; for tests using
    ``veth_netns``."""
    return run_json
