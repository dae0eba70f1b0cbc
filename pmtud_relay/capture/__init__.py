"""Capture adapters: turn a kernel source of frames into (frame, packet type) pairs."""
