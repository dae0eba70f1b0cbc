"""A process that ignores SIGTERM: prints ``armed``, then sleeps (60 s at most)."""

from __future__ import annotations

import signal
import time

from tests.support.ns_programs import bounded

if __name__ == "__main__":
    bounded(90)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("armed", flush=True)
    time.sleep(60)
