"""Write the seed corpora for the fuzz targets to fuzz/seeds/<target>/ (generated, not in git).

Seeds are the test suite's own fixtures: every valid PTB shape of tests/support/frames.py
(``valid_catalogue``: VLAN tags, IPv4 options, IPv6 extension headers, every quoted protocol), a
hostile variant of each drop reason, the NFLOG datagrams of tests/support/nflog.py and signed
peer datagrams. Deterministic: the same files every run. Needs the test extra (scapy).

    python fuzz/make_seeds.py [--out fuzz/seeds]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import socket
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE]


def frame_seeds() -> list[bytes]:
    from scapy.layers.inet import ICMP
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6ExtHdrFragment

    from tests.support import frames as F

    valid = list(F.valid_catalogue().values())
    hostile = [
        F.ptb_v4(mtu=500), F.ptb_v6(mtu=1200),  # below the floor
        F.ptb_v4(outer_dst="192.0.2.99", src="192.0.2.99"),  # not a VIP
        F.ptb_v4(quote=F.original_v4()[:19]), F.ptb_v6(quote=F.original_v6()[:39]),  # truncated quote
        F.ptb_v4(ip_fields={"frag": 185}), F.ptb_v6(outer_ext=(IPv6ExtHdrFragment(offset=185, m=0),)),
        F.ptb_v4(proto=ICMP(type=3, code=1)), F.ptb_v6(proto=ICMPv6DestUnreach()),  # ICMP about ICMP
        F.ptb_v4(mtu=1500), F.echo_v4(), F.echo_v6(), F.arp_frame(), F.tcp_v4(),
        F.ptb_v4(vlans=((0x88A8, 1), (0x8100, 2), (0x8100, 3))),
    ]
    bench = _bench_frames()
    # Linux-sized quotes (576 bytes of IPv4, 1280 of IPv6) and 150 distinct routers and flows:
    # the long-checksum path, and enough relayed PTBs to fill the 64-entry tables (eviction).
    sized = [bench.valid(i, 4 if i % 3 else 6) for i in range(150)]
    out = [b"\x00" + f for f in valid + hostile + sized]
    out += [b"\x80" + f for f in valid + hostile]  # the target recomputes their checksums
    out += [bytes([t]) + valid[0] for t in (5, 6, 7, 8)]  # broadcast, multicast, other host, outgoing
    out.append(b"\x00" + F.ptb_v4(dst_mac=F.BROADCAST))
    return out


def nflog_seeds() -> list[bytes]:
    from tests.support import nflog as N

    out = [
        N.ptb4_msg(seq=1), N.ptb6_msg(seq=2),
        N.ptb4_msg(seq=3, prefix=b"pmtud-relay", timestamp=(1, 2)),
        N.ptb4_msg(seq=4) + N.ptb6_msg(seq=5, hwheader=None),
        N.packet_msg(N.attrs_for(N.ptb4_packet(), hwheader=None, hwaddr=None)),
        N.ptb4_msg(seq=6, indev=8), N.ptb4_msg(seq=7, indev=99),
        N.nlmsg(2, struct.pack("=i", -1) + b"\0" * 16) + N.ptb4_msg(seq=8),
        N.nlmsg(4, b"") + N.nlmsg(3, b"\0" * 4),
        N.ptb4_msg(seq=9, payload=N.ptb4_packet(mtu=500)),
        N.packet_msg([N.nla(20 | 0x8000, N.nla(1, b"\x81\x00") + N.nla(2, b"\x00\x05")),
                      N.nla(21, N.eth(N.HOST_MAC, N.ROUTER_MAC, 0x8100))] + N.attrs_for(N.ptb4_packet()),
                     family=socket.AF_BRIDGE),
    ]
    return out


def peer_seeds() -> list[bytes]:
    from _common import PEER_KEYS as KEYS
    from _common import PEER_START as START

    from pmtud_relay.core.packet import parse_frame
    from pmtud_relay.peers import wire as pp
    from tests.support import frames as F

    keyring = pp.Keyring(sorted(KEYS.items()))
    packets = []
    hostile = [F.ptb_v4(mtu=500), F.ptb_v4(outer_dst="192.0.2.99", src="192.0.2.99")]
    for frame in list(F.valid_catalogue().values())[:12] + hostile:
        ptb = parse_frame(frame)
        packets.append(pp.ptb_packet(ptb))
    out = []
    for i, packet in enumerate(packets):
        nonce = hashlib.sha256(b"nonce%d" % i).digest()[:12]
        datagram = pp.encode(packet, keyring, START, nonce)
        out.append(b"\x00" + datagram)  # as received
        out.append(b"\x01" + datagram[:-pp.MAC_LEN])  # body for the target to sign
        out.append(b"\x03" + datagram[:-pp.MAC_LEN])  # ... after fixing the packet's checksums
    for i in range(40):  # more accepted messages than the target's 32-nonce replay cache holds
        packet = pp.ptb_packet(parse_frame(F.ptb_v4(dport=30000 + i)))
        out.append(b"\x00" + pp.encode(packet, keyring, START, hashlib.sha256(b"many%d" % i).digest()[:12]))
    odd = [b"\x00" * 40, b"\x70" + packets[0][1:], packets[0] + b"\x00\x00"]  # no IP version, bad version, padded
    for i, packet in enumerate(odd):
        out.append(b"\x00" + pp.encode(packet, keyring, START, hashlib.sha256(b"odd%d" % i).digest()[:12]))
    d = out[0][1:]
    out.append(b"\x00" + d[:-1] + bytes([d[-1] ^ 1]))  # bad MAC
    body = bytearray(d[:-pp.MAC_LEN])
    body[6:8] = (2).to_bytes(2, "big")  # the second key
    out.append(b"\x01" + bytes(body))
    body[6:8] = (9).to_bytes(2, "big")  # unknown key
    out.append(b"\x00" + bytes(body) + hmac.new(KEYS[1], bytes(body), hashlib.sha256).digest())
    stale = bytearray(d[:-pp.MAC_LEN])
    stale[8:16] = int((START - 60) * 1000).to_bytes(8, "big")
    out.append(b"\x01" + bytes(stale))
    return out


def _bench_frames():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_frames", os.path.join(REPO, "bench", "frames.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TARGETS = {"frame": frame_seeds, "nflog": nflog_seeds, "peer": peer_seeds}


def write(out_dir: str) -> dict[str, int]:
    counts = {}
    for name, make in TARGETS.items():
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        for old in os.listdir(d):
            os.unlink(os.path.join(d, old))
        seeds = make()
        for data in seeds:
            with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
                f.write(data)
        counts[name] = len(set(seeds))
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "seeds"))
    args = ap.parse_args(argv)
    for name, n in write(args.out).items():
        print(f"{name}: {n} seeds in {os.path.join(args.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
