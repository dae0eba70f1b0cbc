"""What shapes the NFLOG rules (:class:`RuleSpec`), the back-end interface both back ends
implement, and their shared constants and error. The back ends (.nft, .iptables) import this
module, and the package imports the back ends, never the reverse."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

from pmtud_relay.core import ratelimit as _rl
from pmtud_relay.nflog.capture import DEFAULT_GROUP, DEFAULT_QTHRESH

BACKENDS = ("nft", "iptables")
#: In-kernel rate and burst = this factor times the userspace rate and burst (rounded up).
KERNEL_LIMIT_FACTOR = 2.0
#: Sources tracked by the in-kernel per-source limiter (set size / hashlimit htable-max).
SOURCE_TABLE_SIZE = 65536
#: Seconds a source stays in the per-source table after its last PTB (at least).
SOURCE_TIMEOUT = 10
MAX_RATE = 10000  # iptables limit: "Rate too fast" above 10000/s; limit-burst at most 10000

_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


#: How to get python-iptables, which the iptables backend needs (an optional extra: it compiles a
#: small C wrapper when pip installs it, so a plain install leaves it out; nft needs nothing).
IPTABLES_INSTALL_HINT = "pip install 'pmtud-relay[iptables]', or on Debian/Ubuntu: apt install python3-iptables"


class RulesError(RuntimeError):
    """Installing, removing or reading rules failed; ``str()`` is meant for the operator."""


def missing_library(name: str) -> str | None:
    """Why backend ``name`` cannot be used at all because its Python library is not installed
    (with how to install it), or None. Only iptables has one (python-iptables); a library that
    is installed but fails to load (libiptc missing) is reported when the backend is used."""
    if name != "iptables":
        return None
    try:
        import iptc  # noqa: F401 - python-iptables
    except ImportError as exc:
        return f"the iptables backend needs python-iptables, which is not installed ({exc}); {IPTABLES_INSTALL_HINT}"
    except Exception:  # noqa: BLE001 - OSError from its ctypes loading: reported by available()
        return None
    return None


@dataclass(frozen=True)
class RuleSpec:
    """Everything that shapes the rules. Rates are packets per second, bursts packets."""

    interfaces: tuple[str, ...]
    group: int = DEFAULT_GROUP
    source_rate: int = math.ceil(_rl.DEFAULT_SOURCE_RATE * KERNEL_LIMIT_FACTOR)
    source_burst: int = math.ceil(_rl.DEFAULT_SOURCE_BURST * KERNEL_LIMIT_FACTOR)
    global_rate: int = math.ceil(_rl.DEFAULT_GLOBAL_RATE * KERNEL_LIMIT_FACTOR)
    global_burst: int = math.ceil(_rl.DEFAULT_GLOBAL_BURST * KERNEL_LIMIT_FACTOR)
    qthresh: int = DEFAULT_QTHRESH  # iptables NFLOG --nflog-threshold (nft leaves it to the socket)
    table_size: int = SOURCE_TABLE_SIZE

    def __post_init__(self) -> None:
        if not self.interfaces:
            raise ValueError("at least one interface is needed")
        for name in self.interfaces:
            if not _IFNAME.match(name) or name in (".", ".."):
                raise ValueError(f"not a usable interface name: {name!r}")
        if len(set(self.interfaces)) != len(self.interfaces):
            raise ValueError("interfaces repeat")
        if not 0 <= self.group <= 0xFFFF:
            raise ValueError(f"NFLOG group must be within 0..65535, got {self.group}")
        for what in ("source_rate", "source_burst", "global_rate", "global_burst"):
            value = getattr(self, what)
            if not isinstance(value, int) or not 1 <= value <= MAX_RATE:
                raise ValueError(f"{what} must be an integer within 1..{MAX_RATE}, got {value!r}")
        if not 1 <= self.qthresh <= 0xFFFF:
            raise ValueError("qthresh must be within 1..65535")

    @classmethod
    def from_limits(
        cls,
        interfaces,
        group: int = DEFAULT_GROUP,
        source_rate: float = _rl.DEFAULT_SOURCE_RATE,
        source_burst: float = _rl.DEFAULT_SOURCE_BURST,
        global_rate: float = _rl.DEFAULT_GLOBAL_RATE,
        global_burst: float = _rl.DEFAULT_GLOBAL_BURST,
        factor: float = KERNEL_LIMIT_FACTOR,
    ) -> RuleSpec:
        """The rules for userspace limits ``source_rate`` … : each times ``factor``, rounded up."""

        def k(v: float) -> int:
            return min(MAX_RATE, max(1, math.ceil(v * factor - 1e-9)))

        return cls(
            interfaces=tuple(dict.fromkeys(interfaces)),
            group=group,
            source_rate=k(source_rate),
            source_burst=k(source_burst),
            global_rate=k(global_rate),
            global_burst=k(global_burst),
        )

    @property
    def source_timeout(self) -> int:
        """Seconds a source's bucket is kept: long enough for the bucket to refill."""
        return max(SOURCE_TIMEOUT, math.ceil(2 * self.source_burst / self.source_rate))


#: Keys of :meth:`Backend.counters`.
COUNTER_KEYS = (
    "matched_v4",  # PTBs that matched the interface/type/pkttype test
    "matched_v6",
    "over_source_limit_v4",  # not logged: over the per-source limit
    "over_source_limit_v6",
    "over_global_limit",  # not logged: over the global limit
    "logged",  # sent to the NFLOG group
)


class Backend(Protocol):
    name: str

    def available(self) -> tuple[bool, str]: ...
    def render(self, spec: RuleSpec) -> str: ...
    def install(self, spec: RuleSpec) -> None: ...
    def remove(self) -> bool: ...
    def installed(self) -> str | None: ...
    def counters(self) -> dict[str, int]: ...
