"""``pmtud-relay analyze``: replay a capture through the exact core pipeline, offline.

Every frame of a pcap or pcapng file goes through :meth:`pmtud_relay.core.Relay.handle`
with the capture's timestamps as the clock, so parsing, policy, dedup and rate limits
behave exactly as the daemon would have behaved on that traffic. The report says what
PTBs were seen (per outer source, per MTU, per destination), what would have been
relayed, what was dropped and why, what dedup and the rate limits did with the
capture's timing, and which inner flows were affected.

Modules: capture (reading pcap/pcapng, link types), analysis (the replay and tallies),
report (the text output), command (options and exit status).

Link types: Ethernet; Linux cooked captures (SLL and SLL2, e.g. ``tcpdump -i any``),
whose Ethernet header is rebuilt from the recorded packet type; raw IP. VIPs are never
inferred (that would hide ``not_vip`` drops): pass ``--vip`` or say ``--assume-vips``.
"""

from __future__ import annotations

from pmtud_relay.analyze.analysis import Analyzer
from pmtud_relay.analyze.capture import (
    LINKTYPE_NAMES,
    SUPPORTED_LINKTYPES,
    AnalyzeError,
    CaptureInfo,
    ethernet_pkttype,
    read_capture,
    to_ethernet,
)
from pmtud_relay.analyze.command import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    add_parser,
    analyze_file,
    cli,
    configure_parser,
    main,
    relay_config,
)
from pmtud_relay.analyze.report import render_text

__all__ = [
    "EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "LINKTYPE_NAMES", "SUPPORTED_LINKTYPES", "AnalyzeError", "Analyzer",
    "CaptureInfo", "add_parser", "analyze_file", "cli", "configure_parser", "ethernet_pkttype", "main",
    "read_capture", "relay_config", "render_text", "to_ethernet",
]
