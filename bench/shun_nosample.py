"""Run pmtud-relay with kernel holds that drop every frame of a held source (no 1-in-N sample),
for A/B runs of ``netbench.py flood --kinds
afpacket,script:bench/shun_nosample.py``. Same arguments as ``pmtud-relay``.
"""
import runpy
import sys

import pmtud_relay.capture.afpacket as afpacket

_defaults = list(afpacket.PacketCapture.__init__.__defaults__)  # rcvbuf, program, ring, sample
_defaults[3] = None
afpacket.PacketCapture.__init__.__defaults__ = tuple(_defaults)
sys.argv = ["pmtud_relay", *sys.argv[1:]]
runpy.run_module("pmtud_relay", run_name="__main__", alter_sys=True)
