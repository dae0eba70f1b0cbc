"""Drop every capability the daemon no longer needs once its sockets are open.

After set-up the daemon keeps:

- ``CAP_NET_RAW``: to open capture and emit sockets again when an interface is re-created
  (linkwatch), and for interfaces added by a reload (SIGHUP);
- ``CAP_NET_ADMIN`` only with ``--capture nflog`` or ``--manage-rules``: the firewall rules are
  removed at exit (nft as a child process, or python-iptables in process).

Everything else goes from the bounding set first (``PR_CAPBSET_DROP`` needs ``CAP_SETPCAP``,
which is itself dropped last), then from the effective, permitted and inheritable sets with one
``capset(2)`` (the ambient set follows: the kernel keeps only what is both permitted and
inheritable). ctypes and libc only, no new dependency. A process that lacks ``CAP_SETPCAP``
(systemd's unprivileged user with ambient capabilities) cannot touch its bounding set; it still
narrows the other sets, and says so in the returned :class:`Dropped`.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from typing import NamedTuple

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SETPCAP = 8

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW", CAP_SETPCAP: "CAP_SETPCAP",
         CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE"}


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


class CapSets(NamedTuple):
    effective: int
    permitted: int
    inheritable: int


class Dropped(NamedTuple):
    kept: int  # the mask asked to keep, as far as the process held it
    bounding_dropped: bool  # False: no CAP_SETPCAP, the bounding set is as it was
    before: CapSets
    after: CapSets


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def mask(caps: Iterable[int]) -> int:
    m = 0
    for c in caps:
        m |= 1 << c
    return m


def needed(capture: str, manage_rules: bool) -> int:
    """The capability mask the running daemon still needs."""
    keep = {CAP_NET_RAW}
    if capture == "nflog" or manage_rules:
        keep.add(CAP_NET_ADMIN)
    return mask(keep)


def get() -> CapSets:
    head = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc.capget(ctypes.byref(head), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    join = lambda field: getattr(data[0], field) | getattr(data[1], field) << 32  # noqa: E731
    return CapSets(join("effective"), join("permitted"), join("inheritable"))


def _set(sets: CapSets) -> None:
    head = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (sets.effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (sets.permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (sets.inheritable >> shift) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(head), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def bounding() -> int:
    m = 0
    for cap in range(last_cap() + 1):
        if _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            m |= 1 << cap
    return m


def drop_to(keep: int) -> Dropped:
    """Keep only ``keep`` (a mask) in every set; raise OSError only if capset itself fails."""
    before = get()
    kept = keep & before.permitted
    dropped_bounding = bool(before.effective & (1 << CAP_SETPCAP))
    if dropped_bounding:
        for cap in range(last_cap() + 1):
            if keep & (1 << cap):
                continue
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                err = ctypes.get_errno()
                if err == errno.EINVAL:  # beyond what this kernel knows
                    continue
                raise OSError(err, f"PR_CAPBSET_DROP {cap}: {os.strerror(err)}")
    # Never add: the inheritable set only shrinks (root's is normally empty; a child such as
    # nft still gets the kept capabilities through root's bounding set, an unprivileged user's
    # through the ambient set, which the kernel trims to permitted ∩ inheritable).
    _set(CapSets(kept, kept, kept & before.inheritable))
    return Dropped(kept, dropped_bounding, before, get())


def describe(m: int) -> str:
    names = [NAMES.get(c, f"cap{c}") for c in range(64) if m >> c & 1]
    return ",".join(names) or "none"


def drop_after_setup(capture: str, manage_rules: bool, log) -> Dropped | None:
    """The daemon's call once every socket is open: drop, log what is left, never raise."""
    keep = needed(capture, manage_rules)
    try:
        result = drop_to(keep)
    except OSError as exc:
        log.error("privileges_not_dropped", extra={"kv": {"error": exc.strerror or str(exc)}})
        return None
    log.info("privileges_dropped", extra={"kv": {
        "kept": describe(result.after.effective),
        "bounding": describe(bounding()) if result.bounding_dropped else "unchanged (no CAP_SETPCAP)",
    }})
    return result
