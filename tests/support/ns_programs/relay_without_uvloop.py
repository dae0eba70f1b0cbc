"""``pmtud-relay ARGS`` with uvloop unavailable: the stdlib event loop (the fallback), whose
selector reports a socket error as "readable" where uvloop stops the reader."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    sys.modules["uvloop"] = None  # type: ignore[assignment]  # import uvloop now raises ImportError
    from pmtud_relay.cli import main

    sys.exit(main(sys.argv[1:]))
