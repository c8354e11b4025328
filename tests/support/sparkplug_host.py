"""A stand-in Sparkplug host for the tests: records every spBv1.0 message, publishes commands.

It subscribes at QoS 1, so the QoS a message arrives with is the QoS it was published with
(MQTT delivers at the lower of the two). Payloads are decoded with pysparkplug, an
implementation independent of the agent's codec.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pysparkplug as psp
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import sparkplug_pb


@dataclass(frozen=True)
class Seen:
    """One message as the host received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    @property
    def kind(self) -> str:
        """NBIRTH, DDATA, ... or STATE."""
        parts = self.topic.split("/")
        if len(parts) > 1 and parts[1] == "STATE":
            return "STATE"
        return parts[2] if len(parts) > 2 else ""

    @property
    def device(self) -> str | None:
        """The device level of a device message."""
        parts = self.topic.split("/")
        return parts[4] if len(parts) > 4 else None


class SparkplugHost:
    """Subscribes to spBv1.0/# on a local broker and keeps what arrives, in order."""

    def __init__(self, port: int) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-scada-host")
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._subscribed = threading.Event()
        self.connects = 0
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"the test host could not subscribe on port {port}")

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        # Again after every reconnect (a restarted broker forgets subscriptions).
        client.subscribe("spBv1.0/#", qos=1)
        self.connects += 1
        self._subscribed.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append(Seen(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def snapshot(self, kind: str | None = None) -> list[Seen]:
        """The messages so far (of one kind)."""
        with self._lock:
            return [s for s in self.seen if kind is None or s.kind == kind]

    def wait_for(self, predicate: Callable[[list[Seen]], object], timeout_s: float = 30.0) -> bool:
        """Poll ``predicate(messages)`` until true or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.05)
        return False

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Publish and wait until it has left."""
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def rebirth(self, group: str, node: str) -> None:
        """An NCMD Rebirth request, as a host sends it (QoS 0, [tck-id-topics-ncmd-mqtt])."""
        cmd = psp.NCmd(timestamp=int(time.time() * 1000), metrics=(psp.Metric(
            timestamp=None, name="Node Control/Rebirth", datatype=psp.DataType.BOOLEAN,
            value=True),))
        self.publish(f"spBv1.0/{group}/NCMD/{node}", cmd.encode(include_dtypes=True))

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.loop_stop()
        self._client.disconnect()


def bdseq_of(msg: Seen) -> int:
    """The bdSeq metric of an NBIRTH or NDEATH."""
    if msg.kind == "NDEATH":
        value = psp.NDeath.decode(msg.payload).bd_seq_metric.value
    else:
        value = {m.name: m.value for m in psp.NBirth.decode(msg.payload).metrics}["bdSeq"]
    assert isinstance(value, int)
    return value


def seq_of(msg: Seen) -> int:
    """The seq of any message but NDEATH, read with the generated schema."""
    raw = sparkplug_pb.Payload.FromString(msg.payload)
    assert raw.HasField("seq"), f"{msg.topic} has no seq"
    return int(raw.seq)
