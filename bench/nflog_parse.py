"""NFLOG datagram parsing in process: ns per logged packet, general walk vs learned layouts.

Datagrams of 1 and of 100 NFULNL_MSG_PACKET messages, in two layouts: the one Linux 6.18
delivers for nft ``log group`` (PACKET_HDR, PREFIX, IFINDEX_INDEV, HWADDR, HWTYPE, HWLEN,
HWHEADER, TIMESTAMP, SEQ, PAYLOAD; captured, the sequence number rewritten per message) and
a shorter hand-built one (no prefix, no timestamp; IPv4 and IPv6 PTBs taking turns).

Measured: ``parse_datagram`` (the general attribute walk) against ``PacketParser.parse_datagram``
(the learned-layout fast path), and ``NflogDemux.feed`` (parse, sequence tracking, frame
rebuilding, queueing) of this tree against the one of ``--compare-with GITREF`` when given.
Each figure is the minimum over ``--repeats`` timeit runs, the variants alternating run by
run (the machine may be busy with something else: the minimum is the least disturbed run).

    python bench/nflog_parse.py [--repeats 9] [--compare-with HEAD]
"""

from __future__ import annotations

import argparse
import importlib.util
import struct
import subprocess
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, table, write_result  # noqa: E402

from pmtud_relay.nflog import capture as capture_now
from pmtud_relay.nflog import fastpath as fp
from pmtud_relay.nflog import wire as w

IFINDEX = 2
HOST_MAC = bytes.fromhex("00005e005302")
# One message as Linux 6.18 delivered it (also used by tests/test_nflog_fastpath.py).
KERNEL_MSG = bytes.fromhex((ROOT / "tests" / "data" / "nflog-kernel-msg-linux-6.18.hex").read_text())


def _nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _short_msg(i: int) -> bytes:
    """PACKET_HDR, INDEV, HWADDR, HWTYPE, HWLEN, HWHEADER, SEQ, PAYLOAD (an IPv4 or IPv6 PTB's size)."""
    v6 = i % 2
    payload = (b"\x60" if v6 else b"\x45") + bytes(95 if v6 else 55)
    attrs = [_nla(1, struct.pack("!HBx", 0x86DD if v6 else 0x0800, 0)), _nla(4, struct.pack("!I", IFINDEX)),
             _nla(8, struct.pack("!HH", 6, 0) + bytes(range(6)) + b"\0\0"), _nla(15, b"\0\x01"), _nla(17, b"\0\x0e"),
             _nla(16, HOST_MAC + bytes(range(6)) + (b"\x86\xdd" if v6 else b"\x08\x00")),
             _nla(12, struct.pack("!I", i)), _nla(9, payload)]
    body = struct.pack("!BBH", 10 if v6 else 2, 0, 2105) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), 0x0400, 0, 0, 0) + body


def _kernel_msg(i: int) -> bytes:
    return KERNEL_MSG[:120] + struct.pack("!I", i) + KERNEL_MSG[124:]


LAYOUTS = {"kernel (nft log group)": _kernel_msg, "hand-built v4/v6": _short_msg}


def load_capture_at(ref: str):
    """nflog/capture.py, nflog/wire.py and (where ``ref`` has it) nflog/fastpath.py as of git
    ``ref``, imported under other names. Modules they import from elsewhere in the package
    (the netlink walker of netlink/messages.py, batching) are this tree's."""
    mods = {}
    files = [("nflog_wire", "pmtud_relay/nflog/wire.py"), ("nflog_fastpath", "pmtud_relay/nflog/fastpath.py"),
             ("nflog", "pmtud_relay/nflog/capture.py")]
    for name, path in files:
        got = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{path}"], capture_output=True, text=True)
        if got.returncode != 0 and name == "nflog_fastpath":
            continue  # before the fast path had a module of its own
        got.check_returncode()
        src = got.stdout
        for current, old in (("from pmtud_relay.core import nflog_wire as w", "import _bench_old_nflog_wire as w"),
                             ("from pmtud_relay.nflog import wire as w", "import _bench_old_nflog_wire as w"),
                             ("from pmtud_relay.nflog.wire import", "from _bench_old_nflog_wire import"),
                             ("from pmtud_relay.nflog.fastpath import", "from _bench_old_nflog_fastpath import")):
            src = src.replace(current, old)
        spec = importlib.util.spec_from_loader(f"_bench_old_{name}", loader=None)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        exec(compile(src, f"{ref}:{path}", "exec"), mod.__dict__)
        mods[name] = mod
    return mods["nflog"]


def best_ns(variants: dict, data: bytes, packets: int, repeats: int) -> dict[str, float]:
    """Min over ``repeats`` runs of each variant (alternating, order reversed every other run), in ns/packet."""
    number = max(1, 20000 // packets)
    out: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = variants[name]
            out[name].append(timeit.timeit(lambda: fn(data), number=number) / number / packets * 1e9)
    return {name: min(v) for name, v in out.items()}


def demux_feed(module):
    demux = module.NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC)])
    queue = demux.port("eth0").queue

    def feed(data: bytes) -> None:
        demux.feed(data)
        queue.clear()
    return feed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--compare-with", metavar="GITREF", default=None,
                    help="also time NflogDemux.feed of this git revision (e.g. HEAD for the working tree's base)")
    args = ap.parse_args(argv)
    old_capture = load_capture_at(args.compare_with) if args.compare_with else None
    rows = []
    for layout, make in LAYOUTS.items():
        for packets in (1, 100):
            data = b"".join(make(i) for i in range(packets))
            parser = fp.PacketParser()
            assert parser.parse_datagram(data) == w.parse_datagram(data)
            got = best_ns({"walk": w.parse_datagram, "layout": parser.parse_datagram}, data, packets, args.repeats)
            row = {"layout": layout, "packets": packets, "parse walk ns": got["walk"],
                   "parse layout ns": got["layout"], "parse speed-up": got["walk"] / got["layout"]}
            if old_capture is not None:
                feed = best_ns({"old": demux_feed(old_capture), "new": demux_feed(capture_now)}, data, packets,
                               args.repeats)
                row.update({"feed old ns": feed["old"], "feed new ns": feed["new"],
                            "feed speed-up": feed["old"] / feed["new"]})
            rows.append(row)
    columns = ["layout", "packets", "parse walk ns", "parse layout ns", "parse speed-up"]
    if old_capture is not None:
        columns += ["feed old ns", "feed new ns", "feed speed-up"]
    print(table(rows, columns, "NFLOG parsing, ns per packet (min of alternating runs)"))
    path = write_result("nflog-parse", {"repeats": args.repeats, "compare_with": args.compare_with, "rows": rows})
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
