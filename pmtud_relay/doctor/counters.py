"""ICMP counters from /proc/net/snmp, /proc/net/snmp6 and /proc/net/netstat.

One read gives totals since boot (or since the network namespace was created); two reads
``interval`` seconds apart give rates, which is what tells the stories apart:

* ``Icmp OutDestUnreachs`` rising with ``Ip FragFails`` (a DF packet that did not fit
  an outgoing link or route MTU): this host generates Frag-Needed itself. Rising while
  ``InDestUnreachs`` stays flat: it is telling other hosts to shrink (a router, an IPVS
  director in tunnel mode, a tunnel endpoint). Rising together: the host's own packets
  hit a smaller MTU and the error loops back to it (the Wikimedia IPsec spikes, the IPVS
  200 ms delays).
* ``Icmp InDestUnreachs`` / ``Icmp6 InPktTooBigs``: PTBs received; the relay's work.
  (IPv4 counts every Destination Unreachable code; only IPv6 has a PTB-only counter.)
"""

from __future__ import annotations

import time
from pathlib import Path

from pmtud_relay.doctor.findings import Finding, Severity

#: (file, section, counter) for everything reported; ``section`` is None for snmp6.
COUNTERS = (
    ("snmp", "Icmp", "InDestUnreachs"),
    ("snmp", "Icmp", "OutDestUnreachs"),
    ("snmp", "Icmp", "InErrors"),
    ("snmp", "Icmp", "OutRateLimitHost"),
    ("snmp", "Ip", "FragFails"),
    ("snmp", "Ip", "FragCreates"),
    ("snmp6", None, "Icmp6InPktTooBigs"),
    ("snmp6", None, "Icmp6OutPktTooBigs"),
    ("snmp6", None, "Ip6FragFails"),
    ("snmp6", None, "Ip6InTooBigErrors"),
    ("netstat", "TcpExt", "TCPMTUPFail"),
    ("netstat", "TcpExt", "TCPMTUPSuccess"),
)

#: Rates (per second) above which locally generated Frag-Needed/PTBs are a warning.
GENERATED_WARN_RATE = 1.0


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/snmp`` or ``/proc/net/netstat``: pairs of 'Section: names' / 'Section: values' lines."""
    out: dict[str, dict[str, int]] = {}
    pending: dict[str, list[str]] = {}
    for line in text.splitlines():
        section, _, rest = line.partition(":")
        if not rest:
            continue
        fields = rest.split()
        if section in pending:
            names = pending.pop(section)
            values: dict[str, int] = {}
            for name, value in zip(names, fields):
                try:
                    values[name] = int(value)
                except ValueError:
                    pass
            out[section] = values
        else:
            pending[section] = fields
    return out


def parse_snmp6(text: str) -> dict[str, int]:
    """``/proc/net/snmp6``: one 'Name value' per line."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def read_counters(proc_root: str | Path = "/proc") -> dict[str, int]:
    """The counters in :data:`COUNTERS`, keyed ``Section.Name`` (``Icmp6InPktTooBigs`` for snmp6)."""
    texts: dict[str, str] = {}
    for name in ("snmp", "snmp6", "netstat"):
        try:
            texts[name] = Path(proc_root, "net", name).read_text()
        except OSError:
            texts[name] = ""
    snmp = parse_snmp(texts["snmp"])
    netstat = parse_snmp(texts["netstat"])
    snmp6 = parse_snmp6(texts["snmp6"])
    out: dict[str, int] = {}
    for source, section, name in COUNTERS:
        if source == "snmp6":
            if name in snmp6:
                out[name] = snmp6[name]
        elif section is not None:  # snmp and netstat rows name their section
            table = (snmp if source == "snmp" else netstat).get(section, {})
            if name in table:
                out[f"{section}.{name}"] = table[name]
    return out


def sample(proc_root: str | Path = "/proc", interval: float | None = None, sleep=time.sleep):
    """(before, after, seconds): ``after`` is None without an interval."""
    before = read_counters(proc_root)
    if not interval:
        return before, None, None
    start = time.monotonic()
    sleep(interval)
    after = read_counters(proc_root)
    return before, after, max(time.monotonic() - start, 1e-9)


def _fmt_rate(r: float) -> str:
    return f"{r:.2f}/s" if r < 100 else f"{r:.0f}/s"


def check(before: dict[str, int], after: dict[str, int] | None = None, seconds: float | None = None) -> list[Finding]:
    """Findings from one read (totals) or two reads (rates)."""
    if not before:
        return [Finding("counters", Severity.INFO, "no ICMP counters readable (/proc/net/snmp missing?)")]
    if after is None or not seconds:
        return _totals(before)
    rates = {k: max(after.get(k, v) - v, 0) / seconds for k, v in before.items()}
    return _rates(before, after, rates, seconds)


def _totals(c: dict[str, int]) -> list[Finding]:
    g = c.get
    lines = [
        f"IPv4: Destination Unreachable received {g('Icmp.InDestUnreachs', 0)}, sent {g('Icmp.OutDestUnreachs', 0)}; "
        f"DF packets too big to send (FragFails) {g('Ip.FragFails', 0)}",
        f"IPv6: Packet Too Big received {g('Icmp6InPktTooBigs', 0)}, sent {g('Icmp6OutPktTooBigs', 0)}",
    ]
    if "TcpExt.TCPMTUPSuccess" in c:
        lines.append(f"TCP RFC 4821 probing: {g('TcpExt.TCPMTUPSuccess', 0)} succeeded, "
                     f"{g('TcpExt.TCPMTUPFail', 0)} failed")
    return [Finding(
        "counters",
        Severity.INFO,
        f"since boot: PTBs received v4<={g('Icmp.InDestUnreachs', 0)} v6={g('Icmp6InPktTooBigs', 0)}, "
        f"sent v4<={g('Icmp.OutDestUnreachs', 0)} v6={g('Icmp6OutPktTooBigs', 0)}",
        "\n".join(lines) + "\nTotals cannot show a spike; run with --interval SECONDS to get rates.",
        "",
        {"totals": dict(c)},
    )]


def _rates(before, after, rates, seconds) -> list[Finding]:
    r = rates.get
    in4, out4 = r("Icmp.InDestUnreachs", 0.0), r("Icmp.OutDestUnreachs", 0.0)
    fragfail4 = r("Ip.FragFails", 0.0)
    in6, out6 = r("Icmp6InPktTooBigs", 0.0), r("Icmp6OutPktTooBigs", 0.0)
    fragfail6 = r("Ip6FragFails", 0.0)
    data = {"interval": round(seconds, 3), "rates": {k: round(v, 3) for k, v in rates.items()},
            "before": dict(before), "after": dict(after)}
    findings: list[Finding] = []
    summary = (f"over {seconds:.1f}s: received v4 DestUnreach {_fmt_rate(in4)}, v6 PTB {_fmt_rate(in6)}; "
               f"sent v4 DestUnreach {_fmt_rate(out4)}, v6 PTB {_fmt_rate(out6)}")
    findings.append(Finding("counters", Severity.INFO, summary,
                            "Received PTBs are what a relay on this segment has to deliver; IPv4 counts every "
                            "Destination Unreachable code, so non-PTB codes are included.", "", data))
    generated4 = out4 > 0 and fragfail4 > 0
    generated6 = out6 > 0
    if generated4 or generated6:
        rate = max(out4 if generated4 else 0.0, out6)
        looped = (in4 >= 0.5 * out4 > 0) if generated4 else (in6 >= 0.5 * out6 > 0)
        if looped:
            story = ("Received errors rise with the sent ones: this host's own packets exceed a smaller MTU "
                     "(a tunnel, IPsec, or a route MTU learned after the connection chose its MSS) and the "
                     "Frag-Needed it generates is delivered back to itself (source = destination), as in the "
                     "Wikimedia IPsec spikes and the IPVS 200 ms delays.")
        else:
            story = ("Sent errors rise while received ones stay flat: this host tells other hosts to send "
                     "smaller packets (it forwards, tunnels or load-balances traffic onto a smaller MTU, e.g. "
                     "an IPVS director in IPIP tunnel mode announcing 1480).")
        findings.append(Finding(
            "counters.generated",
            Severity.WARNING if rate >= GENERATED_WARN_RATE else Severity.INFO,
            f"this host is generating Frag-Needed/PTBs: v4 {_fmt_rate(out4)} (FragFails {_fmt_rate(fragfail4)}), "
            f"v6 {_fmt_rate(out6)} (Ip6FragFails {_fmt_rate(fragfail6)})",
            story,
            "find the smaller MTU (doctor's interfaces and pmtu_cache checks, `ip -s route get DST`, "
            "`ip xfrm state`); lower the MTU where traffic enters it or clamp the TCP MSS "
            "(iptables -t mangle -A POSTROUTING -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu)",
            data,
        ))
    fail = r("TcpExt.TCPMTUPFail", 0.0)
    if fail > 0:
        findings.append(Finding(
            "counters.mtu_probing", Severity.INFO,
            f"RFC 4821 MTU probes failing: {_fmt_rate(fail)} (succeeding {_fmt_rate(r('TcpExt.TCPMTUPSuccess', 0.0))})",
            "TCP is probing for a larger MSS and the probes are lost: paths with a smaller MTU than the "
            "link and no working PTB delivery.", "", data))
    return findings
