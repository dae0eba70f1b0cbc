"""Setting sysctls inside a lab namespace without procps: ``python -m pmtud_relay.lab.sysctl
KEY=VALUE ...`` writes each VALUE to /proc/sys/KEY (dots in KEY become slashes), as
``sysctl -q -w`` would. The lab runs it (``ip netns exec``) only where ``sysctl`` is missing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def write(settings: Sequence[str], root: str = "/proc/sys") -> None:
    """Write each ``KEY=VALUE`` of ``settings`` to ``root``/KEY, in order; a setting without ``=``
    is a ValueError naming it (before anything is written)."""
    pairs = []
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise ValueError(f"not KEY=VALUE: {setting!r}")
        pairs.append((key, value))
    for key, value in pairs:
        with open(f"{root}/{key.replace('.', '/')}", "w") as f:
            f.write(value)


def main(argv: Sequence[str]) -> int:
    try:
        write(argv)
    except (ValueError, OSError) as e:
        print(f"pmtud_relay.lab.sysctl: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
