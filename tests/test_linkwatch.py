"""linkwatch: the rtnetlink link-event parser (total on hostile bytes) and privileges.needed()."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pmtud_relay import privileges as P
from pmtud_relay.netlink import linkwatch as L


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def link_msg(kind: int, index: int, flags: int, name: bytes | None, extra: bytes = b"") -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0xFFFFFFFF)
    if name is not None:
        body += attr(L.IFLA_IFNAME, name + b"\0")
    body += extra
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_new_and_deleted_links():
    data = (link_msg(L.RTM_NEWLINK, 3, 0x1003, b"eth0", attr(4, b"\0\0\x05\xdc"))
            + link_msg(L.RTM_NEWLINK, 3, 0x1002, b"eth0")
            + link_msg(L.RTM_DELLINK, 4, 0, b"v1"))
    assert L.parse_link_messages(data) == [
        L.LinkEvent(False, 3, "eth0", True),
        L.LinkEvent(False, 3, "eth0", False),
        L.LinkEvent(True, 4, "v1", False),
    ]


def test_other_messages_and_odd_names_are_skipped_or_nameless():
    route = struct.pack("=IHHII", 28, 24, 0, 0, 0) + b"\0" * 12  # RTM_NEWROUTE
    too_long = link_msg(L.RTM_NEWLINK, 5, 1, b"x" * 16)
    not_ascii = link_msg(L.RTM_NEWLINK, 6, 1, "é".encode())
    nameless = link_msg(L.RTM_NEWLINK, 7, 1, None)
    events = L.parse_link_messages(route + too_long + not_ascii + nameless)
    assert events == [L.LinkEvent(False, 5, None, True), L.LinkEvent(False, 6, None, True),
                      L.LinkEvent(False, 7, None, True)]


def test_a_bad_length_stops_the_walk_but_keeps_what_came_before():
    good = link_msg(L.RTM_NEWLINK, 3, 1, b"eth0")
    bad = struct.pack("=IHHII", 9999, L.RTM_NEWLINK, 0, 0, 0)
    assert L.parse_link_messages(good + bad + good) == [L.LinkEvent(False, 3, "eth0", True)]
    assert L.parse_link_messages(good[:-1]) == []


@settings(max_examples=2000, deadline=None, database=None)
@given(st.binary(max_size=600))
def test_parser_is_total_on_arbitrary_bytes(data):
    for ev in L.parse_link_messages(data):
        assert ev.name is None or (0 < len(ev.name) < 16 and ev.name.isascii())


@settings(max_examples=2000, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 3))
def test_parser_is_total_on_mutated_messages(flips, cut):
    data = bytearray(link_msg(L.RTM_NEWLINK, 3, 1, b"eth0", attr(4, b"\0\0\x05\xdc"))
                     + link_msg(L.RTM_DELLINK, 4, 0, b"v1"))
    for at, value in flips:
        if at < len(data):
            data[at] = value
    L.parse_link_messages(bytes(data[: len(data) - cut * 7]))


def test_link_state_of_loopback_and_of_nothing():
    index, up = L.link_state("lo")
    assert index >= 1 and up
    assert L.link_state("pmr-no-such0") is None
    assert L.link_state("") is None and L.link_state("x" * 16) is None


def test_capabilities_kept_after_setup():
    assert P.needed("afpacket", False) == 1 << P.CAP_NET_RAW
    assert P.needed("nflog", False) == 1 << P.CAP_NET_RAW | 1 << P.CAP_NET_ADMIN
    assert P.needed("afpacket", True) == 1 << P.CAP_NET_RAW | 1 << P.CAP_NET_ADMIN
    assert P.describe(P.needed("nflog", True)) == "CAP_NET_ADMIN,CAP_NET_RAW"


# --- the interface lifecycle's reactions, with a fake watcher and fake captures (no kernel) --------
import asyncio  # noqa: E402
import errno  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from pmtud_relay import logs, metrics  # noqa: E402
from pmtud_relay.core.relay import RelayConfig  # noqa: E402
from pmtud_relay.daemon import DaemonSettings, Interfaces, RelayDaemon  # noqa: E402
from pmtud_relay.daemon.capture_modes import AfpacketMode  # noqa: E402
from pmtud_relay.daemon.faults import Faults  # noqa: E402


class _Capture:
    """A Capture (pmtud_relay/capture/base.py) that never has a frame."""

    holds_sources = True

    def __init__(self, ifname, ifindex):
        self.sock, self._peer = socket.socketpair()
        self.ifname = ifname
        self.ifindex = ifindex
        self.mac = b"\0" * 6
        self.closed = False

    def fileno(self):
        return self.sock.fileno()

    def drain(self, limit=256):
        return []

    def pending_error(self):
        return 0

    def counters(self):
        return {}

    def set_blocked(self, sources):
        pass

    def close(self):
        self.closed = True
        self.sock.close()
        self._peer.close()


class _Links:
    def __init__(self):
        self.events, self.overrun, self.links = [], False, {"eth0": (7, True)}
        self.addresses_changed = False
        self.sock, self._peer = socket.socketpair()  # never readable: the test calls on_link_events()

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        events, self.events = self.events, []
        overrun, self.overrun = self.overrun, False
        return events, overrun

    def state(self, name):
        return self.links.get(name)

    def close(self):
        self.sock.close()
        self._peer.close()


class _Mode(AfpacketMode):
    """The AF_PACKET mode (a reader per port), opening fake captures of the interfaces _Links has."""

    def __init__(self, stats, links):
        super().__init__(stats)
        self.links = links

    def open(self, ifname):
        state = self.links.links.get(ifname)
        if state is None:
            raise OSError(errno.ENODEV, "No such device")
        return _Capture(ifname, state[0])


def _interfaces(emitter=None):
    stats = metrics.Stats(("eth0",))
    links = _Links()
    faults = Faults(stats, logs.get(), time.monotonic)
    ifs = Interfaces(_Mode(stats, links), stats.waiting, faults, logs.get(), emitter=emitter, links=links)
    ifs.open_or_wait("eth0")
    return ifs


def test_down_up_delete_rename_and_lost_events():
    async def scenario():
        d = _interfaces()
        loop = asyncio.get_running_loop()
        d.start(loop, lambda port: None)
        first = d.ports[0]
        # down: let go
        d.links.links["eth0"] = (7, False)
        d.links.events = [L.LinkEvent(False, 7, "eth0", False)]
        d.on_link_events()
        assert d.ports == [] and d.waiting == {"eth0"} and first.capture.closed
        # up: bound again
        d.links.links["eth0"] = (7, True)
        d.links.events = [L.LinkEvent(False, 7, "eth0", True)]
        d.on_link_events()
        assert [p.ifname for p in d.ports] == ["eth0"] and not d.waiting
        # renamed away (and up again under the other name): let go, not followed
        d.links.links = {"other": (7, True)}
        d.links.events = [L.LinkEvent(False, 7, "other", True)]
        d.on_link_events()
        assert d.ports == [] and d.waiting == {"eth0"}
        # a new interface takes the name
        d.links.links["eth0"] = (9, True)
        d.links.events = [L.LinkEvent(False, 9, "eth0", True)]
        d.on_link_events()
        assert d.ports[0].capture.ifindex == 9
        # events lost: every port is opened afresh
        before = d.ports[0]
        d.links.overrun = True
        d.on_link_events()
        assert before.capture.closed and len(d.ports) == 1 and d.ports[0] is not before
        # a deleted interface of another name changes nothing
        d.links.events = [L.LinkEvent(True, 3, "eth9", False)]
        d.on_link_events()
        assert len(d.ports) == 1 and d.faults.internal_errors == 0
        d.stop()
        d.close()

    asyncio.run(scenario())


def test_a_frameless_wake_up_with_a_socket_error_rebinds_the_port():
    """ENETDOWN on the capture (the interface went down and maybe up again before the link event
    is read): the port is let go of and bound afresh if the name is up, else waited for. A wake-up
    with no error changes nothing."""
    async def scenario():
        d = _interfaces()
        d.start(asyncio.get_running_loop(), lambda port: None)
        first = d.ports[0]
        d.idle_wakeup(first)  # no error pending: a spurious wake-up
        assert d.ports == [first] and not first.capture.closed
        first.capture.pending_error = lambda: errno.ENETDOWN
        d.idle_wakeup(first)  # the name is up again: bound afresh
        assert first.capture.closed and len(d.ports) == 1 and d.ports[0] is not first and not d.waiting
        second = d.ports[0]
        d.links.links["eth0"] = (7, False)
        second.capture.pending_error = lambda: errno.ENETDOWN
        d.idle_wakeup(second)  # still down: waited for
        assert second.capture.closed and d.ports == [] and d.waiting == {"eth0"}
        assert d.faults.internal_errors == 0
        d.stop()
        d.close()

    asyncio.run(scenario())


class _Emitter:
    def __init__(self):
        self.refreshed = 0

    def refresh_mtu(self):
        self.refreshed += 1

    def close(self):
        pass


def test_a_link_event_of_a_bound_interface_rereads_its_mtu():
    """An MTU change arrives as an RTM_NEWLINK like any other: the port's emitter re-reads the
    MTU (emit/l2.py refuses copies longer than the interface takes), other ports are left alone."""
    d = _interfaces(emitter=lambda ifname: _Emitter())
    port = d.ports[0]
    d.links.events = [L.LinkEvent(False, 7, "eth0", True), L.LinkEvent(False, 8, "eth1", True)]
    d.on_link_events()
    assert d.ports == [port] and port.emitter.refreshed == 1 and d.faults.internal_errors == 0
    d.close()


def test_a_waited_for_interface_is_warned_about_periodically():
    """A typo in interfaces must stay visible: one interfaces_waiting warning per interval while
    any configured interface is absent or down (every minute in the daemon), none once bound."""
    import logging

    from pmtud_relay import logs

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logs.get().addHandler(handler)
    try:
        async def scenario():
            d = RelayDaemon(DaemonSettings(interfaces=("eth9",), relay=RelayConfig(), discover_vips=False))
            d.interfaces.waiting.add("eth9")
            stop = asyncio.Event()  # what serve() makes and stop() sets
            task = asyncio.ensure_future(d.interfaces.waiting_loop(stop, d.clock, interval=0.05))
            await asyncio.sleep(0.23)
            warned = [r for r in records if r.getMessage() == "interfaces_waiting"]
            d.interfaces.waiting.clear()
            await asyncio.sleep(0.15)
            stop.set()
            await asyncio.wait_for(task, 1)
            return warned, [r for r in records if r.getMessage() == "interfaces_waiting"]

        warned, after = asyncio.run(scenario())
    finally:
        logs.get().removeHandler(handler)
    assert 3 <= len(warned) <= 5, len(warned)
    assert all(r.kv["interfaces"] == "eth9" for r in warned)
    assert all(isinstance(r.kv["seconds"], int) and "hint" in r.kv for r in warned)
    assert len(after) == len(warned)  # bound (nothing waited for): no more warnings
