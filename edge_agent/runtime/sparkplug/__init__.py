"""Sparkplug B 3.0: the gateway as an edge node, a live-only second uplink (docs/sparkplug.md)."""
