"""The owner verdict of one PTB and where the PTB came from (pure, no I/O)."""

from __future__ import annotations

import enum


class OwnerVerdict(enum.Enum):
    """What the local kernel says about the flow a PTB quotes."""

    #: No local socket owns the quoted flow (none, a listener only, or a TIME_WAIT remnant).
    ORPHAN = "orphan"
    #: A local socket owns it and its path MTU is now <= the PTB's MTU.
    APPLIED = "applied"
    #: Owned, but the path MTU did not drop (e.g. quoted TCP sequence out of window, MTU below
    #: the kernel's floor).
    NOT_APPLIED = "not_applied"
    #: The lookup failed, the protocol is not supported, it timed out, or confirmation is off.
    UNKNOWN = "unknown"


class Origin(enum.Enum):
    """How the PTB reached this host."""

    #: A unicast PTB this host captured (and relayed).
    CAPTURED = "captured"
    #: Another relay's L2 (broadcast/multicast) copy, received here; never relayed again.
    L2_COPY = "l2_copy"
    #: Injected from a peer datagram (peers mode).
    PEER = "peer"
