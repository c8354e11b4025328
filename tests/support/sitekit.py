"""Test harness: a site config on disk, simulator and agent as real subprocesses, a subscriber."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.codecs.batch import decode_batch
from edge_agent.codecs.schema import SchemaBook
from edge_agent.drivers.sim import sim_control_sync
from edge_agent.protocol.readings import Reading
from edge_agent.tools.procs import spawn_until_ready, stop_process
from tests.support.brokers import free_port

PY = [sys.executable, "-m", "edge_agent"]


def write_site(tmp: Path, devices: list[tuple[str, str, int, str]], *, baud: int = 115200,
               poll_s: float = 1.0, window_s: float = 0.5, tcp_port: int | None = None,
               health_s: float = 60.0, extra: str = "", max_silence_s: float = 3600) -> Path:
    """Write a site config: ``devices`` are (name, bus "rs485"|"lan", unit id, profile)."""
    tcp_port = tcp_port or free_port()
    lines = [
        "[gateway]", 'id = "gw-test"', 'site = "test-site"', f'state_dir = "{tmp / "state"}"',
        f"health_interval_s = {health_s}",
        "[mqtt]", 'url = "mqtt://127.0.0.1:1"', 'topic_prefix = "edge"',
        "[batch]", f"window_s = {window_s}", f"max_silence_s = {max_silence_s}",
        "[buses.rs485]", 'type = "serial"', f'port = "{tmp / "rs485"}"', f"baudrate = {baud}",
        'parity = "N"',
        "[buses.lan]", 'type = "tcp"', 'host = "127.0.0.1"', f"port = {tcp_port}",
    ]
    for name, bus, unit, profile in devices:
        lines += [f"[devices.{name}]", f'bus = "{bus}"', f"unit_id = {unit}",
                  f'profile = "{profile}"', f"poll_interval_s = {poll_s}"]
    path = tmp / "site.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def control(sock_path: Path, msg: dict[str, Any]) -> dict[str, Any]:
    """One request/response on the simulator's control socket."""
    return sim_control_sync(sock_path, msg)


@contextmanager
def simulator(site: Path, tmp: Path, seed: int = 1) -> Iterator[Path]:
    """Run ``edge-agent simulate`` and yield its control socket once it answers."""
    sock = tmp / "sim.sock"

    def answers() -> bool:
        if not (sock.exists() and (tmp / "rs485").exists()):
            return False
        try:
            control(sock, {"cmd": "freeze", "on": False})
        except OSError:
            return False  # the socket exists a moment before the simulator listens on it
        return True

    proc = spawn_until_ready([*PY, "simulate", str(site), "--control", str(sock),
                              "--seed", str(seed)], tmp / "sim.log", answers, timeout_s=20,
                             what="the simulator")
    try:
        yield sock
    finally:
        stop_process(proc)


@contextmanager
def agent(site: Path, broker_url: str, tmp: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``edge-agent run`` against ``broker_url``."""
    proc = spawn_until_ready([*PY, "run", str(site), "--broker", broker_url, *extra],
                             tmp / "agent.log")
    try:
        yield proc
    finally:
        stop_process(proc)


class Collector:
    """Subscribes to a gateway's topics and keeps every decoded reading and state message."""

    def __init__(self, port: int, prefix: str = "edge") -> None:
        self.readings: list[Reading] = []
        self.batches: list[tuple[int, int]] = []
        self.states: list[dict[str, object]] = []
        self.health: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._book = SchemaBook()  # version 3 batches decode with their gateway's schema
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"{prefix}/+/#", qos=1)
        self._client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        gateway, kind = msg.topic.split("/")[-2:]
        with self._lock:
            if kind == "schema" and msg.payload:
                self._book.add(gateway, bytes(msg.payload))
            elif kind == "data":
                batch = decode_batch(bytes(msg.payload), gateway=gateway,
                                     schemas=self._book.lookup)
                self.batches.append((batch.epoch, batch.seq))
                self.readings.extend(batch.readings)
            elif kind == "state" and msg.payload:
                self.states.append(json.loads(msg.payload))
            elif kind == "health":
                self.health.append(json.loads(msg.payload))

    def snapshot(self) -> list[Reading]:
        """A copy of the readings so far."""
        with self._lock:
            return list(self.readings)

    def wait_for(self, predicate: Callable[[Collector], object], timeout_s: float = 30.0) -> bool:
        """Poll ``predicate(self)`` until true or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self):
                    return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.loop_stop()
        self._client.disconnect()


@contextmanager
def ingest_process(broker_url: str, db_url: str, tmp: Path, *extra: str,
                   name: str = "ingest") -> Iterator[subprocess.Popen[bytes]]:
    """Run ``edge-fleet ingest`` until its subscription is up; log in ``tmp/NAME.log``."""
    proc = spawn_until_ready([sys.executable, "-m", "edge_agent.fleet.cli", "ingest",
                              "--broker", broker_url, "--db", db_url, "--gap-scan-s", "1",
                              *extra], tmp / f"{name}.log", "ingest subscribed", timeout_s=20,
                             what=name)
    try:
        yield proc
    finally:
        stop_process(proc)


def spool_batches(path: Path) -> list[tuple[int, int, int]]:
    """(epoch, seq, readings) of the batches a spool file holds, after checking it is sound."""
    import sqlite3

    from edge_agent.runtime.spool_file import check_file

    problem = check_file(path)
    if problem is not None:
        raise AssertionError(f"spool {path} failed its check: {problem}")
    conn = sqlite3.connect(path)
    try:
        return [tuple(r) for r in conn.execute(
            "SELECT epoch, seq, readings FROM batches ORDER BY id")]
    finally:
        conn.close()


def spool_counters(path: Path) -> dict[str, int]:
    """The lifetime counters a spool file keeps (dropped batches and readings, ...)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        # The agent creates the file before its tables: a spool that young has counted nothing.
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            return {}
        return {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    finally:
        conn.close()
