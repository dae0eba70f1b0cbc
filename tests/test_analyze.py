"""``pmtud-relay analyze`` against captures with known answers.

Captures are generated into tmp_path from the scenarios in ``tests.support.pcap`` (so they
cannot drift); ``tests/data/ptb-mixed.pcapng`` is a committed copy proving that a real
pcapng file on disk reads the same.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil

import pytest

from pmtud_relay import analyze
from pmtud_relay.core.policy import PACKET_HOST, Policy, VipSet
from pmtud_relay.core.relay import Relay, RelayConfig
from tests.support import pcap as F

pytestmark = pytest.mark.timeout(60)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = analyze.cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def mixed4(tmp_path):
    return F.write_pcap(tmp_path / "mixed4.pcap", F.mixed4_frames())


def assert_mixed4(res: dict) -> None:
    a = F.MIXED4_ANSWERS
    assert res["capture"]["frames"] == a["frames"]
    assert res["ptbs"]["seen"] == a["seen"]
    assert res["ptbs"]["relayed"] == a["relayed"]
    assert res["ptbs"]["dropped"] == a["seen"] - a["relayed"]
    assert res["ptbs"]["reasons"] == a["reasons"]
    assert list(res["ptbs"]["reasons"])[0] == "relayed"
    assert res["other_frames"] == {"count": sum(a["other"].values()), "reasons": a["other"]}
    assert {s["source"]: (s["ptbs"], s["relayed"]) for s in res["sources"]} == a["sources"]
    assert {(m["family"], m["mtu"]): (m["ptbs"], m["relayed"]) for m in res["mtus"]} == a["mtus"]
    flows = res["flows"]
    assert {k: flows[k] for k in ("count", "with_relay", "without_relay")} == a["flows"]


# --- known answers ---------------------------------------------------------------------------


def test_mixed_pcap_json(capsys, mixed4):
    res = run_json(capsys, str(mixed4), *F.MIXED4_ARGS)
    assert_mixed4(res)
    assert res["capture"]["format"] == "pcap"
    assert res["capture"]["linktypes"] == {"ethernet": 15}
    assert res["capture"]["duration"] == pytest.approx(0.8)
    assert res["ptbs"]["malformed"] == 1
    assert res["ptbs"]["ipv4"] == 10
    # Timing: when each verdict first happened, the peak rate, per-source peaks.
    first = res["timing"]["first_at"]
    assert first["relayed"] == 0.0
    assert first["duplicate"] == pytest.approx(0.010)
    assert first["rate_limited_source"] == pytest.approx(0.300)
    assert first["not_vip"] == pytest.approx(0.500)
    assert first["bad_checksum"] == pytest.approx(0.700)
    assert res["timing"]["peak_ptbs_per_second"] == 10
    r1 = next(s for s in res["sources"] if s["source"] == F.R1)
    assert r1["dropped"] == {"duplicate": 2, "rate_limited_source": 2}
    assert r1["mtus"] == {"1400": 6}
    assert r1["peak_per_second"] == 6
    r3 = next(s for s in res["sources"] if s["source"] == F.R3)
    assert r3["dropped"] == {"bad_checksum": 1} and r3["mtus"] == {}
    # Hints for the announced MTUs.
    hints = {m["mtu"]: m["hint"] for m in res["mtus"]}
    assert "IPIP" in hints[1480]
    # Inner flows: ordered by PTB count; the ones that never got a copy out, by reason.
    flows = res["flows"]
    assert flows["without_relay_by_reason"] == {"rate_limited_source": 2, "not_vip": 1}
    top = flows["top"][0]
    assert top["flow"] == "192.0.2.10:443 > 203.0.113.1:50001 tcp"
    assert (top["ptbs"], top["relayed"], top["dropped"]) == (3, 1, {"duplicate": 2})
    assert {d["destination"]: d["ptbs"] for d in res["destinations"]} == {"192.0.2.10": 9, "192.0.2.99": 1}
    notes = " ".join(res["notes"])
    assert "192.0.2.99" in notes and "dedup suppressed 3" in notes and "rate limits held back 2" in notes
    assert "decisions" not in res


def test_mixed_pcap_text(capsys, mixed4):
    code, out, err = run(capsys, str(mixed4), *F.MIXED4_ARGS)
    assert code == 0, err
    assert "PTBs: 10 seen (IPv4 10, IPv6 0): 3 would be relayed, 7 dropped" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert lines["relayed"][1] == "3"
    assert lines["duplicate"][1] == "3"
    assert lines["rate_limited_source"][1] == "2"
    assert lines["not_vip"][1] == "1"
    assert lines["bad_checksum"][1] == "1"
    assert lines[F.R1][1:4] == ["6", "2", "6"]  # PTBs, relayed, peak/s
    assert "inner flows affected: 6 (3 with a relayed PTB, 3 without: rate_limited_source 2, not_vip 1)" in out
    assert "other frames: 5 (not_ptb 4, not_ip 1)" in out
    assert "192.0.2.10:443 > 203.0.113.1:50001 tcp" in out


def test_top_limits_tables(capsys, mixed4):
    res = run_json(capsys, str(mixed4), *F.MIXED4_ARGS, "--top", "2")
    assert len(res["flows"]["top"]) == 2 and res["flows"]["count"] == 6
    code, out, _ = run(capsys, str(mixed4), *F.MIXED4_ARGS, "--top", "1")
    assert "... 5 more flows" in out and "... 2 more sources" in out


def test_committed_pcapng_known_answers(capsys):
    res = run_json(capsys, str(F.COMMITTED_PCAPNG), *F.MIXED_PCAPNG_ARGS)
    a = F.MIXED_PCAPNG_ANSWERS
    assert F.COMMITTED_PCAPNG.stat().st_size < 4096
    assert res["capture"]["format"] == "pcapng"
    assert res["capture"]["frames"] == a["frames"]
    assert res["ptbs"]["seen"] == a["seen"]
    assert res["ptbs"]["relayed"] == a["relayed"]
    assert res["ptbs"]["reasons"] == a["reasons"]
    assert res["ptbs"]["ipv4"] == a["ipv4"] and res["ptbs"]["ipv6"] == a["ipv6"]
    assert res["other_frames"]["reasons"] == a["other"]
    hints = {(m["family"], m["mtu"]): m["hint"] for m in res["mtus"]}
    assert "VXLAN" in hints[(4, 1450)]
    assert "below the IPv6 minimum" in hints[(6, 1200)]
    v6flow = next(f for f in res["flows"]["top"] if f["dport"] == 40001)
    assert v6flow["flow"] == "[2001:db8:ffff::10]:443 > [2001:db8:c::1]:40001 tcp"


def test_committed_pcapng_matches_generator(capsys, tmp_path):
    fresh = F.write_mixed_pcapng(tmp_path / "fresh.pcapng")
    committed = run_json(capsys, str(F.COMMITTED_PCAPNG), *F.MIXED_PCAPNG_ARGS)
    generated = run_json(capsys, str(fresh), *F.MIXED_PCAPNG_ARGS)
    for res in (committed, generated):
        res["capture"].pop("file")
    assert committed == generated


def test_nanosecond_pcap_same_answers(capsys, tmp_path):
    path = F.write_pcap(tmp_path / "nano.pcap", F.mixed4_frames(), nano=True)
    assert_mixed4(run_json(capsys, str(path), *F.MIXED4_ARGS))


def test_gzip_pcap(capsys, tmp_path, mixed4):
    gz = tmp_path / "mixed4.pcap.gz"
    with open(mixed4, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert_mixed4(run_json(capsys, str(gz), *F.MIXED4_ARGS))


# --- the exact core pipeline -----------------------------------------------------------------


def test_decisions_equal_core_relay(capsys, mixed4):
    """--list decisions are exactly what Relay.handle says when fed the frames and times."""
    res = run_json(capsys, str(mixed4), *F.MIXED4_ARGS, "--list")
    relay = None
    expected = []
    config = RelayConfig(policy=Policy(vips=VipSet(["192.0.2.10/32"])), source_rate=1.0, source_burst=2.0)
    for offset, frame in F.mixed4_frames():
        now = F.T0 + offset
        relay = relay or Relay(config, now=now)
        d = relay.handle(frame, now, b"\x02" * 6, PACKET_HOST)
        if d.ptb is not None or d.reason.value == "bad_checksum":
            expected.append((round(offset, 3), d.reason.value))
    got = [(round(rec["at"], 3), rec["reason"]) for rec in res["decisions"]]
    assert got == expected
    assert len(got) == 10


def test_list_text_prints_logfmt(capsys, mixed4):
    code, out, _ = run(capsys, str(mixed4), *F.MIXED4_ARGS, "--list")
    assert code == 0
    section = out.split("\ndecisions\n", 1)[1].strip().splitlines()
    assert len(section) == 10
    assert section[0].startswith("at=0.0 verdict=relay reason=relayed family=4 outer_src=198.51.100.1")
    assert "reason=bad_checksum" in section[-1] and "outer_src=198.51.100.3" in section[-1]


def test_assume_vips_removes_not_vip(capsys, mixed4):
    res = run_json(capsys, str(mixed4), "--assume-vips", "--source-rate", "1", "--source-burst", "2")
    assert res["config"]["vips"] == "any"
    reasons = res["ptbs"]["reasons"]
    assert "not_vip" not in reasons
    assert reasons["relayed"] == 4  # the 192.0.2.99 PTB now passes (R2 still has a token)


def test_policy_options_apply(capsys, mixed4):
    res = run_json(capsys, str(mixed4), *F.MIXED4_ARGS, "--port", "8443")
    # Policy runs before dedup and before the ICMP checksum (which only a PTB that would be
    # relayed pays for): every PTB about the VIP, the corrupt one too, is refused by the port list.
    assert res["ptbs"]["reasons"] == {"port_not_allowed": 9, "not_vip": 1}
    res = run_json(capsys, str(mixed4), *F.MIXED4_ARGS, "--floor-v4", "1450")
    assert res["ptbs"]["reasons"]["mtu_below_floor"] == 7  # the corrupt PTB included
    res = run_json(capsys, str(mixed4), "--vip", "192.0.2.10", "--dedup-window", "0")
    assert "duplicate" not in res["ptbs"]["reasons"]


def test_policy_options_have_run_s_spellings_too(capsys, mixed4):
    """`run` takes --vips/--protocols/--ports as well as the singular forms; so does analyze,
    so an operator can paste the service's flags."""
    singular = run_json(capsys, str(mixed4), "--vip", "192.0.2.10/32", "--protocol", "tcp", "--port", "8443")
    plural = run_json(capsys, str(mixed4), "--vips", "192.0.2.10/32", "--protocols", "tcp", "--ports", "8443")
    assert plural["ptbs"]["reasons"] == singular["ptbs"]["reasons"] == {"port_not_allowed": 9, "not_vip": 1}


# --- link types ------------------------------------------------------------------------------


@pytest.mark.parametrize("version,linktype,name", [(1, 113, "linux-sll"), (2, 276, "linux-sll2")])
def test_linux_cooked_captures(capsys, tmp_path, version, linktype, name):
    path = F.write_pcap(tmp_path / f"sll{version}.pcap", F.cooked_frames(version), linktype=linktype)
    res = run_json(capsys, str(path), "--vip", F.VIP4, "--list")
    assert res["capture"]["linktypes"] == {name: 3}
    assert [d["reason"] for d in res["decisions"]] == ["relayed", "not_unicast", "own_frame"]


def test_raw_ip_capture(capsys, tmp_path):
    frames = [(0.0, F.ip_payload(F.ptb4(F.R1, F.VIP4, 1400, F.quoted4(F.VIP4, F.client4(1), 443, 50001))))]
    path = F.write_pcap(tmp_path / "raw.pcap", frames, linktype=101)
    res = run_json(capsys, str(path), "--vip", F.VIP4)
    assert res["capture"]["linktypes"] == {"raw-ip": 1}
    assert res["ptbs"]["reasons"] == {"relayed": 1}


def test_unsupported_link_type_is_reported(capsys, tmp_path):
    path = F.write_pcap(tmp_path / "radiotap.pcap", [(0.0, b"\x00" * 40)], linktype=127)
    res = run_json(capsys, str(path), "--vip", F.VIP4)
    assert res["capture"]["unsupported_frames"] == {"127": 1}
    assert res["ptbs"]["seen"] == 0
    assert any("unsupported link layer" in n for n in res["notes"])


def test_snaplen_truncation_is_explained(capsys, tmp_path):
    path = F.write_pcap(tmp_path / "short.pcap", F.mixed4_frames(), snaplen=60)
    res = run_json(capsys, str(path), *F.MIXED4_ARGS)
    longer = sum(1 for _, frame in F.mixed4_frames() if len(frame) > 60)
    assert longer == 12  # the 10 PTBs and two long non-PTB frames
    assert res["capture"]["truncated_frames"] == longer
    assert res["ptbs"]["seen"] == 10
    assert res["ptbs"]["reasons"] == {"too_short": 10}
    assert any("-s 0" in n for n in res["notes"])


def test_host_mac_marks_promiscuous_and_own_frames(capsys, tmp_path):
    q = F.quoted4(F.VIP4, F.client4(1), 443, 50001)
    frames = [
        (0.0, F.ptb4(F.R1, F.VIP4, 1400, q)),  # to our MAC
        (0.1, F.ptb4(F.R1, F.VIP4, 1400, F.quoted4(F.VIP4, F.client4(2), 443, 50002), dst_mac="02:00:00:00:0d:01")),
    ]
    path = F.write_pcap(tmp_path / "promisc.pcap", frames)
    res = run_json(capsys, str(path), "--vip", F.VIP4, "--host-mac", F.HOST_MAC, "--list")
    assert [d["reason"] for d in res["decisions"]] == ["relayed", "other_host"]
    assert res["config"]["host_macs"] == [F.HOST_MAC]


def test_empty_capture(capsys, tmp_path):
    path = F.write_pcap(tmp_path / "empty.pcap", [])
    res = run_json(capsys, str(path), "--vip", F.VIP4)
    assert res["capture"]["frames"] == 0 and res["ptbs"]["seen"] == 0
    assert res["notes"] == ["the capture holds no frames"]
    code, out, _ = run(capsys, str(path), "--vip", F.VIP4)
    assert code == 0 and "PTBs: 0 seen" in out


# --- errors and wiring -----------------------------------------------------------------------


def test_vip_or_assume_vips_required(capsys, mixed4):
    with pytest.raises(SystemExit) as exc:
        analyze.cli([str(mixed4)])
    assert exc.value.code == 2
    assert "--vip" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze.cli([str(mixed4), "--vip", F.VIP4, "--assume-vips"])


def test_bad_options_exit_2(capsys, mixed4):
    code, _, err = run(capsys, str(mixed4), "--vip", F.VIP4, "--floor-v6", "1000")
    assert code == 2 and "--floor-v6" in err
    code, _, err = run(capsys, str(mixed4), "--vip", F.VIP4, "--protocol", "bogus")
    assert code == 2 and "--protocol" in err


def test_unreadable_files_exit_1(capsys, tmp_path):
    code, _, err = run(capsys, str(tmp_path / "missing.pcap"), "--vip", F.VIP4)
    assert code == 1 and "no such file" in err
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    code, _, err = run(capsys, str(junk), "--vip", F.VIP4)
    assert code == 1 and "not a pcap or pcapng" in err


def test_add_parser_wiring(capsys, mixed4):
    parser = argparse.ArgumentParser(prog="pmtud-relay")
    sub = parser.add_subparsers(dest="command")
    analyze.add_parser(sub)
    args = parser.parse_args(["analyze", str(mixed4), *F.MIXED4_ARGS, "--json"])
    assert args.command == "analyze" and args.handler is analyze.main
    assert args.handler(args) == 0
    assert_mixed4(json.loads(capsys.readouterr().out))
