"""DNS messages (RFC 1035), just enough to ask for A/AAAA records and read the answer with its TTLs.
Pure: no I/O. :func:`parse_response` and :func:`extract` raise nothing but :class:`DnsError`,
whatever the input.

Names are handled as tuples of lower-cased label bytes (DNS compares names ASCII
case-insensitively); :func:`name_text` turns one into text for messages.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
CLASS_IN = 1

RCODE_NOERROR = 0
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
MAX_NAME = 255  # wire octets, RFC 1035 2.3.4
MAX_POINTERS = 64  # compression pointers followed while reading one name
MAX_CNAME_CHAIN = 16
MAX_TTL = 0x7FFFFFFF  # RFC 2181 8: a TTL with the top bit set counts as 0

Name = tuple[bytes, ...]


class DnsError(Exception):
    """A malformed message, an unusable answer or (in the resolver) a failed lookup."""


def name_text(name: Name) -> str:
    return ".".join(label.decode("ascii", "backslashreplace") for label in name) or "."


def encode_name(name: str) -> bytes:
    """Wire form of a text name (trailing dot optional). DnsError if it cannot be one."""
    if not isinstance(name, str) or not name.isascii():
        raise DnsError(f"{name!r}: not an ASCII DNS name")
    text = name[:-1] if name.endswith(".") else name
    out = bytearray()
    for label in text.split(".") if text else ():
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise DnsError(f"{name!r}: empty label or label longer than 63 octets")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > MAX_NAME:
        raise DnsError(f"{name!r}: longer than {MAX_NAME} octets")
    return bytes(out)


def name_key(name: str) -> Name:
    """The comparison form of a text name."""
    text = name[:-1] if name.endswith(".") else name
    return tuple(label.encode("ascii").lower() for label in text.split(".")) if text else ()


def build_query(name: str, qtype: int, qid: int) -> bytes:
    """A standard recursive query (RD set, one question, class IN)."""
    if not 0 <= qid <= 0xFFFF:
        raise DnsError(f"query id {qid} out of range")
    header = struct.pack("!HHHHHH", qid, _FLAG_RD, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


@dataclass(frozen=True)
class Record:
    name: Name
    rtype: int
    rclass: int
    ttl: int
    data: str | Name | bytes  # address text (A/AAAA), target name (CNAME), raw rdata otherwise


@dataclass(frozen=True)
class Response:
    id: int
    rcode: int
    truncated: bool
    question: tuple[Name, int, int] | None  # (name, type, class) of the first question
    answers: tuple[Record, ...]  # empty when truncated: a cut message is not trusted


def read_name(data: bytes, offset: int) -> tuple[Name, int]:
    """The name at ``offset`` and the offset after it (after the first pointer, if any).
    Pointers are followed at most MAX_POINTERS times and the name may not exceed 255 octets,
    so a pointer loop ends in a DnsError."""
    labels: list[bytes] = []
    length = 1
    end = None
    jumps = 0
    while True:
        if offset >= len(data):
            raise DnsError("name runs past the end of the message")
        n = data[offset]
        if n & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsError("compression pointer runs past the end of the message")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise DnsError("too many compression pointers (loop?)")
            if end is None:
                end = offset + 2
            offset = ((n & 0x3F) << 8) | data[offset + 1]
            continue
        if n & 0xC0:
            raise DnsError(f"unsupported label type 0x{n & 0xC0:02x}")
        if n == 0:
            return tuple(labels), (offset + 1 if end is None else end)
        if offset + 1 + n > len(data):
            raise DnsError("label runs past the end of the message")
        length += n + 1
        if length > MAX_NAME:
            raise DnsError(f"name longer than {MAX_NAME} octets")
        labels.append(bytes(data[offset + 1:offset + 1 + n]).lower())
        offset += 1 + n


def parse_response(data: bytes) -> Response:
    """Header, question(s) and answer section of a response. DnsError on anything malformed."""
    try:
        return _parse_response(bytes(data))
    except DnsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: nothing but DnsError escapes
        raise DnsError(f"malformed message: {exc.__class__.__name__}") from None


def _parse_response(data: bytes) -> Response:
    if len(data) < 12:
        raise DnsError(f"message of {len(data)} bytes is shorter than a DNS header")
    qid, flags, qdcount, ancount, _nscount, _arcount = struct.unpack_from("!HHHHHH", data)
    if not flags & _FLAG_QR:
        raise DnsError("not a response (QR bit clear)")
    if (flags >> 11) & 0xF:
        raise DnsError(f"unexpected opcode {(flags >> 11) & 0xF}")
    rcode = flags & 0xF
    truncated = bool(flags & _FLAG_TC)
    offset = 12
    question = None
    for _ in range(qdcount):
        qname, offset = read_name(data, offset)
        if offset + 4 > len(data):
            raise DnsError("question runs past the end of the message")
        qtype, qclass = struct.unpack_from("!HH", data, offset)
        offset += 4
        if question is None:
            question = (qname, qtype, qclass)
    if truncated:
        return Response(qid, rcode, True, question, ())
    answers = []
    for _ in range(ancount):
        rname, offset = read_name(data, offset)
        if offset + 10 > len(data):
            raise DnsError("resource record header runs past the end of the message")
        rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        if offset + rdlength > len(data):
            raise DnsError("resource record data runs past the end of the message")
        rdata = data[offset:offset + rdlength]
        if ttl > MAX_TTL:
            ttl = 0
        value: str | Name | bytes = rdata
        if rclass == CLASS_IN and rtype == TYPE_A:
            if rdlength != 4:
                raise DnsError(f"A record with {rdlength} bytes of data")
            value = str(ipaddress.IPv4Address(rdata))
        elif rclass == CLASS_IN and rtype == TYPE_AAAA:
            if rdlength != 16:
                raise DnsError(f"AAAA record with {rdlength} bytes of data")
            value = str(ipaddress.IPv6Address(rdata))
        elif rtype == TYPE_CNAME:
            target, after = read_name(data, offset)  # may point back into the message
            if after != offset + rdlength:
                raise DnsError("CNAME data length does not match its name")
            value = target
        answers.append(Record(rname, rtype, rclass, ttl, value))
        offset += rdlength
    return Response(qid, rcode, False, question, tuple(answers))


@dataclass(frozen=True)
class Answer:
    addresses: tuple[str, ...]
    ttl: int | None  # min TTL over the records used (CNAMEs included); None without addresses
    nxdomain: bool = False


def extract(response: Response, qname: Name, qtype: int) -> Answer:
    """The ``qtype`` addresses of ``qname``, following a CNAME chain inside the answer section.
    NXDOMAIN and NOERROR without records are answers (empty); any other RCODE, or a truncated
    response, is a DnsError."""
    if response.truncated:
        raise DnsError("truncated response")
    if response.rcode == RCODE_NXDOMAIN:
        return Answer((), None, True)
    if response.rcode != RCODE_NOERROR:
        raise DnsError(f"server answered {RCODE_NAMES.get(response.rcode, response.rcode)}")
    name = qname
    ttls: list[int] = []
    seen = {name}
    for _ in range(MAX_CNAME_CHAIN + 1):
        found = [r for r in response.answers if r.name == name and r.rclass == CLASS_IN and r.rtype == qtype]
        if found:
            ttls += [r.ttl for r in found]
            addresses = tuple(dict.fromkeys(r.data for r in found))  # type: ignore[misc]
            return Answer(addresses, min(ttls))
        alias = next((r for r in response.answers if r.name == name and r.rtype == TYPE_CNAME), None)
        if alias is None:
            return Answer((), None)  # NODATA (or a chain whose end the server did not include)
        ttls.append(alias.ttl)
        name = alias.data  # type: ignore[assignment]
        if name in seen:
            raise DnsError(f"CNAME loop at {name_text(name)}")
        seen.add(name)
    raise DnsError(f"CNAME chain longer than {MAX_CNAME_CHAIN}")
