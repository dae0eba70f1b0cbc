"""NFLOG capture: an nfnetlink_log client on the stdlib socket module.

One netlink socket (AF_NETLINK / NETLINK_NETFILTER) is bound to one NFLOG group; the
firewall rules (:mod:`pmtud_relay.rules`) send PTBs arriving on the configured
interfaces to that group. Each logged packet is rebuilt into the Ethernet frame the
core expects (:func:`pmtud_relay.nflog.wire.rebuild_frame`) and queued for the
interface it came in on; packets from other interfaces are counted and dropped.

The daemon gets one :class:`NflogPort` per configured interface, with the same
``fileno()/drain()/close()/mac`` shape as :class:`~pmtud_relay.capture.afpacket.PacketCapture`.
All ports share the socket: ``drain()`` on any of them reads everything queued in the
kernel and sorts it into the ports' queues. Ports come and go with their interfaces
(``add_port``/``add_interface``, ``remove_port``: the daemon follows link events) while the
socket, the group and the rules stay.

Delivery tuning (measured on Linux 6.18, see docs/nflog-and-rules.md): the kernel
flushes a group's queue when it holds QTHRESH packets, when its buffer (NLBUFSIZ) is
full, or when the flush timer (TIMEOUT, in 1/100 s) expires; TIMEOUT 0 fires on the
next timer tick, so a lone PTB is delivered within a few milliseconds while a burst
is batched into few datagrams. With a ``tuner`` (the daemon always passes one) QTHRESH
starts at 1, so a lone PTB is delivered at once, and rises to a batch size only while
PTBs are frequent or the reader lags (:mod:`pmtud_relay.nflog.batching`). Sequence
numbers are on, so packets the kernel could not deliver show up as gaps (``lost``); a
receive-buffer overrun is reported by recv() as ENOBUFS, which is counted (``overruns``)
and capture carries on.

About 430 lines, one module on purpose: the demultiplexer, the socket and the per-interface
ports are three views of one socket's state (its queues, sequence numbers and counters).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Iterable

from pmtud_relay.core.policy import PACKET_HOST
from pmtud_relay.nflog import wire as w
from pmtud_relay.nflog.batching import BatchTuner
from pmtud_relay.nflog.fastpath import PacketParser

DEFAULT_GROUP = 2105
DEFAULT_TIMEOUT = 0  # 1/100 s; 0 = flush on the next timer tick (<= 1/HZ)
DEFAULT_QTHRESH = 100  # packets per batch at most (the kernel's default)
DEFAULT_NLBUFSIZ = 131072  # the kernel's maximum
DEFAULT_RCVBUF = 4 << 20
RECV_BUFFER = 1 << 18  # larger than NLBUFSIZ plus one maximal packet message
MAX_QUEUE = 4096  # per-port queue bound (the in-kernel limits keep it far below this)

SIOCGIFHWADDR = 0x8927
SO_RCVBUFFORCE = 33


class NflogError(OSError):
    """Opening or configuring the NFLOG group failed; ``.strerror`` is one sentence for the operator."""


class NflogPermissionError(NflogError, PermissionError):
    """The process lacks CAP_NET_ADMIN (nfnetlink refuses every configuration request)."""


def ifname_index(ifname: str) -> int:
    """socket.if_nametoindex, with ENODEV for an unknown name (it raises an OSError without an
    errno, which the daemon could not tell from other failures)."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError as exc:
        if exc.errno is None:
            raise OSError(errno.ENODEV, f"{ifname}: no such interface") from None
        raise


def interface_mac(ifname: str) -> bytes:
    """The hardware address of ``ifname`` (SIOCGIFHWADDR), 6 bytes for Ethernet."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16s16x", ifname.encode()[:15])
        res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
    return bytes(res[18:24])


CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set (from /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


class NflogDemux:
    """The socket-free half: sort parsed packets into per-interface queues, keep the counts.

    ``ports`` maps ifindex → :class:`NflogPort`. Separate from :class:`NflogCapture` so
    the sorting, frame rebuilding and loss accounting are testable without a kernel.
    """

    def __init__(self, group: int, ports: Iterable[tuple[str, int, bytes]] = ()):
        self.group = group
        self.ports: dict[int, NflogPort] = {}
        for ifname, ifindex, mac in ports:
            self.ports[ifindex] = NflogPort(self, ifname, ifindex, mac)
        self.received = 0  # packets parsed
        self.datagrams = 0  # recv() calls that returned data
        self.overruns = 0  # ENOBUFS from recv(): the socket buffer overflowed
        self.lost = 0  # packets missing from the sequence: the kernel could not deliver them
        self.queue_overflow = 0  # packets dropped because a port's queue held MAX_QUEUE
        self.config_errors = 0  # configuration requests the kernel refused (or that could not be sent)
        self.drops: Counter[w.NflogDrop] = Counter()
        self._next_seq: int | None = None
        # The socket's messages share one attribute layout (per rule): parse them by it.
        self.parser = PacketParser()
        self.closed = False

    def port(self, ifname: str) -> NflogPort:
        for p in self.ports.values():
            if p.ifname == ifname:
                return p
        raise KeyError(ifname)

    def add_port(self, ifname: str, ifindex: int, mac: bytes) -> NflogPort:
        """Register (or replace) the port for ``ifname`` at ``ifindex``: an interface that came
        back (re-created: a new ifindex, maybe a new MAC). A port that carried the same name
        at another ifindex is removed first, so its old ifindex is no longer accepted."""
        for old in [p for p in self.ports.values() if p.ifname == ifname or p.ifindex == ifindex]:
            self.remove_port(old)
        port = NflogPort(self, ifname, ifindex, mac)
        self.ports[ifindex] = port
        return port

    def remove_port(self, port: NflogPort) -> None:
        """Stop accepting packets from ``port``'s ifindex (they count as foreign from now on);
        what was queued for it is discarded. Idempotent."""
        if self.ports.get(port.ifindex) is port:
            del self.ports[port.ifindex]
        port.queue.clear()

    def pump(self, max_packets: int = 256) -> int:
        return 0

    def feed(self, data: bytes) -> int:
        """Sort one datagram's packets into the ports' queues; return how many it held."""
        batch = self.parser.parse_datagram(data)
        for _seq, err in batch.acks:  # answers to configuration requests sent without waiting
            if err:
                self.config_errors += 1
        if batch.malformed:
            self.drops[w.NflogDrop.MALFORMED] += batch.malformed
        if batch.overrun:
            self.overruns += 1
        packets = batch.packets
        self.received += len(packets)
        ports = self.ports
        rebuild_frame = w.rebuild_frame
        expected = self._next_seq  # kept in a local for the batch, stored once at the end
        for pkt in packets:
            seq = pkt.seq
            if seq >= 0:
                if seq != expected and expected is not None:
                    gap = (seq - expected) & 0xFFFFFFFF
                    if gap < 0x80000000:  # a step backwards is a restart, not a loss
                        self.lost += gap
                expected = (seq + 1) & 0xFFFFFFFF
            port = ports.get(pkt.indev)
            if port is None:
                self.drops[w.NflogDrop.FOREIGN_INTERFACE] += 1
                continue
            frame = rebuild_frame(pkt, port.mac)
            if frame.__class__ is w.NflogDrop:  # the cheapest test; mypy does not narrow on it
                self.drops[frame] += 1  # type: ignore[index]  # an NflogDrop (checked just above)
                continue
            queue = port.queue
            if len(queue) >= MAX_QUEUE:
                self.queue_overflow += 1
                continue
            queue.append((frame, PACKET_HOST))  # type: ignore[arg-type]  # bytes: drops left above
        self._next_seq = expected
        return len(packets)

    def stats(self) -> dict[str, int]:
        out = {
            "nflog_received": self.received,
            "nflog_overruns": self.overruns,
            "nflog_lost": self.lost,
        }
        if self.queue_overflow:
            out["nflog_queue_overflow"] = self.queue_overflow
        if self.config_errors:
            out["nflog_config_errors"] = self.config_errors
        out.update({str(k): v for k, v in self.drops.items()})
        return out


class NflogCapture(NflogDemux):
    """A non-blocking NFLOG group subscription for a set of interfaces."""

    def __init__(
        self,
        group: int,
        interfaces: Iterable[str],
        *,
        rcvbuf: int = DEFAULT_RCVBUF,
        timeout: int = DEFAULT_TIMEOUT,
        qthresh: int = DEFAULT_QTHRESH,
        nlbufsiz: int = DEFAULT_NLBUFSIZ,
        copy_range: int = w.COPY_RANGE_MAX,
        no_enobufs: bool = False,
        tuner: BatchTuner | None = None,
    ):
        """``tuner``: adapt QTHRESH to the load (core/nflog_batching.py): start at 1 (every PTB
        delivered at once) and batch up to ``tuner.batch`` only while PTBs are frequent or the
        reader lags; then ``qthresh`` is ignored."""
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"NFLOG group must be within 0..65535, got {group}")
        ports = []
        for ifname in dict.fromkeys(interfaces):
            ifindex = ifname_index(ifname)  # OSError ENODEV for unknown names
            ports.append((ifname, ifindex, interface_mac(ifname)))
        super().__init__(group, ports)
        self.tuner = tuner
        if tuner is not None:
            qthresh = tuner.qthresh
        self._req_seq = 0
        self._buf = bytearray(RECV_BUFFER)
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, w.NETLINK_NETFILTER)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if no_enobufs:
                sock.setsockopt(w.SOL_NETLINK, w.NETLINK_NO_ENOBUFS, 1)
            sock.bind((0, 0))
            sock.settimeout(2.0)
            self.sock = sock
            self._configure(timeout, qthresh, nlbufsiz, copy_range)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise

    # -- configuration ----------------------------------------------------------------------
    def _request(self, attrs: bytes, family: int = 0) -> int:
        """Send one config request and wait for its ack; return the errno (0 = success)."""
        self._req_seq += 1
        seq = self._req_seq
        self.sock.send(w.config_message(self.group, attrs, seq, family))
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise NflogError(errno.ETIMEDOUT, "the kernel did not answer an NFLOG configuration request") from None
            batch = w.parse_datagram(data)
            if batch.packets and self.ports:  # logged while configuring: keep them
                self.feed(data)
            for req_seq, err in batch.acks:
                if req_seq == seq:
                    return err

    @staticmethod
    def _pf_bind_wanted(family: int) -> bool:
        """PF_BIND only where no logger is bound for ``family`` in this network namespace.

        PF_BIND makes nfnetlink_log the namespace's *default* logger for the family, the
        one used by log calls that name no logger (conntrack's invalid-packet logging,
        for instance). Packets logged by ``log group``/NFLOG reach the group whatever the
        default is (measured on 6.18), so PF_BIND only matters to old kernels, which
        refused to rebind a bound family (EEXIST). Modern kernels silently replace the
        default (a fresh namespace has nf_log_ipv4/nf_log_ipv6, i.e. syslog), and that
        outlives the process, so a bound family is left alone, and PF_UNBIND is never sent.
        """
        try:
            with open(f"/proc/sys/net/netfilter/nf_log/{family}") as f:
                return f.read().strip() in ("NONE", "")
        except OSError:
            return True  # no way to tell (old kernel, /proc not mounted): do as libnetfilter_log does

    def _configure(self, timeout: int, qthresh: int, nlbufsiz: int, copy_range: int) -> None:
        for family in (socket.AF_INET, socket.AF_INET6):
            if not self._pf_bind_wanted(family):
                continue
            err = self._request(w.cmd_attr(w.NFULNL_CFG_CMD_PF_BIND), family)
            if err == errno.EPERM:  # every nfnetlink request needs CAP_NET_ADMIN
                raise NflogPermissionError(errno.EPERM, "configuring NFLOG needs CAP_NET_ADMIN")
            if err not in (0, errno.EEXIST, errno.EBUSY):
                raise NflogError(err, f"cannot bind nfnetlink_log to address family {family}: {os.strerror(err)}")
        err = self._request(w.cmd_attr(w.NFULNL_CFG_CMD_BIND))
        if err == errno.EPERM and not has_net_admin():
            raise NflogPermissionError(errno.EPERM, "configuring NFLOG needs CAP_NET_ADMIN")
        # The kernel answers EPERM when another socket owns the group, EBUSY when this one does.
        if err in (errno.EBUSY, errno.EPERM):
            raise NflogError(
                err,
                f"NFLOG group {self.group} is already bound by another process "
                f"(another pmtud-relay, ulogd or a capture tool); stop it or pick another group with --nflog-group",
            )
        if err:
            raise NflogError(err, f"cannot bind NFLOG group {self.group}: {os.strerror(err)}")
        settings = (
            ("copy mode", w.mode_attr(min(copy_range, w.COPY_RANGE_MAX), w.NFULNL_COPY_PACKET)),
            ("buffer size", w.u32_attr(w.NFULA_CFG_NLBUFSIZ, nlbufsiz)),
            ("flush timeout", w.u32_attr(w.NFULA_CFG_TIMEOUT, timeout)),
            ("queue threshold", w.u32_attr(w.NFULA_CFG_QTHRESH, qthresh)),
            ("flags", w.flags_attr(w.NFULNL_CFG_F_SEQ)),
        )
        for what, attr in settings:
            err = self._request(attr)
            if err:
                raise NflogError(err, f"cannot set the NFLOG {what} of group {self.group}: {os.strerror(err)}")

    def add_interface(self, ifname: str) -> NflogPort:
        """Register the interface now called ``ifname`` (its current ifindex and MAC) on the
        open socket: the group, its settings and the firewall rules (which match the name)
        stay as they are. OSError (ENODEV/ENXIO) when no interface has that name."""
        ifindex = ifname_index(ifname)
        return self.add_port(ifname, ifindex, interface_mac(ifname))

    # -- the packet path ------------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self, max_packets: int = 256) -> int:
        """Read queued datagrams into the ports' queues until at least ``max_packets``
        packets were read (one datagram holds at most QTHRESH) or none is left."""
        got = 0
        recv_into = self.sock.recv_into
        buf = self._buf
        for _ in range(max_packets + 8):  # bounded even if every datagram held no packet
            if got >= max_packets:
                break
            try:
                n = recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # overrun: packets were lost, the socket is fine
                    self.overruns += 1
                    continue
                raise
            if n == 0:
                break
            self.datagrams += 1
            got += self.feed(bytes(buf[:n]))
        tuner = self.tuner
        if tuner is not None:
            qthresh = tuner.observe(got, time.monotonic())
            if qthresh is not None:
                self._retune(qthresh)
        return got

    def stats(self) -> dict[str, int]:
        out = super().stats()
        if self.tuner is not None:  # the QTHRESH in force and how often it changed
            out["nflog_qthresh"] = self.tuner.qthresh
            out["nflog_qthresh_changes"] = self.tuner.switches
        return out

    def _retune(self, qthresh: int) -> None:
        """Ask for a new QTHRESH without waiting: the kernel's answer arrives with the packets
        (:meth:`feed` counts a refusal in ``config_errors``)."""
        self._req_seq += 1
        try:
            self.sock.send(w.config_message(self.group, w.u32_attr(w.NFULA_CFG_QTHRESH, qthresh), self._req_seq))
        except OSError:
            self.config_errors += 1

    def close(self) -> None:
        """Unbind the group (best effort) and close the socket. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(0.5)
            self._request(w.cmd_attr(w.NFULNL_CFG_CMD_UNBIND))
        except OSError:
            pass  # closing the socket unbinds as well
        self.sock.close()


class NflogPort:
    """One interface's view of an :class:`NflogCapture`: a Capture (capture/base.py)."""

    __slots__ = ("owner", "ifname", "ifindex", "mac", "queue")

    def __init__(self, owner: NflogDemux, ifname: str, ifindex: int, mac: bytes):
        self.owner = owner
        self.ifname = ifname
        self.ifindex = ifindex
        self.mac = mac
        self.queue: deque[tuple[bytes, int]] = deque()

    #: Capture protocol (capture/base.py): no kernel holds; the firewall rules that feed the
    #: group carry their own in-kernel limit.
    holds_sources = False

    def fileno(self) -> int:
        # A served port's owner is the NflogCapture (the socket); a bare NflogDemux (tests,
        # bench) parses datagrams handed to it and is never polled.
        return self.owner.fileno()  # type: ignore[attr-defined]

    def pending_error(self) -> int:
        """0: the socket is shared, an empty share is normal; link events report a lost interface."""
        return 0

    def counters(self) -> dict[str, int]:
        """None of its own: the group's counts are the owner's (:meth:`NflogDemux.stats`)."""
        return {}

    def set_blocked(self, sources) -> None:
        """Not supported (``holds_sources`` is False): the daemon never asks."""
        raise TypeError("an NFLOG capture cannot hold sources in the kernel")

    def drain(self, limit: int = 256) -> list[tuple[bytes, int]]:
        """Read what the kernel queued (for every port), return this port's frames."""
        if not self.owner.closed:
            self.owner.pump(limit)
        out = list(self.queue)
        self.queue.clear()
        return out

    def close(self) -> None:
        """Closing the last port's owner is the owner's job; a port holds no socket."""
