"""Adapt python-iptables to the libxtables it runs with: two fixes, applied once at load.

1. Option tables of libxtables 1.8.11 and later (:func:`adapt`).
2. Extension scratch data freed while libxtables still writes to it (:func:`keep_udata`).

Option tables (1.8.11 and later)
--------------------------------

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

Extension scratch data (every libxtables with ``udata``)
--------------------------------------------------------
Some extensions keep state between the parsing of their options in a buffer the caller
provides, ``udata`` (``udata_size`` bytes; hashlimit stores the unit multiplier of
``--hashlimit-above`` there, written and read back by its option parser).
python-iptables (1.2.0 measured, on Debian 11, 12 and 13) allocates that buffer as a ctypes
array local to ``Match.reset``/``Target.reset`` and stores only its address in the
extension's global struct: the array is freed when ``reset`` returns, and every later option
of that extension is parsed with libxtables writing 4 bytes into freed memory that CPython
has handed to another object. Measured with valgrind on Debian 11 (Python 3.9.2, iptables
1.8.7): "Invalid write of size 4" in libxt_hashlimit.so into "a block of size 128 free'd" that
``_ctypes`` had allocated, in every ``rules install`` and ``rules remove`` (the ABI probe sets
``hashlimit_above`` too). Which object gets the stray write depends on allocation order, so
the damage is intermittent: on Debian 11 it showed as a SIGSEGV at interpreter shutdown after
"Exception ignored deletion of interned string failed: KeyError" (issue #14).
:func:`keep_udata` makes ``reset`` point ``udata`` at a zeroed buffer that lives as long as
the process, one per extension struct, zeroed at each reset: what iptables itself does
(``xs_init_match`` gives each extension one fresh, zeroed ``udata`` per use).
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


#: udata buffers by address of the extension struct; never freed (libxtables keeps the pointer).
_UDATA: dict[int, Any] = {}


def _udata_for(module: Any) -> None:
    """Point ``module.udata`` at this process's zeroed buffer for that extension struct."""
    size = getattr(module, "udata_size", 0)
    if size <= 0:
        return
    key = ct.addressof(module)
    buf = _UDATA.get(key)
    if buf is None or len(buf) < size:
        buf = _UDATA[key] = (ct.c_ubyte * size)()
    else:
        ct.memset(buf, 0, len(buf))
    module.udata = ct.addressof(buf)


def udata_buffer(module: Any) -> Any:
    """The buffer :func:`keep_udata` gave extension struct ``module``, or None."""
    return _UDATA.get(ct.addressof(module))


def keep_udata(ip4tc_module: Any) -> str:
    """Make python-iptables' ``Match.reset`` and ``Target.reset`` (module ``iptc.ip4tc``; ip6tc
    uses the same classes) leave ``udata`` pointing at memory that stays allocated. Returns
    ``"adapted"`` or ``"already"``. Raises ``AttributeError`` if the classes lack ``reset``."""
    done = "already"
    for cls in (ip4tc_module.Match, ip4tc_module.Target):
        original = cls.reset
        if getattr(original, "_pmtud_relay_udata", False):
            continue

        def reset(self: Any, _original: Any = original) -> None:
            _original(self)  # sets udata to a ctypes array that is freed when it returns ...
            _udata_for(self._module)  # ... so replace it before anything parses an option

        reset._pmtud_relay_udata = True  # type: ignore[attr-defined]
        cls.reset = reset
        done = "adapted"
    return done
