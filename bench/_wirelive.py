"""A live site for the wire benchmark: broker, simulator and agent as subprocesses, and a
subscriber that keeps every payload the agent publishes (topic, bytes), as a cloud would see it.

The demo site is run from ``configs/demo.toml`` as ``make demo`` runs it, with only what
cannot be shared rewritten (the simulator's PTY path, the TCP port and the state directory),
so its batching and polling defaults are the demo's own.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.tools.devbroker import Mosquitto, free_port
from edge_agent.tools.procs import spawn_until_ready, stop_process

PY = [sys.executable, "-m", "edge_agent"]


def demo_site(tmp: Path, source: Path = Path("configs/demo.toml")) -> Path:
    """``configs/demo.toml`` with a private PTY path, TCP port and state directory."""
    text = source.read_text()
    text = re.sub(r'(?m)^port = "/tmp/edge-agent-demo/rs485-1"', f'port = "{tmp / "rs485-1"}"',
                  text)
    text = re.sub(r"(?m)^port = 15020$", f"port = {free_port()}", text)
    text = re.sub(r'(?m)^state_dir = ".*"$', f'state_dir = "{tmp / "state"}"', text)
    path = tmp / "demo.toml"
    path.write_text(text)
    return path


class Recorder:
    """Subscribes to ``{prefix}/#`` (QoS 1) and keeps (topic, payload, arrival) in order."""

    def __init__(self, port: int, prefix: str = "edge") -> None:
        self.messages: list[tuple[str, bytes, float]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"{prefix}/#", qos=1)
        self._client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), time.monotonic()))

    def take(self) -> list[tuple[str, bytes, float]]:
        """Everything received so far (and forget it)."""
        with self._lock:
            out, self.messages = self.messages, []
        return out

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.loop_stop()
        self._client.disconnect()


def run_site(site: Path, tmp: Path, seconds: float,
             seed: int = 0) -> list[tuple[str, bytes, float]]:
    """Run simulator and agent for ``seconds`` once the agent has started, then stop the agent
    (its last window is flushed and published); every message the subscriber got."""
    broker = Mosquitto()
    broker.start()
    sim = agent = None
    rec: Recorder | None = None
    try:
        sim = spawn_until_ready([*PY, "simulate", str(site), "--seed", str(seed)],
                                tmp / "sim.log",
                                "simulator ready",
                                timeout_s=30, what="the simulator")
        time.sleep(1.0)  # the TCP listeners start right after the serial port
        rec = Recorder(broker.port)
        agent = spawn_until_ready([*PY, "run", str(site), "--broker", broker.url],
                                  tmp / "agent.log")
        time.sleep(seconds)
        stop_process(agent)
        agent = None
        time.sleep(0.5)  # what the agent flushed on stop reaches the subscriber
        return rec.take()
    finally:
        if rec is not None:
            rec.close()
        for p in (agent, sim):
            if p is not None:
                stop_process(p)
        broker.close()
