"""python-iptables with libxtables >= 1.8.11 (Debian 13): the option-table walk of
pmtud_relay.rules.iptc_compat, on a synthetic option table laid out the new way, and on the
python-iptables and libxtables of this host."""

from __future__ import annotations

import ctypes as ct

import pytest

from pmtud_relay.rules import iptc_compat


class _OldEntry(ct.Structure):
    """The layout python-iptables declares (libxtables <= 1.8.10)."""

    _fields_ = [("name", ct.c_char_p), ("type", ct.c_int), ("id", ct.c_uint), ("excl", ct.c_uint),
                ("also", ct.c_uint), ("flags", ct.c_uint), ("ptroff", ct.c_uint), ("size", ct.c_size_t),
                ("min", ct.c_uint), ("max", ct.c_uint)]


def _fake_module(entry_t, has_base: bool):
    class Lib:
        pass

    lib = Lib()
    if has_base:
        lib.xtables_strtoul_base = object()

    class xtables:  # noqa: N801 - the name python-iptables uses
        def _option_lookup(self, entries, name):  # python-iptables' walk: the declared stride
            for e in entries:
                if not e.name:
                    break
                if e.name == name:
                    return e
            return None

    class Module:
        pass

    m = Module()
    m._lib_xtables, m.xt_option_entry, m.xtables = lib, entry_t, xtables
    return m


NAMES = [b"hashlimit-upto", b"hashlimit-above", b"hashlimit-burst", b"hashlimit-mode"]


def _new_table():
    """An option table the way libxtables >= 1.8.11 lays it out (with ``base``), NULL-terminated."""
    table = (iptc_compat._EntryWithBase * (len(NAMES) + 1))()
    for i, name in enumerate(NAMES):
        # base 0 (what most options have): read with the old stride, entry 1's name is entry 0's
        # base and padding, a NULL pointer, so the old walk ends there instead of crashing
        table[i].name, table[i].id, table[i].type, table[i].base = name, 100 + i, 10, 0
    return table


def test_the_old_stride_misses_every_option_but_the_first():
    # the failure seen on Debian 13, reproduced on a synthetic table: guards the premise
    table = _new_table()
    mod = _fake_module(_OldEntry, has_base=True)
    entries = ct.cast(table, ct.POINTER(_OldEntry))
    assert mod.xtables()._option_lookup(entries, NAMES[0]).id == 100
    for name in NAMES[1:]:
        assert mod.xtables()._option_lookup(entries, name) is None, name
    assert ct.sizeof(iptc_compat._EntryWithBase) > ct.sizeof(_OldEntry)


def test_adapted_lookup_finds_every_option_at_its_address():
    table = _new_table()
    mod = _fake_module(_OldEntry, has_base=True)
    assert iptc_compat.adapt(mod) == "adapted"
    assert iptc_compat.adapt(mod) == "already"
    entries = ct.cast(table, ct.POINTER(_OldEntry))
    for i, name in enumerate(NAMES):
        e = mod.xtables()._option_lookup(entries, name)
        assert e is not None, name
        assert e.id == 100 + i and ct.addressof(e) == ct.addressof(table[i]), name
    assert mod.xtables()._option_lookup(entries, b"hashlimit-nonexistent") is None


def test_old_libxtables_or_new_python_iptables_is_left_alone():
    old = _fake_module(_OldEntry, has_base=False)
    before = old.xtables._option_lookup
    assert iptc_compat.adapt(old) == "not needed" and old.xtables._option_lookup is before
    knows = _fake_module(iptc_compat._EntryWithBase, has_base=True)
    before = knows.xtables._option_lookup
    assert iptc_compat.adapt(knows) == "already" and knows.xtables._option_lookup is before


def test_this_hosts_python_iptables_parses_every_hashlimit_option():
    """The options the iptables backend sets, parsed by this host's python-iptables and
    libxtables (old layout on Debian 12, new on Debian 13) after the backend loaded it."""
    pytest.importorskip("iptc")
    from pmtud_relay.rules.iptables import IptablesBackend

    iptc = IptablesBackend()._lib()
    expect = "adapted" if iptc_compat.libxtables_has_base(iptc.xtables._lib_xtables) else "not needed"
    stride = getattr(iptc.xtables.xtables._option_lookup, "_pmtud_relay_stride", None)
    assert (stride is not None) == (expect == "adapted"), (expect, stride)
    rule = iptc.Rule()
    match = rule.create_match("hashlimit")
    for key, value in [("hashlimit_above", "10/sec"), ("hashlimit_burst", "20"), ("hashlimit_mode", "srcip"),
                       ("hashlimit_name", "pmtudtest"), ("hashlimit_htable_max", "4096"),
                       ("hashlimit_htable_expire", "60000")]:
        setattr(match, key, value)
    params = match.get_all_parameters()
    assert params["hashlimit-above"] == ["10/sec"] and params["hashlimit-htable-expire"] == ["60000"], params


# --- udata: extension scratch data python-iptables frees too early -----------------------------------------
_EXTS: list = []  # real extension structs are static and never move: keep the fakes' addresses unique


def _fake_ip4tc(udata_size: int):
    """Match/Target classes whose reset does what python-iptables' does with ``udata``."""

    class Ext(ct.Structure):  # the fields of struct xtables_match that matter here
        _fields_ = [("udata_size", ct.c_size_t), ("udata", ct.c_void_p)]

    def reset(self):
        buf = (ct.c_ubyte * self._module.udata_size)()  # local: freed when reset returns
        self._module.udata = ct.cast(ct.byref(buf), ct.c_void_p)

    class Match:
        def __init__(self, module):
            self._module = module
            self.reset()

    Match.reset = reset

    class Target(Match):
        pass

    Target.reset = reset

    class Mod:
        pass

    mod = Mod()
    mod.Match, mod.Target = Match, Target
    _EXTS.append(Ext(udata_size=udata_size))
    return mod, _EXTS[-1]


def test_keep_udata_points_udata_at_a_buffer_that_outlives_the_match():
    mod, ext = _fake_ip4tc(4)
    assert iptc_compat.keep_udata(mod) == "adapted"
    assert iptc_compat.keep_udata(mod) == "already"
    match = mod.Match(ext)
    buf = iptc_compat.udata_buffer(ext)
    assert buf is not None and len(buf) == 4 and ext.udata == ct.addressof(buf)
    ct.c_uint32.from_address(ext.udata).value = 7  # what an extension's parser does
    del match
    assert bytes(buf) == b"\x07\x00\x00\x00"  # still allocated (and still ours)
    mod.Target(ext)  # the next reset clears it, as iptables does per rule
    assert ext.udata == ct.addressof(buf) and bytes(buf) == bytes(4)


def test_keep_udata_leaves_extensions_without_udata_alone():
    mod, ext = _fake_ip4tc(0)
    iptc_compat.keep_udata(mod)
    mod.Match(ext)
    assert iptc_compat.udata_buffer(ext) is None


def test_this_hosts_hashlimit_writes_its_udata_into_a_live_buffer():
    """Unfixed, python-iptables leaves hashlimit's ``udata`` pointing at a freed ctypes array
    and its option parser writes 4 bytes there (valgrind on Debian 11: "Invalid write of
    size 4" in libxt_hashlimit.so; issue #14's crash at exit). After the backend loaded it,
    the parser writes into the buffer kept for the process."""
    pytest.importorskip("iptc")
    from pmtud_relay.rules.iptables import IptablesBackend

    iptc = IptablesBackend()._lib()
    for rule_cls in (iptc.Rule, iptc.Rule6):
        match = rule_cls().create_match("hashlimit")
        module = match._module
        assert module.udata_size > 0  # hashlimit keeps its rate multiplier there
        buf = iptc_compat.udata_buffer(module)
        assert buf is not None and module.udata == ct.addressof(buf)
        assert not any(buf)
        match.hashlimit_above = "7/sec"
        assert any(buf), "the parser wrote nowhere we can see"
