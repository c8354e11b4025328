"""Test access to the private broker helper (it lives in the product because the demo uses it)."""

from edge_agent.tools.devbroker import Mosquitto, free_port, free_ports

__all__ = ["Mosquitto", "free_port", "free_ports"]
