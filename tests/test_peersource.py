"""Peer list sources (static, watched file, DNS) and the key file (pmtud_relay.peers.sources,
pmtud_relay.peers.keys). DNS goes through an injected resolver; one real getaddrinfo of localhost.
The host's /etc/hosts is never touched."""

from __future__ import annotations

import os
import socket

import pytest

from pmtud_relay.core.policy import VipSet
from pmtud_relay.peers.inbox import Peer, PeerSpec, parse_peer_spec
from pmtud_relay.peers.keys import KeyFileError, check_mode, file_stamp, load_keyring
from pmtud_relay.peers.sources import NameCache, PeerDirectory, PeersFile, PeerSourceError, parse_peers_text

KEY_HEX = "ab" * 32


class FakeResolver:
    """getaddrinfo stand-in: answers from a dict, records every call."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host, port, family=0, type=0, *a):
        self.calls.append(host)
        answer = self.answers.get(host)
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for addr in answer:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sa = (addr, 0, 0, 0) if fam == socket.AF_INET6 else (addr, 0)
            out.append((fam, socket.SOCK_DGRAM, 17, "", sa))
        return out


def addrs(peers) -> list[str]:
    return [str(p) for p in peers]


# -- static ---------------------------------------------------------------------------------------------
def test_static_peers_are_used_as_given():
    d = PeerDirectory(static=[parse_peer_spec("198.51.100.18"), parse_peer_spec("[2001:db8:5:2::2]:2200=192.0.2.0/24")],
                      resolver=FakeResolver({}))
    peers = d.refresh(0.0)
    assert addrs(peers) == ["198.51.100.18:2106", "[2001:db8:5:2::2]:2200"]
    assert peers[1].prefixes == VipSet(["192.0.2.0/24"])


def test_own_addresses_are_excluded():
    d = PeerDirectory(static=[parse_peer_spec("198.51.100.2"), parse_peer_spec("198.51.100.18")])
    assert addrs(d.refresh(0.0, exclude={"198.51.100.2", "192.0.2.10"})) == ["198.51.100.18:2106"]


# -- file --------------------------------------------------------------------------------------------
def write(path, text: str) -> None:
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # rename into place, like config management does


def test_peers_file_changes_are_picked_up(tmp_path):
    path = tmp_path / "peers"
    write(path, "# the fleet\n198.51.100.18\n\n198.51.100.34:2200  # rack 3\n")
    d = PeerDirectory(files=[str(path)])
    assert addrs(d.refresh(0.0)) == ["198.51.100.18:2106", "198.51.100.34:2200"]
    assert d.files[0].poll() is False  # unchanged: not even re-read
    write(path, "198.51.100.18=192.0.2.10\n[2001:db8:5:3::2]\n")
    peers = d.refresh(1.0)
    assert addrs(peers) == ["198.51.100.18:2106", "[2001:db8:5:3::2]:2106"]
    assert peers[0].prefixes == VipSet(["192.0.2.10"])


def test_in_place_edit_of_same_size_is_picked_up(tmp_path):
    path = tmp_path / "peers"
    path.write_text("198.51.100.18\n")
    f = PeersFile(str(path))
    assert f.poll() is True
    path.write_text("198.51.100.19\n")  # same size; mtime_ns (or inode) differs
    os.utime(path, ns=(1, 1))
    assert f.poll() is True and f.specs == [parse_peer_spec("198.51.100.19")]


def test_broken_file_keeps_the_previous_list_and_reports(tmp_path):
    path = tmp_path / "peers"
    write(path, "198.51.100.18\n")
    d = PeerDirectory(files=[str(path)])
    d.refresh(0.0)
    write(path, "198.51.100.18\nnot a peer!\n")
    assert addrs(d.refresh(1.0)) == ["198.51.100.18:2106"]
    assert d.errors() and ":2:" in d.errors()[0]
    write(path, "198.51.100.34\n")
    assert addrs(d.refresh(2.0)) == ["198.51.100.34:2106"] and d.errors() == []


def test_missing_file_means_no_peers_until_it_appears(tmp_path):
    path = tmp_path / "peers"
    d = PeerDirectory(files=[str(path)])
    assert d.refresh(0.0) == () and "no such file" in d.errors()[0]
    write(path, "198.51.100.18\n")
    assert addrs(d.refresh(1.0)) == ["198.51.100.18:2106"]
    path.unlink()
    assert d.refresh(2.0) == ()


def test_parse_peers_text_names_file_and_line():
    with pytest.raises(PeerSourceError, match=r"^f:3: "):
        parse_peers_text("198.51.100.1\n\n198.51.100.1:0\n", "f")


# -- DNS -------------------------------------------------------------------------------------------------
def test_dns_name_is_re_resolved_on_its_interval():
    r = FakeResolver({"peers.example": ["198.51.100.18", "2001:db8:5:2::2"]})
    d = PeerDirectory(dns=[parse_peer_spec("peers.example:2300=192.0.2.0/24")], dns_interval=10.0, resolver=r)
    peers = d.refresh(0.0)
    assert addrs(peers) == ["198.51.100.18:2300", "[2001:db8:5:2::2]:2300"]
    assert all(p.name == "peers.example" and p.prefixes == VipSet(["192.0.2.0/24"]) for p in peers)
    r.answers["peers.example"] = ["198.51.100.34"]
    assert addrs(d.refresh(5.0)) == ["198.51.100.18:2300", "[2001:db8:5:2::2]:2300"]  # not due yet
    assert r.calls == ["peers.example"]
    assert addrs(d.refresh(10.0)) == ["198.51.100.34:2300"]  # due: the new answer replaces the old
    assert r.calls == ["peers.example"] * 2


def test_dns_temporary_failure_keeps_the_last_answer_nxdomain_empties_it():
    r = FakeResolver({"peers.example": ["198.51.100.18"]})
    d = PeerDirectory(dns=[PeerSpec("peers.example")], dns_interval=1.0, resolver=r)
    assert addrs(d.refresh(0.0)) == ["198.51.100.18:2106"]
    r.answers["peers.example"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert addrs(d.refresh(1.0)) == ["198.51.100.18:2106"]
    assert "Temporary failure" in d.errors()[0]
    r.answers["peers.example"] = OSError("resolver exploded")
    assert addrs(d.refresh(2.0)) == ["198.51.100.18:2106"]
    del r.answers["peers.example"]  # NXDOMAIN: the service is gone
    assert d.refresh(3.0) == ()
    r.answers["peers.example"] = ["198.51.100.50"]
    assert addrs(d.refresh(4.0)) == ["198.51.100.50:2106"] and d.errors() == []


def test_names_in_static_entries_and_files_resolve_too(tmp_path):
    path = tmp_path / "peers"
    write(path, "rack3.example:2200\n")
    r = FakeResolver({"rack2.example": ["198.51.100.18"], "rack3.example": ["198.51.100.34", "198.51.100.35"]})
    d = PeerDirectory(static=[PeerSpec("rack2.example")], files=[str(path)], resolver=r)
    assert addrs(d.refresh(0.0)) == ["198.51.100.18:2106", "198.51.100.34:2200", "198.51.100.35:2200"]


def test_name_cache_forgets_names_no_longer_listed(tmp_path):
    path = tmp_path / "peers"
    write(path, "a.example\n")
    r = FakeResolver({"a.example": ["198.51.100.18"], "b.example": ["198.51.100.34"]})
    d = PeerDirectory(files=[str(path)], resolver=r, dns_interval=100)
    d.refresh(0.0)
    write(path, "b.example\n")
    assert addrs(d.refresh(1.0)) == ["198.51.100.34:2106"]
    write(path, "a.example\n")
    d.refresh(2.0)
    assert r.calls == ["a.example", "b.example", "a.example"]  # re-resolved, not a stale cache


def test_real_getaddrinfo_of_localhost():
    cache = NameCache(interval=1.0)  # the real socket.getaddrinfo
    found = cache.addresses("localhost", 0.0)
    assert found and set(found) <= {"127.0.0.1", "::1"}, found
    assert "localhost" not in cache.errors


# -- key file ----------------------------------------------------------------------------------------------
def keyfile(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "peer.key"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_key_file_loads(tmp_path):
    ring = load_keyring(keyfile(tmp_path, f"2:{KEY_HEX}\n1:{'cd' * 32}\n"))
    assert ring.send_id == 2 and ring.ids == (2, 1)
    assert load_keyring(keyfile(tmp_path, f"1:{KEY_HEX}\n", 0o640)).send_id == 1
    assert load_keyring(keyfile(tmp_path, f"1:{KEY_HEX}\n", 0o400)).send_id == 1


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o666, 0o601])
def test_key_file_with_loose_permissions_is_refused(tmp_path, mode):
    path = keyfile(tmp_path, f"1:{KEY_HEX}\n", mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600"):
        load_keyring(path)


OTHER_UID = 65534  # nobody: neither root nor (in CI) the user running the tests


def _owned_by(st: os.stat_result, uid: int) -> os.stat_result:
    fields = list(st[:10])
    fields[4] = uid  # st_uid
    return os.stat_result(fields)


def test_key_file_owner_is_checked(tmp_path):
    path = keyfile(tmp_path, f"1:{KEY_HEX}\n")
    st = os.stat(path)
    check_mode(path, st, euid=st.st_uid)  # the reader's own file
    check_mode(path, _owned_by(st, 0), euid=12345)  # root-owned files are always fine
    # Owned by someone else (neither root nor the reader): refused, whoever runs the tests.
    reader = os.geteuid()
    other = OTHER_UID if reader != OTHER_UID else OTHER_UID - 1
    with pytest.raises(KeyFileError, match=f"owned by uid {other}; it must belong to root or to uid {reader}"):
        check_mode(path, _owned_by(st, other))
    with pytest.raises(KeyFileError, match=f"owned by uid {other}; it must belong to root or to uid 12345"):
        check_mode(path, _owned_by(st, other), euid=12345)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another uid (chown)")
def test_key_file_owned_by_another_uid_is_refused_by_root(tmp_path):
    """The real path (open, fstat, check) as root: a 0600 key file that belongs to uid 65534."""
    path = keyfile(tmp_path, f"1:{KEY_HEX}\n")
    assert load_keyring(path).send_id == 1  # root's own file loads
    os.chown(path, OTHER_UID, OTHER_UID)
    assert os.stat(path).st_uid == OTHER_UID
    with pytest.raises(KeyFileError, match=f"owned by uid {OTHER_UID}; it must belong to root or to uid 0"):
        load_keyring(path)


def test_key_file_errors_never_show_the_key(tmp_path):
    secret = "ef" * 15  # too short
    with pytest.raises(KeyFileError) as exc:
        load_keyring(keyfile(tmp_path, f"1:{secret}\n"))
    assert secret not in str(exc.value) and "peer.key" in str(exc.value)
    with pytest.raises(KeyFileError, match="no such file"):
        load_keyring(str(tmp_path / "missing"))
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_keyring(str(tmp_path))
    with pytest.raises(KeyFileError, match="not ASCII"):
        load_keyring(keyfile(tmp_path, "1:\u00e9\n"))


def test_key_file_stamp_changes_on_rotation(tmp_path):
    path = keyfile(tmp_path, f"1:{KEY_HEX}\n")
    before = file_stamp(path)
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(f"1:{KEY_HEX}\n2:{'cd' * 32}\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    assert file_stamp(path) != before
    assert file_stamp(str(tmp_path / "missing")) is None


def test_symlinked_key_file_is_followed(tmp_path):
    """Kubernetes secret volumes are symlinks into a ..data directory."""
    real = keyfile(tmp_path, f"1:{KEY_HEX}\n")
    link = tmp_path / "link.key"
    link.symlink_to(real)
    assert load_keyring(str(link)).ids == (1,)


def test_peer_dataclass_text():
    assert str(Peer("198.51.100.2", 2106)) == "198.51.100.2:2106"
