"""Make python-iptables parse match/target options with libxtables 1.8.11 and later.

iptables 1.8.11 added a member to ``struct xt_option_entry`` (``unsigned int base``, the
number base of integer options) without changing the library's soname (still
``libxtables.so.12``). python-iptables (1.0.1 in Debian 13, 1.2.0 on PyPI) still declares the
old layout, so when it looks an option up by name it walks each extension's option table with
the old, shorter stride: only the first option of a table is found, every later one is
"no such parameter" (``hashlimit: no such parameter hashlimit-above``) or, worse, read from a
misaligned address. python-iptables walks these tables in exactly one place,
``xtables._option_lookup``; the C side (the extension's own parser) reads the entry it is
handed with the right layout. So replacing that one method with a walk of the right stride
is the whole fix; the entry it returns starts at the right address.

The new layout is recognised by the symbol that came with it in the same patch series:
``xtables_strtoul_base``, which the option parser of such a libxtables calls with
``entry->base``. A python-iptables that already declares the new layout is left alone.
"""

from __future__ import annotations

import ctypes as ct
from typing import Any


class _EntryWithBase(ct.Structure):
    """``struct xt_option_entry`` as libxtables >= 1.8.11 lays it out."""

    _fields_ = [
        ("name", ct.c_char_p),
        ("type", ct.c_int),
        ("id", ct.c_uint),
        ("excl", ct.c_uint),
        ("also", ct.c_uint),
        ("flags", ct.c_uint),
        ("ptroff", ct.c_uint),
        ("size", ct.c_size_t),
        ("min", ct.c_uint),
        ("max", ct.c_uint),
        ("base", ct.c_uint),
    ]


def libxtables_has_base(lib: Any) -> bool:
    """True if the loaded libxtables lays out option entries with the ``base`` member."""
    return hasattr(lib, "xtables_strtoul_base")


def adapt(xtables_module: Any) -> str:
    """Adapt python-iptables' ``iptc.xtables`` module to the loaded libxtables. Returns what
    was done: ``"not needed"`` (old libxtables), ``"already"`` (python-iptables knows the new
    layout, or was adapted before) or ``"adapted"``. Raises ``AttributeError`` if this
    python-iptables lacks the pieces the fix needs (its internals changed)."""
    lib = xtables_module._lib_xtables
    entry_t = xtables_module.xt_option_entry
    xt_class = xtables_module.xtables
    if not libxtables_has_base(lib):
        return "not needed"
    if getattr(xt_class._option_lookup, "_pmtud_relay_stride", None) is not None:
        return "already"
    stride = ct.sizeof(_EntryWithBase)
    if ct.sizeof(entry_t) >= stride:
        return "already"

    def _option_lookup(self: Any, entries: Any, name: bytes) -> Any:
        addr = ct.cast(entries, ct.c_void_p).value
        if not addr:
            return None
        while True:
            entry = entry_t.from_address(addr)
            if not entry.name:
                return None
            if entry.name == name:
                return entry
            addr += stride

    _option_lookup._pmtud_relay_stride = stride  # type: ignore[attr-defined]
    xt_class._option_lookup = _option_lookup
    return "adapted"
