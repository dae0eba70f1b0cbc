"""Peers mode: authenticated unicast of PTBs to peer relays across an L3 fabric."""
