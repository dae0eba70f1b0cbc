"""nfnetlink_log packet messages read by learned attribute layouts: :class:`PacketParser`. No I/O.

The records are those of :func:`pmtud_relay.nflog.wire.parse_datagram` (the general walk),
equal for every input (tests/test_nflog_fastpath.py), only faster for a socket's stream of
messages: each is read with one unpack of the attribute layout learned from earlier ones.
Like the general walk it never raises.
"""

from __future__ import annotations

import operator
import struct
import sys

from pmtud_relay.nflog.wire import (
    _HDR_LEN,
    _NLATTR,
    NFULA_HWADDR,
    NFULA_HWHEADER,
    NFULA_HWLEN,
    NFULA_HWTYPE,
    NFULA_IFINDEX_INDEV,
    NFULA_IFINDEX_OUTDEV,
    NFULA_IFINDEX_PHYSINDEV,
    NFULA_L2HDR,
    NFULA_MARK,
    NFULA_PACKET_HDR,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    NFULA_SEQ,
    NFULA_SEQ_GLOBAL,
    NFULA_TIMESTAMP,
    NFULA_VLAN,
    NLA_TYPE_MASK,
    Batch,
    NflogPacket,
    _align,
    _new_tuple,
    _parse_datagram,
    _parse_vlan,
    parse_packet_message,
)

# --- the fast path: one unpack per message of a learned layout -----------------------------
# For one rule the kernel (nfnetlink_log's __build_packet_message) emits the same attributes
# in the same order and at the same lengths for every packet; only the payload's length and
# the values change. A layout learned from one message (the attribute headers up to the
# final NFULA_PAYLOAD) is one struct.Struct: a single unpack reads every value of the next
# message together with its attribute headers, which are compared with the learned ones.

#: How many layouts a :class:`PacketParser` tries on a message, most recently used first
#: (one per rule, prefix length and optional attribute set in practice).
LAYOUTS_TRIED = 4
#: How many compiled layouts it keeps, so that a layout pushed out of the tried ones comes
#: back without compiling it again; forgotten all at once when full.
LAYOUTS_KEPT = 32
#: The longest pause in learning (in packet messages walked), see :class:`PacketParser`.
LEARN_BACKOFF_MAX = 64

_U32_FIELDS = {
    NFULA_IFINDEX_INDEV: "indev", NFULA_IFINDEX_OUTDEV: "outdev", NFULA_IFINDEX_PHYSINDEV: "physindev",
    NFULA_SEQ: "seq", NFULA_SEQ_GLOBAL: "seq_global", NFULA_MARK: "mark",
}
_U16_FIELDS = {NFULA_HWTYPE: "hwtype", NFULA_HWLEN: "hwlen"}
_BYTES_FIELDS = {NFULA_HWHEADER: "hwheader", NFULA_L2HDR: "l2hdr"}
# What follows the unpacked values in the sequence a layout picks the record's fields from:
# the values computed per packet, then the two "absent" values.
_X_PAYLOAD, _X_TIMESTAMP, _X_HWADDR, _X_PREFIX, _X_VLAN_PROTO, _X_VLAN_TCI, _X_ABSENT_INT, _X_ABSENT = range(8)
_SWAP_NLA_LEN = sys.byteorder == "little"  # nla_len is host order, the layout reads network order


def _layout_key(data: bytes, start: int, end: int) -> tuple[int, ...] | None:
    """The attribute headers of a well-formed message whose last attribute is its payload:
    (nla_len, nla_type) of each attribute before it, then the payload's nla_type. None for
    any other message (the general walk alone decides what those hold)."""
    if end - start < _HDR_LEN or end > len(data):
        return None
    key: list[int] = []
    off = start + _HDR_LEN
    kind = -1
    while end - off >= _NLATTR.size:
        alen, kind = _NLATTR.unpack_from(data, off)
        if alen < _NLATTR.size or alen > end - off:
            return None
        key += (alen, kind)
        off += _align(alen)
    if kind & NLA_TYPE_MASK != NFULA_PAYLOAD:
        return None
    del key[-2]  # the payload's length varies from packet to packet
    return tuple(key)


class _Layout:
    """A compiled attribute layout: check a message against it and read it with one unpack.

    ``compiled`` is (size, unpack, check, expected, pick, timestamp, hwaddr, prefix, vlan):
    ``unpack`` reads ``size`` bytes from the message's start: the nfgenmsg family and group,
    every attribute header word and the values the general walk would keep, and the
    payload's header last. ``check`` picks the header words and the payload's type out of
    the values, to be compared with ``expected``. ``pick`` orders the values, followed by
    the ``_X_*`` extras, into an :class:`NflogPacket`. ``timestamp``, ``hwaddr`` and
    ``prefix`` index the raw values those records are computed from (0: absent), ``vlan``
    locates the nested NFULA_VLAN (offset from the message's start, length) or is None.
    An attribute that a later one overrides is read but not picked: as in the general
    walk, the last one wins.
    """

    __slots__ = ("key", "format", "compiled")

    def __init__(self, key: tuple[int, ...]):
        self.key = key
        fmt = ["!16xBxH"]  # nlmsghdr (already read), nfgenmsg: family, version, res_id
        field = dict.fromkeys(NflogPacket._fields, -1)  # field -> index of its value, -1: absent
        field["family"], field["group"] = 0, 1
        n = 2  # values so far
        checked: list[int] = []
        expected: list[int] = []
        timestamp = hwaddr = prefix = 0
        vlan: tuple[int, int] | None = None
        off = _HDR_LEN
        for i in range(0, len(key) - 1, 2):
            alen, raw_kind = key[i], key[i + 1]
            kind, plen = raw_kind & NLA_TYPE_MASK, alen - _NLATTR.size
            fmt.append("I")  # the header word, compared as a whole (flag bits included)
            checked.append(n)
            expected.append(int.from_bytes(_NLATTR.pack(alen, raw_kind), "big"))
            n += 1
            used = plen  # payload bytes the format reads
            if kind == NFULA_PACKET_HDR and plen >= 4:
                fmt.append("HBx")
                field["hw_protocol"], field["hook"] = n, n + 1
                n, used = n + 2, 4
            elif kind in _U32_FIELDS and plen >= 4:
                fmt.append("I")
                field[_U32_FIELDS[kind]] = n
                n, used = n + 1, 4
            elif kind in _U16_FIELDS and plen >= 2:
                fmt.append("H")
                field[_U16_FIELDS[kind]] = n
                n, used = n + 1, 2
            elif kind == NFULA_TIMESTAMP and plen >= 16:
                fmt.append("QQ")
                timestamp = n
                n, used = n + 2, 16
            elif kind == NFULA_HWADDR and plen >= 4:
                used = 4 + min(plen - 4, 8)
                fmt.append(f"H2x{used - 4}s")  # address length, pad, the address cut to its room
                hwaddr = n
                n += 2
            elif kind in _BYTES_FIELDS:
                fmt.append(f"{plen}s")
                field[_BYTES_FIELDS[kind]] = n
                n += 1
            elif kind == NFULA_PREFIX:
                fmt.append(f"{plen}s")
                prefix = n
                n += 1
            elif kind == NFULA_VLAN:  # nested, bridge family only: left to _parse_vlan
                vlan = (off + _NLATTR.size, plen)
                used = 0
            else:  # an earlier payload, an attribute too short to be read, one nobody reads
                used = 0
            skip = _align(alen) - _NLATTR.size - used
            if skip:
                fmt.append(f"{skip}x")
            off += _align(alen)
        fmt.append("HH")  # the payload's nla_len and nla_type
        checked.append(n + 1)
        expected.append(int.from_bytes(struct.pack("=H", key[-1]), "big"))
        n += 2
        extra = {"payload": _X_PAYLOAD, "timestamp": _X_TIMESTAMP, "hwaddr": _X_HWADDR, "prefix": _X_PREFIX,
                 "vlan_proto": _X_VLAN_PROTO, "vlan_tci": _X_VLAN_TCI, "hwheader": _X_ABSENT, "l2hdr": _X_ABSENT}
        picks = []
        for name in NflogPacket._fields:
            if field[name] >= 0:
                picks.append(field[name])
            else:
                picks.append(n + extra.get(name, _X_ABSENT_INT))
        self.format = "".join(fmt)
        compiled = struct.Struct(self.format)
        self.compiled = (
            compiled.size, compiled.unpack_from, operator.itemgetter(*checked),
            tuple(expected) if len(expected) > 1 else expected[0],  # what itemgetter returns
            operator.itemgetter(*picks), timestamp, hwaddr, prefix, vlan,
        )


class PacketParser:
    """:func:`parse_datagram` with a memory: the attribute layouts of recent messages.

    Each NFULNL_MSG_PACKET is first checked against the learned layouts (one unpack and
    one comparison each); a message that fits none goes through the general walk
    (:func:`parse_packet_message`) and, if it is well formed and ends with its payload as
    the kernel's do, teaches its layout. The records are equal to the general walk's for
    every input (tests/test_nflog_fastpath.py), and like it this never raises. One parser
    per socket: the layouts are those of that socket's group and rules.
    """

    __slots__ = ("_tried", "_kept", "_backoff", "_learn_at", "walked", "learned")

    def __init__(self) -> None:
        self._tried: list[_Layout] = []  # most recently used first, at most LAYOUTS_TRIED
        self._kept: dict[tuple[int, ...], _Layout] = {}  # at most LAYOUTS_KEPT
        # Finding a message's layout walks it a second time. Messages that cannot teach one
        # (not built as the kernel builds them), or more layouts taking turns than are tried,
        # would pay that for nothing each time, so after such a message the next misses
        # (1, 2, 4 ... LEARN_BACKOFF_MAX of them) are only walked once; a datagram read
        # entirely by learned layouts ends the pause.
        self._backoff = 1
        self._learn_at = 0  # the ``walked`` count from which a miss may teach again
        self.walked = 0  # packet messages no learned layout fitted: parsed by the general walk
        self.learned = 0  # layouts compiled

    def parse_datagram(self, data: bytes) -> Batch:
        """:func:`parse_datagram`, equal result. Never raises."""
        if data.__class__ is not bytes:  # a layout's byte strings are bytes: slices must be too
            return _parse_datagram(data, parse_packet_message)
        walked = self.walked
        batch = _parse_datagram(data, self._parse_packet)
        if self.walked == walked:
            self._backoff = 1
        return batch

    def parse_packet_message(self, data: bytes, start: int, end: int) -> NflogPacket | None:
        """:func:`parse_packet_message`, equal result."""
        if data.__class__ is not bytes or start < 0 or end > len(data):
            return parse_packet_message(data, start, end)
        return self._parse_packet(data, start, end)

    def _parse_packet(self, data: bytes, start: int, end: int) -> NflogPacket | None:
        """``data`` is bytes and 0 <= start, end <= len(data) (the datagram walk's messages)."""
        length = end - start
        tried = self._tried
        for layout in tried:
            size, unpack, check, expected, pick, ts, hw, pfx, vlan = layout.compiled
            if length < size:
                continue
            values = unpack(data, start)
            if check(values) != expected:
                continue
            alen = values[-2]
            if _SWAP_NLA_LEN:
                alen = alen >> 8 | (alen & 0xFF) << 8
            # The payload fits in the message and nothing but its padding follows it
            # (4: _NLATTR.size).
            if not 4 <= alen <= length - size + 4 < ((alen + 3) & ~3) + 4:
                continue
            payload = data[start + size : start + size - 4 + alen]
            timestamp = values[ts] + values[ts + 1] / 1e6 if ts else None
            hwaddr = values[hw + 1][: values[hw]] if hw else None
            prefix = values[pfx].split(b"\0", 1)[0] if pfx else None
            if vlan is None:
                vlan_proto = vlan_tci = -1
            else:
                vlan_proto, vlan_tci = _parse_vlan(data, start + vlan[0], start + vlan[0] + vlan[1])
            if layout is not tried[0]:
                self._use(layout)
            extras = (payload, timestamp, hwaddr, prefix, vlan_proto, vlan_tci, -1, None)  # the _X_* order
            return _new_tuple(NflogPacket, pick(values + extras))
        self.walked += 1
        pkt = parse_packet_message(data, start, end)
        if pkt is not None and self.walked >= self._learn_at:
            key = _layout_key(data, start, end)
            if key is None or len(self._tried) >= LAYOUTS_TRIED:
                # Nothing to learn, or a layout to push out for this one: pause.
                self._learn_at = self.walked + self._backoff
                self._backoff = min(self._backoff * 2, LEARN_BACKOFF_MAX)
            if key is not None:
                known = self._kept.get(key)
                if known is None:
                    if len(self._kept) >= LAYOUTS_KEPT:
                        self._kept.clear()
                    known = self._kept[key] = _Layout(key)
                    self.learned += 1
                self._use(known)
        return pkt

    def _use(self, layout: _Layout) -> None:
        """Try ``layout`` first from now on."""
        tried = self._tried
        if layout in tried:
            tried.remove(layout)
        tried.insert(0, layout)
        del tried[LAYOUTS_TRIED:]
