"""Enrolment over HTTP (``edge-agent enroll``) and broker isolation with generated mosquitto
password and ACL files: gateway A cannot publish to B's topics nor read B's desired config."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.control.truststore import load_trust
from edge_agent.fleet import actions as ops
from edge_agent.fleet.brokerconf import mosquitto_hash, write_broker_config
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.bundle import root_fingerprint
from edge_agent.tools.devbroker import Mosquitto
from edge_agent.tools.enroll import enroll_main
from tests.support.fleetkit import Pki, running, serve_args, wait_until

pytestmark = pytest.mark.integration
SEED = 23
print(f"test_fleet_enrol: key seed {SEED}")
FLEET_PASSWORD = "fleet-secret-for-tests"


class Client:
    """A paho MQTT 5 client that records messages and PUBACK reason codes."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, ReasonCode] = {}
        self.connected = threading.Event()
        self.connect_rc: ReasonCode | None = None
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-test",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_connect = self._on_connect
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode,
                    _p: Properties | None) -> None:
        self.connect_rc = rc
        self.connected.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode,
                    _p: Properties | None) -> None:
        with self._lock:
            self.acks[mid] = rc

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        wait_until(lambda: info.mid in self.acks, 10, f"PUBACK for {topic}")
        return self.acks[info.mid]

    def topics(self) -> set[str]:
        with self._lock:
            return {t for t, _ in self.messages}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Registry, Pki, str]]:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    yield reg, pki, db
    reg.close()


def test_enrol_over_http_then_isolation_on_the_broker(tmp_path: Path,
                                                      fleet: tuple[Registry, Pki, str]) -> None:
    reg, pki, db = fleet
    (tmp_path / "fleet.pw").write_text(FLEET_PASSWORD)
    auth = tmp_path / "auth"
    # The broker starts with only the fleet user; gateways are added after enrolment.
    write_broker_config(auth, [("fleet", mosquitto_hash(FLEET_PASSWORD))])
    broker = Mosquitto(extra_conf=(auth / "mosquitto-auth.conf").read_text())
    broker.start()
    try:
        with running(serve_args(db, broker.url, "--username", "fleet", "--password-file",
                                str(tmp_path / "fleet.pw"), "--http", "127.0.0.1:0",
                                "--tick-s", "0.1"),
                     tmp_path / "serve.log", ready="enrolment http://") as _svc:
            url = (tmp_path / "serve.log").read_text().split("enrolment http://")[1].split()[0]
            url = f"http://{url}"
            fp = root_fingerprint(reg.latest_root())
            tokens = {gw: ops.issue_token(reg, gw, "north", ["lamps"]) for gw in ("gw-a", "gw-b")}
            for gw, token in tokens.items():
                assert enroll_main(["--fleet", url, "--token", token, "--state-dir",
                                    str(tmp_path / gw), "--root-sha256", fp]) == 0
            # A token works once; an enrolled gateway is not silently re-enrolled.
            assert enroll_main(["--fleet", url, "--token", tokens["gw-a"], "--state-dir",
                                str(tmp_path / "again")]) == 2
            assert not (tmp_path / "again" / "trust.json").exists()
            for gw in ("gw-a", "gw-b"):
                for name in ("trust.json", "identity.json", "mqtt.password"):
                    assert (tmp_path / gw / name).stat().st_mode & 0o777 == 0o600, name
                trust = load_trust(tmp_path / gw)
                assert trust.gateway_id == gw and trust.root_version == 1
                assert root_fingerprint(trust.root) == fp
            # Regenerate the broker's files from the registry and reload (SIGHUP).
            (tmp_path / "fleet.pw").write_text(FLEET_PASSWORD)
            write_broker_config(auth, [("fleet", mosquitto_hash(FLEET_PASSWORD)),
                                       *reg.password_hashes()])
            assert broker.proc is not None
            broker.proc.send_signal(1)
            time.sleep(0.5)
            _isolation(tmp_path, broker, reg, pki)
    finally:
        broker.close()


def _creds(tmp_path: Path, gw: str) -> tuple[str, str]:
    ident = json.loads((tmp_path / gw / "identity.json").read_text())
    return ident["mqtt"]["username"], ident["mqtt"]["password"]


def _isolation(tmp_path: Path, broker: Mosquitto, reg: Registry, pki: Pki) -> None:
    a = Client(broker.port, *_creds(tmp_path, "gw-a"))
    b = Client(broker.port, *_creds(tmp_path, "gw-b"))
    fleet = Client(broker.port, "fleet", FLEET_PASSWORD)
    wrong = Client(broker.port, "gw-b", "not-the-password")
    try:
        for c in (a, b, fleet, wrong):
            assert c.connected.wait(10)
        assert wrong.connect_rc is not None and wrong.connect_rc.is_failure
        assert a.connect_rc is not None and not a.connect_rc.is_failure
        fleet.c.subscribe("edge/#", qos=1)
        a.c.subscribe([("edge/gw-b/desired/#", 1), ("edge/+/desired/#", 1), ("edge/#", 1)])
        b.c.subscribe("edge/gw-b/desired/#", qos=1)
        time.sleep(0.3)
        # The fleet publishes B's desired config (retained), as the service does.
        ops.start_rollout(reg, b"[gateway]\n", ["gw:gw-b"], pki.release_keys, waves=[100])
        wait_until(lambda: "edge/gw-b/desired/config" in b.topics(), 15,
                   "B to receive its desired config")
        # A cannot publish into B's topics: refused with MQTT 5 reason 0x87 (not authorised).
        for topic in ("edge/gw-b/data", "edge/gw-b/reported", "edge/gw-b/state",
                      "edge/gw-b/desired/config"):
            assert a.publish(topic, b"forged").value == 0x87, topic
        assert a.publish("edge/gw-a/data", b"own data").value == 0
        wait_until(lambda: "edge/gw-a/data" in fleet.topics(), 10, "A's own data at the fleet")
        time.sleep(0.3)
        assert not any(t.startswith("edge/gw-b/") and p == b"forged"
                       for t, p in fleet.messages), "a forged message reached the fleet"
        # A never saw B's desired config: not live, not retained, not by wildcard.
        assert not any(t.startswith("edge/gw-b/") for t in a.topics()), a.topics()
        # A late subscriber as A does not get B's retained bundle either.
        late = Client(broker.port, *_creds(tmp_path, "gw-a"))
        try:
            late.c.subscribe("edge/gw-b/desired/config", qos=1)
            late.c.subscribe("edge/gw-a/desired/config", qos=1)
            time.sleep(0.5)
            assert late.messages == []
        finally:
            late.close()
    finally:
        for c in (a, b, fleet, wrong):
            c.close()
