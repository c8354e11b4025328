"""A paho client whose every QoS 1 publish must be acknowledged, and a log tail for failures."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def log_tail(path: Path, chars: int = 4000) -> str:
    """The end of a process's log, for assertion messages."""
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"\n--- end of {path} ---\n{text[-chars:]}"


class AckedClient:
    """A paho client on 127.0.0.1 (logged in as ``user`` if given), QoS 1, each publish acked."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None,
                 client_id: str = "") -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if user is not None:
            self.c.username_pw_set(user, password)
        connected = threading.Event()
        self.c.on_connect = lambda *_a: connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(10), f"{user or 'anonymous'} could not connect"

    def publish(self, topic: str, blob: bytes, *, retain: bool = False) -> None:
        """Publish and wait for the broker's acknowledgement."""
        info = self.c.publish(topic, blob, qos=1, retain=retain)
        info.wait_for_publish(30)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def close(self) -> None:
        """Disconnect."""
        self.c.loop_stop()
        self.c.disconnect()
