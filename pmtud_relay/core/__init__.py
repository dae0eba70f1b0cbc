"""The pure, sans-IO core: parse frame → decide → build frame.

Nothing in this package opens a socket, reads a clock or keeps global state; callers
pass bytes and a monotonic clock value and get decisions back.
"""

from pmtud_relay.core.packet import PTB, parse_frame
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Decision, Relay, RelayConfig

__all__ = ["PTB", "Decision", "Policy", "Reason", "Relay", "RelayConfig", "VipSet", "parse_frame"]
