"""Run pmtud-relay with the peer listener's in-kernel filter (peers/filter.py) never attached, so
every datagram reaches userspace, for A/B runs of bench/peer_junk.py. Same arguments as ``pmtud-relay``.
"""
import runpy
import sys

import pmtud_relay.peers.receiver as peer_receiver

peer_receiver.attach_filter = lambda sock, program: None  # every socket, at bind and on every change
sys.argv = ["pmtud_relay", *sys.argv[1:]]
runpy.run_module("pmtud_relay", run_name="__main__", alter_sys=True)
