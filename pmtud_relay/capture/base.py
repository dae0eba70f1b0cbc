"""What the daemon needs of a capture, whatever its kind (AF_PACKET socket, NFLOG group share).

A capture serves one interface: it wakes the event loop through :meth:`Capture.fileno`, hands
over the queued frames with :meth:`Capture.drain` and states the facts the daemon acts on
(which interface, its MAC for the core's own-frame check, its own event counts). What a kind
can do beyond that is stated as data, not probed: ``holds_sources`` says whether
:meth:`Capture.set_blocked` makes the kernel drop frames of flooding sources (core/shun.py).

Implemented by :class:`pmtud_relay.capture.afpacket.PacketCapture` and
:class:`pmtud_relay.nflog.capture.NflogPort`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Protocol

#: One captured frame: the Ethernet frame (VLAN tag restored) and its sll_pkttype.
Frame = tuple[bytes, int]
#: Held sources (4 or 16 bytes) and, for each, N: one frame in N still passes (None: none does).
HeldSources = Mapping[bytes, Optional[int]]


class Capture(Protocol):
    """One interface's capture, as the daemon uses it."""

    #: The configured name of the interface this capture serves.
    ifname: str
    #: The kernel's index of that interface when the capture was opened (link events name it).
    ifindex: int
    #: The interface's MAC address: frames the relay sent itself are recognised by it.
    mac: bytes
    #: Whether :meth:`set_blocked` drops held sources in the kernel. False: the capture keeps
    #: no hold (NFLOG: the firewall rules carry their own in-kernel limit), so none is decided.
    holds_sources: bool

    def fileno(self) -> int:
        """The descriptor the event loop watches; readable when frames (or an error) are queued."""
        ...

    def drain(self, limit: int = 256) -> list[Frame]:
        """Up to ``limit`` queued frames, without blocking; [] when none."""
        ...

    def pending_error(self) -> int:
        """The errno a frameless wake-up carries (e.g. ENETDOWN: the interface went down), read and
        cleared; 0 when there is none (or the kind has no error of its own to report)."""
        ...

    def counters(self) -> dict[str, int]:
        """Cumulative counts of capture events that are not PTB decisions (exported as metrics)."""
        ...

    def set_blocked(self, sources: HeldSources) -> None:
        """Hold ``sources`` in the kernel (only called when :attr:`holds_sources` is true)."""
        ...

    def close(self) -> None:
        ...
