"""Issue 18, item 1, on a real kernel: a forged PTB relayed first must not suppress the router's.

The lab (tests/conftest.py ``lab``): the client opens TCP connections to the VIP, which the
router's ECMP spreads over s1..s3. For each connection the test reads the server socket's next
sequence number (TCP_REPAIR, root only) and the injector then sends to s1, unicast, in this order
and well within one dedup window:

1. a forged PTB for the flow from another address (203.0.113.66 / 2001:db8:66::1), quoting a
   wrong sequence number, MTU 1400;
2. a forged PTB for the flow carrying the router's own address, quoting another wrong one;
3. the genuine PTB: the router's address, the socket's sequence number, MTU 1400;
4. the genuine PTB again (a router's PTB for a retransmission of the same segment).

The relay on s1 (default limits) must relay 1-3 for every flow and drop 4 as a duplicate; every
server that owns a flow must have discarded the forged copies (``TcpExtOutOfWindowIcmps``) and
learned the 1400-byte path MTU from the genuine one. With the dedup key of before (inner flow
and MTU, whoever sent it) 2-4 were all duplicates of 1: the owners discarded the forgery and
never saw the genuine PTB, so s2 and s3 learned nothing.
"""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet import TCP

from pmtud_relay.lab import Lab
from tests.support import frames as F
from tests.support.netns import in_ns
from tests.support.relays import start_relays, stop_relays

PORT = 9443
N_FLOWS = 16                       # router: 2 tokens a flow, within the default burst of 50
FIRST_CLIENT_PORT = 41000
SPOOFER = {4: "203.0.113.66", 6: "2001:db8:66::1"}
INJECTOR_MAC = "02:00:00:00:05:fe"  # the injector's eth0 in the lab
MTU = {4: 1400, 6: 1400}

SOL_TCP = 6
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 19, 20, 21
TCP_SEND_QUEUE = 2
TCP_REPAIR_OFF_NO_WP = -1


def send_seq(sock: socket.socket) -> int:
    """The next sequence number ``sock`` sends (its ``write_seq``): with nothing sent yet it is
    both snd_una and snd_nxt, the only number the kernel accepts in a PTB about this socket."""
    sock.setsockopt(SOL_TCP, TCP_REPAIR, 1)
    try:
        sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        return sock.getsockopt(SOL_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF
    finally:
        sock.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)


def out_of_window_icmps(lab: Lab, node: str) -> int:
    lines = lab.run(node, ["cat", "/proc/net/netstat"]).stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:]))["OutOfWindowIcmps"])
    raise AssertionError("no TcpExt line in /proc/net/netstat")


def ptb(family: int, *, outer_src: str, client: str, cport: int, seq: int, dst_mac: str) -> bytes:
    vip = Lab.vip4 if family == 4 else Lab.vip6
    quoted = TCP(sport=PORT, dport=cport, flags="A", seq=seq, ack=1)
    kw = dict(outer_src=outer_src, outer_dst=vip, src=vip, dst=client, proto=quoted, length=1500,
              dst_mac=dst_mac, src_mac=INJECTOR_MAC, mtu=MTU[family])
    return F.ptb_v4(**kw) if family == 4 else F.ptb_v6(**kw)


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", [4, 6])
def test_a_forged_ptb_sent_first_does_not_suppress_the_routers(lab: Lab, family: int) -> None:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    vip, client, router = lab.vip(family), lab.client_addr(family), lab.router_addr(family)
    listeners: dict[str, socket.socket] = {}
    clients: list[socket.socket] = []
    owned: dict[int, tuple[str, socket.socket]] = {}  # client port -> (server, accepted socket)
    try:
        for name in lab.server_names:
            def listen() -> socket.socket:
                s = socket.socket(af, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((vip, PORT))
                s.listen(64)
                s.setblocking(False)
                return s
            listeners[name] = in_ns(lab.ns(name), listen)

        def connect_all() -> list[socket.socket]:
            out = []
            for k in range(N_FLOWS):
                c = socket.socket(af, socket.SOCK_STREAM)
                out.append(c)
                c.settimeout(5)
                c.bind((client, FIRST_CLIENT_PORT + k))
                c.connect((vip, PORT))
            return out
        clients = in_ns(lab.ns("client"), connect_all)

        deadline = time.monotonic() + 5
        while len(owned) < N_FLOWS and time.monotonic() < deadline:
            for name, listener in listeners.items():
                try:
                    conn, peer = listener.accept()
                except BlockingIOError:
                    continue
                owned[peer[1]] = (name, conn)
            time.sleep(0.01)
        assert len(owned) == N_FLOWS, f"accepted {len(owned)} of {N_FLOWS} connections"
        owners = {name for name, _ in owned.values()}
        assert owners - {"s1"}, f"every flow hashed to s1: {sorted(owners)}"

        s1_mac = lab.mac("s1")
        frames = []
        for cport, (_name, conn) in sorted(owned.items()):
            seq = send_seq(conn)
            common = dict(client=client, cport=cport, dst_mac=s1_mac)
            frames += [
                ptb(family, outer_src=SPOOFER[family], seq=seq ^ 0x80000000, **common),
                ptb(family, outer_src=router, seq=(seq + 0x40000000) & 0xFFFFFFFF, **common),
                ptb(family, outer_src=router, seq=seq, **common),
                ptb(family, outer_src=router, seq=seq, **common),
            ]

        for name in owners:
            assert lab.learned_pmtu(name, client) is None, f"{name} knew a PMTU before the test"
        before = {name: out_of_window_icmps(lab, name) for name in owners}
        relays = start_relays(lab, {"s1": ["run", "-i", "eth0", "--summary-interval", "3600"]})

        def inject() -> None:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as tx:
                tx.bind(("eth0", 0))
                for f in frames:
                    tx.send(f)
                    time.sleep(0.002)  # 64 frames in ~0.15 s: all within one dedup window
        in_ns(lab.ns("injector"), inject)
        time.sleep(0.5)
        final = stop_relays(relays)["s1"]

        per_owner = {name: sum(1 for n, _ in owned.values() if n == name) for name in owners}
        for name in sorted(owners):
            discarded = out_of_window_icmps(lab, name) - before[name]
            # The genuine PTB reached the owner, which acted on it ...
            assert lab.learned_pmtu(name, client) == MTU[family], \
                f"IPv{family}: {name} owns {per_owner[name]} of the flows and learned no PMTU: {final}"
            # ... and both forged PTBs about each of its flows reached it and were discarded (s2,
            # s3: the relayed copies; s1: the unicast originals).
            assert discarded >= 2 * per_owner[name], f"{name}: {discarded} out-of-window PTBs, {per_owner}"
        assert int(final.get("relayed", 0)) == 3 * N_FLOWS, final  # both forgeries and the genuine one
        assert int(final.get("duplicate", 0)) == N_FLOWS, final    # the router's repeat only
    finally:
        for conn in [c for _, c in owned.values()] + clients + list(listeners.values()):
            conn.close()
