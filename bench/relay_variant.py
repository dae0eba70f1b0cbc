"""Run pmtud-relay with socket-per-frame adapters instead of the rings, for A/B runs:
one recvmsg() per captured frame and one send() per copy (``ring=False`` for both).

    python bench/relay_variant.py run -i eth0 ...   (same arguments as ``pmtud-relay``)
"""
import runpy
import sys

import pmtud_relay.capture.afpacket as afpacket
import pmtud_relay.emit.l2 as l2

_defaults = list(afpacket.PacketCapture.__init__.__defaults__)  # rcvbuf, program, ring, sample
_defaults[2] = False
afpacket.PacketCapture.__init__.__defaults__ = tuple(_defaults)
l2.L2Emitter.__init__.__defaults__ = (False,)
sys.argv = ["pmtud_relay", *sys.argv[1:]]
runpy.run_module("pmtud_relay", run_name="__main__", alter_sys=True)
