"""Sparkplug bytes per reading on the demo site, beside our own batch format.

Runs the demo site (configs/demo.toml: six simulated devices on an RS-485 PTY and Modbus TCP,
2 s batch window) with ``[sparkplug]`` enabled against a private mosquitto, as real processes,
and records every payload the broker delivers: our QoS 1 batches on ``edge/{gw}/data`` and the
Sparkplug messages on ``spBv1.0/#``. Prints payload bytes per reading (MQTT topics and headers
not counted) for our batches, for Sparkplug DDATA alone, and for all Sparkplug messages
(births and deaths included). Figures only, never a pass/fail. Usage:

    .venv/bin/python bench/sparkplug_bytes.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

# the repository root: the site, simulator and agent helpers are the test harness's
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_agent.codecs.batch import decode_batch
from edge_agent.tools.devbroker import Mosquitto
from tests.support.brokers import free_port
from tests.support.sitekit import agent, simulator
from tests.support.sparkplug_pb import Payload

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


def demo_site(tmp: Path) -> Path:
    """configs/demo.toml with its paths and port moved into ``tmp`` (and Sparkplug enabled)."""
    text = DEMO.read_text()
    text = text.replace('state_dir = "../run/demo-state"', f'state_dir = "{tmp / "state"}"')
    text = re.sub(r'port = "/tmp/edge-agent-demo/rs485-1"', f'port = "{tmp / "rs485"}"', text)
    text = text.replace("port = 15020", f"port = {free_port()}")
    if "[sparkplug]" not in text:
        text += '\n[sparkplug]\nenabled = true\ngroup_id = "demo-city"\n'
    site = tmp / "site.toml"
    site.write_text(text)
    return site


class Recorder:
    """Every payload on the gateway's data topic and on spBv1.0/#, with its topic."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._c.on_message = self._on
        self._c.connect("127.0.0.1", port)
        self._c.subscribe([("edge/+/data", 1), ("spBv1.0/#", 1)])
        self._c.loop_start()

    def _on(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def close(self) -> list[tuple[str, bytes]]:
        """Stop and return what was recorded."""
        self._c.loop_stop()
        self._c.disconnect()
        return list(self.got)


def main(argv: list[str] | None = None) -> int:
    """Run the demo site for a while and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    broker = Mosquitto()
    broker.start()
    try:
        with tempfile.TemporaryDirectory(prefix="spb-bytes-") as d:
            tmp = Path(d)
            site = demo_site(tmp)
            rec = Recorder(broker.port)
            with simulator(site, tmp), agent(site, broker.url, tmp):
                time.sleep(args.seconds)
            got = rec.close()
    finally:
        broker.close()
    ours_bytes = ours_readings = 0
    ddata_bytes = ddata_metrics = spb_bytes = 0
    kinds: dict[str, int] = {}
    for topic, payload in got:
        if topic.startswith("edge/"):
            ours_bytes += len(payload)
            ours_readings += len(decode_batch(payload).readings)
            continue
        kind = topic.split("/")[2]
        kinds[kind] = kinds.get(kind, 0) + 1
        spb_bytes += len(payload)
        if kind == "DDATA":
            ddata_bytes += len(payload)
            ddata_metrics += len(Payload.FromString(payload).metrics)
    print(f"demo site, {args.seconds:.0f} s: {ours_readings} readings in our batches, "
          f"{ddata_metrics} metrics in Sparkplug DDATA; Sparkplug messages {kinds}")
    if ours_readings and ddata_metrics:
        print(f"our batch format:        {ours_bytes / ours_readings:6.2f} bytes/reading "
              f"({ours_bytes} bytes)")
        print(f"Sparkplug DDATA:         {ddata_bytes / ddata_metrics:6.2f} bytes/reading "
              f"({ddata_bytes} bytes)")
        print(f"Sparkplug, all messages: {spb_bytes / ddata_metrics:6.2f} bytes/reading "
              f"({spb_bytes} bytes, births and deaths included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
