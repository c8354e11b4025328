"""The attack list sent over MQTT, by an independent client, to a running simulated gateway
(real verifier, control plane and state files): every attack is answered "rejected" with its
reason and nothing changes on the gateway; a genuine bundle afterwards still applies."""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.fleet import actions as ops
from edge_agent.fleet import rollout as ro
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.tools.devbroker import Mosquitto
from tests.support.attacks import attack_bundles
from tests.support.fleetkit import (
    Pki,
    enrol_direct,
    running,
    serve_args,
    simgateway_args,
    wait_until,
)

pytestmark = pytest.mark.integration
SEED = 31
print(f"test_fleet_attacks: key seed {SEED}")
GW = "gw-x"


def _rollout_is(reg: Registry, rollout_id: str, status: str) -> bool:
    return bool(RolloutStore(reg).load(rollout_id)[0]["status"] == status)


class Attacker:
    """A plain MQTT client: publishes retained bundles to the gateway, reads its reports."""

    def __init__(self, port: int) -> None:
        self.reports: list[dict[str, Any]] = []
        self.desired: list[bytes] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe([(f"edge/{GW}/reported", 1), (f"edge/{GW}/desired/config", 1)])
        self.c.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/reported"):
                self.reports.append(json.loads(msg.payload))
            else:
                self.desired.append(bytes(msg.payload))

    def send(self, blob: bytes) -> dict[str, Any]:
        n = len(self.reports)
        self.c.publish(f"edge/{GW}/desired/config", blob, qos=1, retain=True).wait_for_publish(10)
        wait_until(lambda: len(self.reports) > n, 20, "the gateway's report")
        with self._lock:
            return self.reports[n]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_attack_list_over_mqtt(tmp_path: Path, own_broker: Mosquitto) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    enrol_direct(reg, tmp_path / "gw", [GW, "gw-y"], "north", own_broker.url)
    state_dir = tmp_path / "gw" / GW
    attacker = Attacker(own_broker.port)
    try:
        with running(serve_args(db, own_broker.url, "--tick-s", "0.1"), tmp_path / "serve.log"), \
                running(simgateway_args(own_broker.url, tmp_path / "gw", [GW]),
                        tmp_path / "sim.log", ready="ready 1"):
            # Two genuine rollouts: the gateway commits v1 then v2; the attacker captures v1.
            for rid, body in (("r1", b"# genuine one\n"), ("r2", b"# genuine two\n")):
                ops.start_rollout(reg, body, [f"gw:{GW}"], pki.release_keys, rollout_id=rid,
                                  waves=[100])
                wait_until(functools.partial(_rollout_is, reg, rid, ro.SUCCEEDED), 30,
                           f"rollout {rid}")
            wait_until(lambda: len(attacker.desired) >= 2, 10, "captured bundles")
            captured_v1 = attacker.desired[0]
            before = snapshot(state_dir)
            attacks = attack_bundles(gateway=GW, other_gateway="gw-y", floor=2,
                                     captured_old=captured_v1, roots=reg.roots(),
                                     root_keys=list(pki.roots),
                                     release_keys=pki.release_keys, now=int(time.time()))
            assert len(attacks) == 13
            for attack in attacks:
                report = attacker.send(attack.blob)
                print(f"{attack.name}: {report['result']}: {report['reason']}")
                assert report["result"] == "rejected", (attack.name, report)
                assert attack.reason in report["reason"], (attack.name, report["reason"])
                assert report["committed"] == 2
                assert snapshot(state_dir) == before, f"{attack.name} changed the gateway"
            # Still a working gateway: a genuine v3 from the fleet applies.
            ops.start_rollout(reg, b"# genuine three\n", [f"gw:{GW}"], pki.release_keys,
                              rollout_id="r3", waves=[100])
            wait_until(lambda: RolloutStore(reg).load("r3")[0]["status"] == ro.SUCCEEDED, 30,
                       "rollout r3 after the attacks")
        assert (state_dir / "running.toml").read_bytes() == b"# genuine three\n"
    finally:
        attacker.close()
        reg.close()
