"""The text report of ``pmtud-relay analyze`` (``--json`` prints the analysis' dict as is)."""

from __future__ import annotations

from pmtud_relay.core.reasons import Reason

#: Reasons whose drops are explained in the report's notes.
_REASON_TEXT = {
    Reason.RELAYED: "would be relayed",
    Reason.DUPLICATE: "same router, flow, MTU and quoted sequence already relayed within the dedup window",
    Reason.RATE_LIMITED_SOURCE: "the sending router's token bucket was empty",
    Reason.RATE_LIMITED_GLOBAL: "the global token bucket was empty",
    Reason.NOT_VIP: "quoted source is not a service address",
    Reason.NOT_UNICAST: "arrived as L2 broadcast/multicast: a relayed copy, never relayed again",
    Reason.OTHER_HOST: "unicast to another host's MAC (promiscuous capture)",
    Reason.OWN_FRAME: "sent by this host",
    Reason.DST_NOT_QUOTED_SRC: "sent to an address other than the quoted packet's source",
    Reason.MTU_BELOW_FLOOR: "announced MTU below the floor",
    Reason.MTU_NOT_BELOW_PACKET: "announced MTU not below the quoted packet's length",
    Reason.PROTO_NOT_ALLOWED: "quoted protocol not in --protocol",
    Reason.PORT_NOT_ALLOWED: "quoted source port not in --port",
    Reason.BAD_CHECKSUM: "malformed: checksum does not verify",
    Reason.TOO_SHORT: "malformed: truncated (snap length?)",
    Reason.SHORT_QUOTE: "malformed: quotes too little of the original packet",
    Reason.SHORT_L4_QUOTE: "quotes under 8 bytes past the quoted IP header: no kernel can match it to a socket",
    Reason.BAD_INNER: "malformed: quoted packet is not IP",
    Reason.INNER_ICMP_ERROR: "PTB about an ICMP error: never legitimate",
    Reason.BAD_IP: "malformed outer IP header",
    Reason.BAD_EXT_HEADER: "malformed IPv6 extension headers",
    Reason.FRAGMENT: "outer packet is a fragment",
}



def _table(headers: list[str], rows: list[list], indent: str = "  ") -> list[str]:
    cells = [[str(x) for x in headers]] + [["" if x is None else str(x) for x in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(r[i].replace(".", "", 1).isdigit() or not r[i] for r in cells[1:]) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = []
        for i, (cell, w) in enumerate(zip(r, widths)):
            last = i == len(widths) - 1
            if numeric[i] and not last:
                parts.append(cell.rjust(w))
            else:
                parts.append(cell if last else cell.ljust(w))
        out.append((indent + "  ".join(parts)).rstrip())
    return out


def _reasons_text(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def render_text(res: dict, top: int = 10) -> str:
    cap, cfg, ptbs = res["capture"], res["config"], res["ptbs"]
    lines = []
    kinds = ", ".join(f"{k} {v}" for k, v in cap["linktypes"].items()) or "-"
    lines.append(f"capture   {cap['file']} ({cap['format'] or '?'}; {kinds}): {cap['frames']} frames")
    if cap["start"]:
        lines.append(f"time      {cap['start']} .. {cap['end']} ({cap['duration']:.3f} s)")
    vips = cfg["vips"] if isinstance(cfg["vips"], str) else ", ".join(cfg["vips"]) or "(none)"
    lines.append(f"policy    VIPs {vips}; floors {cfg['floor_v4']}/{cfg['floor_v6']}"
                 + (f"; protocols {cfg['protocols']}" if cfg["protocols"] else "")
                 + (f"; ports {cfg['ports']}" if cfg["ports"] else ""))
    lines.append(f"limits    dedup {cfg['dedup_window']:g} s; per source {cfg['source_rate']:g}/s burst "
                 f"{cfg['source_burst']:g}; global {cfg['global_rate']:g}/s burst {cfg['global_burst']:g}")
    lines.append("")
    lines.append(f"PTBs: {ptbs['seen']} seen (IPv4 {ptbs['ipv4']}, IPv6 {ptbs['ipv6']}): "
                 f"{ptbs['relayed']} would be relayed, {ptbs['dropped']} dropped")
    rows = []
    for reason, n in ptbs["reasons"].items():
        text = _REASON_TEXT.get(Reason(reason), "")
        first = res["timing"]["first_at"].get(reason)
        rows.append([reason, n, f"{first:.3f}" if first is not None else "", text])
    if rows:
        lines += _table(["verdict", "PTBs", "first at s", "meaning"], rows)
    lines.append(f"  peak: {res['timing']['peak_ptbs_per_second']} PTBs within one second")
    if res["sources"]:
        lines.append("")
        lines.append("by outer source (the hop that sent the PTB)")
        lines += _table(
            ["source", "PTBs", "relayed", "peak/s", "MTUs", "dropped"],
            [[s["source"], s["ptbs"], s["relayed"], s["peak_per_second"], " ".join(s["mtus"]) or "-",
              _reasons_text(s["dropped"])] for s in res["sources"][:top]],
        )
        if len(res["sources"]) > top:
            lines.append(f"  ... {len(res['sources']) - top} more sources")
    if res["mtus"]:
        lines.append("")
        lines.append("by announced MTU")
        lines += _table(
            ["MTU", "family", "PTBs", "relayed", "dropped", "hint"],
            [[m["mtu"], f"IPv{m['family']}", m["ptbs"], m["relayed"], _reasons_text(m["dropped"]), m["hint"] or ""]
             for m in res["mtus"][:top]],
        )
    if res["destinations"]:
        lines.append("")
        lines.append("by destination (the address the PTB was sent to)")
        lines += _table(["destination", "PTBs", "relayed", "dropped"],
                        [[d["destination"], d["ptbs"], d["relayed"], _reasons_text(d["dropped"])]
                         for d in res["destinations"][:top]])
    fl = res["flows"]
    lines.append("")
    lines.append(f"inner flows affected: {fl['count']} ({fl['with_relay']} with a relayed PTB, "
                 f"{fl['without_relay']} without"
                 + (": " + _reasons_text(fl["without_relay_by_reason"]) if fl["without_relay"] else "") + ")")
    if fl["top"]:
        lines += _table(["flow", "PTBs", "relayed", "MTUs", "dropped"],
                        [[f["flow"], f["ptbs"], f["relayed"], " ".join(map(str, f["mtus"])),
                          _reasons_text(f["dropped"])] for f in fl["top"]])
        if fl["count"] > len(fl["top"]):
            lines.append(f"  ... {fl['count'] - len(fl['top'])} more flows")
    other = res["other_frames"]
    lines.append("")
    detail = f" ({_reasons_text(other['reasons'])})" if other["count"] else ""
    lines.append(f"other frames: {other['count']}{detail}")
    if res["notes"]:
        lines.append("")
        lines.append("notes")
        lines += [f"  - {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


