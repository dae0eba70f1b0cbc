"""The lab's sysctl writer for hosts without procps (pmtud_relay/lab/sysctl.py)."""

from __future__ import annotations

import subprocess

import pytest

from pmtud_relay.lab import Lab, topology
from pmtud_relay.lab import sysctl as lab_sysctl


def test_writes_each_setting_under_the_root_dots_as_slashes(tmp_path):
    for d in ("net/ipv4/conf/eth0", "net/ipv6/conf/all"):
        (tmp_path / d).mkdir(parents=True)
    lab_sysctl.write(["net.ipv4.conf.eth0.rp_filter=2", "net.ipv6.conf.all.forwarding=1"], root=str(tmp_path))
    assert (tmp_path / "net/ipv4/conf/eth0/rp_filter").read_text() == "2"
    assert (tmp_path / "net/ipv6/conf/all/forwarding").read_text() == "1"


def test_a_setting_without_a_value_is_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "net").mkdir()
    with pytest.raises(ValueError, match="net.b"):
        lab_sysctl.write(["net.a=1", "net.b"], root=str(tmp_path))
    assert not (tmp_path / "net/a").exists()
    assert lab_sysctl.main(["net.b"]) == 1
    assert "not KEY=VALUE: 'net.b'" in capsys.readouterr().err


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_lab_sets_sysctls_in_a_namespace_without_the_sysctl_binary(veth_netns, monkeypatch):
    """Lab.sysctl() where ``sysctl`` is missing runs the module in the node's namespace: the
    namespace's own values change, read back from inside it."""
    lab = Lab(servers=1, injector=False)
    lab._nodes["s1"] = veth_netns  # the node's namespace: the fixture's, not one the lab builds
    monkeypatch.setattr(topology.shutil, "which", lambda name: None)
    lab.sysctl("s1", {"net.ipv4.conf.pmr0.rp_filter": 2, "net.ipv6.conf.pmr0.hop_limit": 7})

    def read(key: str) -> str:
        return subprocess.run(["ip", "netns", "exec", veth_netns, "cat", "/proc/sys/" + key.replace(".", "/")],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    assert read("net.ipv4.conf.pmr0.rp_filter") == "2"
    assert read("net.ipv6.conf.pmr0.hop_limit") == "7"
