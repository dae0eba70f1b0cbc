"""The daemon's own rtnetlink code: dumps, address/link events (no pyroute2 on the daemon path)."""
