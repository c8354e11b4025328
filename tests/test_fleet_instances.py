"""Several ``edge-fleet serve`` instances on one PostgreSQL and one broker: no rollout is
driven twice, and a kill -9 of the instance driving a rollout mid-way does not stop it."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.fleet import actions as ops
from edge_agent.fleet import rollout as ro
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.tools.devbroker import Mosquitto
from tests.support.fleetkit import (
    Pki,
    enrol_direct,
    running,
    serve_args,
    simgateway_args,
    wait_until,
)
from tests.support.pgdb import pg_available, pg_schema

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not pg_available(), reason="no PostgreSQL on 127.0.0.1:5432")]
SEED = 29
print(f"test_fleet_instances: key seed {SEED}")


class DesiredCounter:
    """Counts every desired-config message the broker delivers live (not retained replays)."""

    def __init__(self, port: int) -> None:
        self.counts: Counter[tuple[str, bytes]] = Counter()
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("edge/+/desired/config", qos=1)
        self.c.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:
            with self._lock:
                self.counts[(msg.topic.split("/")[1], bytes(msg.payload))] += 1

    def per_gateway(self) -> Counter[str]:
        with self._lock:
            return Counter(gw for (gw, _), n in self.counts.items() for _ in range(n))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_two_instances_then_kill_the_driver_mid_rollout(tmp_path: Path,
                                                        own_broker: Mosquitto) -> None:
    with pg_schema() as db:
        reg = Registry(db)
        pki = Pki.from_seed(SEED)
        pki.init(reg)
        gws = [f"gw-{i:02d}" for i in range(24)]
        enrol_direct(reg, tmp_path / "gw", gws, "north", own_broker.url)
        counter = DesiredCounter(own_broker.port)
        store = RolloutStore(reg)
        common = ("--tick-s", "0.1", "--lease-s", "1.5")
        try:
            with running(serve_args(db, own_broker.url, *common, "--instance", "svc-a"),
                         tmp_path / "a.log") as svc_a, \
                    running(serve_args(db, own_broker.url, *common, "--instance", "svc-b"),
                            tmp_path / "b.log") as svc_b, \
                    running(simgateway_args(own_broker.url, tmp_path / "gw", gws, "--hold-s",
                                            "0.3", "--no-fsync"),
                            tmp_path / "sim.log", ready="ready 24"):
                procs = {"svc-a": svc_a, "svc-b": svc_b}
                # 1. Both instances alive: every gateway gets the bundle exactly once.
                ops.start_rollout(reg, b"# one\n", ["all"], pki.release_keys, rollout_id="one",
                                  waves=[10, 50, 100])
                wait_until(lambda: store.load("one")[0]["status"] == ro.SUCCEEDED, 60,
                           "rollout one")
                assert counter.per_gateway() == Counter(dict.fromkeys(gws, 1))
                # 2. Kill -9 whichever instance drives rollout two after its first wave.
                ops.start_rollout(reg, b"# two\n", ["all"], pki.release_keys, rollout_id="two",
                                  waves=[5, 10, 25, 50, 75, 100])
                wait_until(lambda: store.load("two")[0]["wave"] >= 2, 60, "wave 3 of two")
                owner = reg.fetchone("SELECT owner FROM rollouts WHERE id = ?", ("two",))
                assert owner is not None and owner[0] in procs
                os.kill(procs[owner[0]].pid, signal.SIGKILL)
                procs[owner[0]].wait()
                wait_until(lambda: store.load("two")[0]["status"] == ro.SUCCEEDED, 60,
                           "rollout two after the kill")
                final_owner = reg.fetchone("SELECT owner FROM rollouts WHERE id = ?", ("two",))
                sim_log = (tmp_path / "sim.log").read_text()
        finally:
            counter.close()
            reg.close()
    assert final_owner is not None and final_owner[0] != owner[0]
    applied = Counter(line.split()[1] for line in sim_log.splitlines()
                      if line.startswith("report ") and '"result": "applied"' in line)
    # every gateway applied each of the two versions exactly once
    assert applied == Counter(dict.fromkeys(gws, 2)), applied
    # a re-publish after the kill is allowed (the outbox is re-sent), a third copy is not
    assert max(counter.per_gateway().values()) <= 3
