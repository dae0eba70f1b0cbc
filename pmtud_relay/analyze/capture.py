"""Reading captures for ``pmtud-relay analyze``: pcap and pcapng frames (through scapy's raw
readers), and each link type turned into the Ethernet frame and Linux packet type the relay's
capture socket would have seen.

Link types: Ethernet; Linux cooked captures (SLL and SLL2, e.g. ``tcpdump -i any``), whose
Ethernet header is rebuilt from the recorded packet type; raw IP.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pmtud_relay.core.packet import ETH_P_IP, ETH_P_IPV6
from pmtud_relay.core.policy import (
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
)

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_ALIASES = (12, 14)  # DLT_RAW as some writers store it
LINKTYPE_NAMES = {
    LINKTYPE_ETHERNET: "ethernet",
    LINKTYPE_RAW: "raw-ip",
    12: "raw-ip",
    14: "raw-ip",
    LINKTYPE_LINUX_SLL: "linux-sll",
    LINKTYPE_LINUX_SLL2: "linux-sll2",
    LINKTYPE_IPV4: "raw-ipv4",
    LINKTYPE_IPV6: "raw-ipv6",
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)

#: Stand-in MACs for rebuilt Ethernet headers (locally administered, unicast).
HOST_MAC = b"\x02\x00\x00\x00\x00\x01"
OTHER_MAC = b"\x02\x00\x00\x00\x00\x02"
_MCAST_V4 = b"\x01\x00\x5e\x00\x00\x01"
_MCAST_V6 = b"\x33\x33\x00\x00\x00\x01"
_BCAST = b"\xff" * 6
_SLL = struct.Struct("!HHH8sH")  # pkttype, hatype, halen, addr, protocol
_SLL2 = struct.Struct("!HHIHBB8s")  # protocol, reserved, ifindex, hatype, pkttype, halen, addr

class AnalyzeError(Exception):
    """A capture that cannot be read; the message is for the user."""

@dataclass
class CaptureInfo:
    path: str
    format: str = ""  # pcap / pcapng

def read_capture(path: str, info: CaptureInfo | None = None) -> Iterator[tuple[bytes, float, int, int | None, int]]:
    """Yield (data, timestamp, linktype, pcapng direction or None, wire length) per frame."""
    try:
        from scapy.error import Scapy_Exception
        from scapy.utils import RawPcapNgReader, RawPcapReader
    except ImportError:  # pragma: no cover - scapy is a test dependency
        raise AnalyzeError("analyze needs scapy (pip install scapy) to read captures") from None
    try:
        reader = RawPcapReader(path)
    except FileNotFoundError:
        raise AnalyzeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AnalyzeError(f"{path}: is a directory") from None
    except PermissionError:
        raise AnalyzeError(f"{path}: permission denied") from None
    except OSError as exc:
        raise AnalyzeError(f"{path}: {exc.strerror or exc}") from None
    except Scapy_Exception as exc:
        raise AnalyzeError(f"{path}: not a pcap or pcapng capture ({exc})") from None
    with reader:
        if isinstance(reader, RawPcapNgReader):
            if info is not None:
                info.format = "pcapng"
            # scapy yields its PacketMetadataNg here but types the items as RawPcapReader.PacketMetadata
            # (inherited __next__), which has none of these fields: Any, not an ignore, as scapy may be absent.
            ng: Any
            for data, ng in reader:
                ts = ((ng.tshigh << 32) | ng.tslow) / ng.tsresol
                yield data, ts, ng.linktype, ng.direction, ng.wirelen
        else:
            if info is not None:
                info.format = "pcap"
            div = 1e9 if getattr(reader, "nano", False) else 1e6
            linktype = reader.linktype
            for data, meta in reader:
                yield data, meta.sec + meta.usec / div, linktype, None, meta.wirelen

def to_ethernet(data: bytes, linktype: int, host_macs: frozenset[bytes] = frozenset()) -> tuple[bytes, int] | None:
    """(Ethernet frame, Linux packet type) for a captured frame, or None for an unsupported link type.

    Cooked (SLL/SLL2) captures record the packet type; the Ethernet header is rebuilt to
    match it (broadcast/multicast destination for group frames, a stand-in unicast MAC
    otherwise). Raw IP has no link layer: it is treated as unicast to this host.
    """
    if linktype == LINKTYPE_ETHERNET:
        return data, ethernet_pkttype(data, host_macs)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < _SLL.size:
            return b"", PACKET_HOST  # the parser reports too_short
        pkttype, _hatype, halen, addr, proto = _SLL.unpack_from(data)
        payload = data[_SLL.size :]
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < _SLL2.size:
            return b"", PACKET_HOST
        proto, _res, _ifindex, _hatype, pkttype, halen, addr = _SLL2.unpack_from(data)
        payload = data[_SLL2.size :]
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *_RAW_ALIASES):
        version = data[0] >> 4 if data else 0
        proto = ETH_P_IPV6 if version == 6 else ETH_P_IP
        dst = next(iter(host_macs)) if host_macs else HOST_MAC
        return dst + OTHER_MAC + struct.pack("!H", proto) + data, PACKET_HOST
    else:
        return None
    if pkttype > PACKET_OUTGOING:  # PACKET_LOOPBACK and friends: looped-back own frames
        pkttype = PACKET_OUTGOING
    src = addr[:6] if halen == 6 else b"\x00" * 6
    if pkttype == PACKET_BROADCAST:
        dst = _BCAST
    elif pkttype == PACKET_MULTICAST:
        dst = _MCAST_V6 if proto == ETH_P_IPV6 else _MCAST_V4
    elif pkttype == PACKET_OTHERHOST:
        dst = OTHER_MAC
    else:
        dst = next(iter(host_macs)) if host_macs else HOST_MAC
    return dst + src + struct.pack("!H", proto) + payload, pkttype

def ethernet_pkttype(frame: bytes, host_macs: frozenset[bytes] = frozenset()) -> int:
    """The packet type a capture socket would have reported for an Ethernet frame.

    Group destination: broadcast/multicast. Otherwise unicast to this host, unless
    ``host_macs`` is given: then frames from one of them are this host's own, and
    frames to any other MAC were seen promiscuously.
    """
    if len(frame) < 12:
        return PACKET_HOST
    if frame[0] & 1:
        return PACKET_BROADCAST if frame[:6] == _BCAST else PACKET_MULTICAST
    if host_macs:
        if frame[6:12] in host_macs:
            return PACKET_OUTGOING
        if frame[:6] not in host_macs:
            return PACKET_OTHERHOST
    return PACKET_HOST

