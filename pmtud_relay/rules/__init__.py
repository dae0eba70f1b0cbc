"""Firewall rules for NFLOG capture: send PTBs to the NFLOG group, behind in-kernel limits.

Two backends build the same rule set from one :class:`RuleSpec`:

- :mod:`pmtud_relay.rules.nft`: one table ``inet pmtud_relay`` loaded through ``nft -j``;
- :mod:`pmtud_relay.rules.iptables`: chains ``PMTUD_RELAY`` and ``PMTUD_RELAY_LOG`` in the
  ``raw`` tables of iptables and ip6tables, through python-iptables (legacy x_tables).

Both match, per configured interface, ICMPv4 3/4 and ICMPv6 2/0 that arrived as
``pkttype host`` at the raw/prerouting stage, pass them through a per-source limit and
a global limit, and log what is left to the NFLOG group. Packets over a limit are only
*not logged*: they go on to the host's own stack untouched (the relay's rules never
change what the host itself receives).

The in-kernel limits are derived from the userspace limits (the same options):
:data:`KERNEL_LIMIT_FACTOR` times the rate and the burst, rounded up. Userspace therefore
still sees, and counts, everything its own limiter drops, while a flood is cut off in
the kernel before it costs a wake-up.
"""

from __future__ import annotations

from pmtud_relay.rules.spec import (  # noqa: F401  # the package's public names
    BACKENDS,
    COUNTER_KEYS,
    IPTABLES_INSTALL_HINT,
    KERNEL_LIMIT_FACTOR,
    MAX_RATE,
    SOURCE_TABLE_SIZE,
    SOURCE_TIMEOUT,
    Backend,
    RulesError,
    RuleSpec,
    missing_library,
)


def get_backend(name: str) -> Backend:
    """``nft`` or ``iptables`` (no detection; see :func:`detect`)."""
    if name == "nft":
        from pmtud_relay.rules.nft import NftBackend

        return NftBackend()
    if name == "iptables":
        from pmtud_relay.rules.iptables import IptablesBackend

        return IptablesBackend()
    raise ValueError(f"unknown rules backend {name!r} (use {', '.join(BACKENDS)})")


def detect() -> Backend:
    """nft when the binary is there and the kernel answers ``nft list tables``; else iptables."""
    nft = get_backend("nft")
    ok, why_nft = nft.available()
    if ok:
        return nft
    ipt = get_backend("iptables")
    ok, why_ipt = ipt.available()
    if ok:
        return ipt
    raise RulesError(f"no firewall backend works here: nft: {why_nft}; iptables: {why_ipt}")


def resolve(name: str) -> Backend:
    """``auto`` → :func:`detect`; ``nft``/``iptables`` → that backend, checked to be usable."""
    from pmtud_relay.nflog.capture import has_net_admin

    if not has_net_admin():
        raise RulesError("managing firewall rules needs CAP_NET_ADMIN (run as root)")
    if name == "auto":
        return detect()
    backend = get_backend(name)
    ok, why = backend.available()
    if not ok:
        raise RulesError(f"the {name} backend cannot be used: {why}")
    return backend


def others(backend: Backend) -> list[Backend]:
    """The other backends that are usable here (to clear stale rules a previous run left)."""
    out = []
    for name in BACKENDS:
        if name != backend.name:
            try:
                other = get_backend(name)
                if other.available()[0]:
                    out.append(other)
            except Exception:  # noqa: BLE001 - an unusable backend has no rules to clear
                pass
    return out


class RuleManager:
    """``run --manage-rules``: install at start (replacing stale rules), remove at stop."""

    def __init__(self, backend: Backend, spec: RuleSpec):
        self.backend = backend
        self.spec = spec
        self.installed = False

    def install(self) -> None:
        # A previous run under the other backend (or a crash) may have left rules that
        # would log every PTB twice: clear them, best effort.
        for other in others(self.backend):
            try:
                other.remove()
            except Exception:  # noqa: BLE001
                pass
        self.backend.install(self.spec)
        self.installed = True

    def remove(self) -> None:
        if self.installed:
            self.installed = False
            self.backend.remove()
