"""The real agent takes signed configs from the fleet: applied, dry-run refused, reverted.

An enrolled gateway (state dir written by the fleet's enrolment) runs ``edge-agent run``
against simulated devices; bundles signed with the fleet's release keys are published
retained on its desired/config topic, and its retained reports are read back.

Switches repeat under load too (``SWITCHES`` of them on a 40-device site, more with
``EDGE_SWITCH_TRIES=N``): each must complete and report, never hang in the old agent's stop.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.fleet.registry import Registry
from edge_agent.protocol.bundle import make_bundle
from edge_agent.tools.devbroker import Mosquitto
from tests.support.brokers import free_ports
from tests.support.fleetkit import Pki, enrol_direct
from tests.support.sitekit import Collector, agent, control, simulator, write_site
from tests.support.stopkit import (
    Batches,
    site_devices,
    site_head,
    tcp_simulator,
    tcp_site,
)

pytestmark = [pytest.mark.integration, pytest.mark.serial]
GW = "gw-test"
SEED = 41
SWITCHES = int(os.environ.get("EDGE_SWITCH_TRIES", "20"))


def _config(site: Path, state: Path, devices: str) -> bytes:
    """The site config with this gateway's state dir and the given [devices] tables."""
    head = site.read_text().split("[devices.", 1)[0]
    head = "\n".join(f'state_dir = "{state}"' if line.startswith("state_dir") else line
                     for line in head.splitlines())
    return (head + "\n" + devices).encode()


LAMP = ('[devices.lamp]\nbus = "rs485"\nunit_id = 3\nprofile = "streetlight"\n'
        'poll_interval_s = 0.5\n')
METER = ('[devices.meter]\nbus = "lan"\nunit_id = 1\nprofile = "energy_meter"\n'
         'poll_interval_s = 0.5\n')
GHOST = ('[devices.ghost]\nbus = "rs485"\nunit_id = 99\nprofile = "env_monitor"\n'
         'poll_interval_s = 0.5\n')


class Reports:
    """Reads the gateway's retained reports."""

    def __init__(self, port: int) -> None:
        self.items: list[dict] = []  # type: ignore[type-arg]
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"edge/{GW}/reported", qos=1)
        self.c.loop_start()

    def _on(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.items.append(json.loads(msg.payload))

    def publish(self, blob: bytes) -> None:
        self.c.publish(f"edge/{GW}/desired/config", blob, qos=1, retain=True).wait_for_publish(10)

    def result(self, version: int, timeout_s: float = 60) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                done = [r for r in self.items if r.get("version") == version
                        and r.get("result") != "current"]
            if done:
                return done[0]
            time.sleep(0.1)
        raise AssertionError(f"no report for v{version}: {self.items}")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Site(NamedTuple):
    """An enrolled gateway's files and a signer of config bundles for it."""

    reg: Registry
    state: Path
    sim_site: Path
    local: Path
    bundle: Callable[[int, str], bytes]


def _enrolled_site(tmp_path: Path, broker: Mosquitto) -> Site:
    """Fleet keys, an enrolled gateway, a simulated lamp + meter, a local config with the lamp."""
    print("key seed", SEED)
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    enrol_direct(reg, tmp_path / "gw", [GW], "test-site", broker.url)
    state = tmp_path / "gw" / GW
    sim_site = write_site(tmp_path, [("lamp", "rs485", 3, "streetlight"),
                                     ("meter", "lan", 1, "energy_meter")])
    local = tmp_path / "local.toml"
    local.write_bytes(_config(sim_site, state, LAMP))
    now = int(time.time())

    def bundle(version: int, devices: str) -> bytes:
        return make_bundle("config", version, _config(sim_site, state, devices),
                           pki.release_keys, issued=now, expires=now + 3600, gateways=[GW],
                           roots=reg.roots())

    return Site(reg, state, sim_site, local, bundle)


def test_signed_configs_apply_refuse_and_revert_on_the_real_agent(
        tmp_path: Path, own_broker: Mosquitto) -> None:
    reg, state, sim_site, local, bundle = _enrolled_site(tmp_path, own_broker)

    reports = Reports(own_broker.port)
    data = Collector(own_broker.port)
    try:
        with simulator(sim_site, tmp_path) as sock, \
                agent(local, own_broker.url, tmp_path, "--health-gate-s", "2"):
            assert data.wait_for(lambda c: any(r.device == "lamp" for r in c.readings))
            # v1 adds the meter: dry-run passes, health holds, committed; meter readings flow.
            reports.publish(bundle(1, LAMP + METER))
            r1 = reports.result(1)
            assert r1["result"] == "applied", r1
            n = len(data.snapshot())
            assert data.wait_for(lambda c: any(r.device == "meter" for r in c.readings[n:]))
            # v2 names a device that never answers: refused at the dry run, v1 keeps running.
            reports.publish(bundle(2, LAMP + METER + GHOST))
            r2 = reports.result(2)
            assert r2["result"] == "dry_run_failed" and "ghost" in r2["reason"], r2
            assert r2["committed"] == 1
            # v3 passes the dry run, then the meter goes silent during the health gate:
            # reverted to v1, which is what runs afterwards.
            journal = state / "config-control.json"
            reports.publish(bundle(3, METER + LAMP))
            deadline = time.monotonic() + 30
            while '"switched"' not in journal.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            control(sock, {"device": "meter", "fault": "silent"})
            r3 = reports.result(3)
            assert r3["result"] == "reverted" and "meter" in r3["reason"], r3
            assert r3["committed"] == 1
            control(sock, {"device": "meter", "fault": "none"})
        assert (state / "config.good").read_bytes() == _config(sim_site, state, LAMP + METER)
    finally:
        reports.close()
        data.close()
        reg.close()


def test_kill_9_during_the_health_gate_leaves_the_gateway_on_its_last_good_config(
        tmp_path: Path, own_broker: Mosquitto) -> None:
    reg, state, sim_site, local, bundle = _enrolled_site(tmp_path, own_broker)

    reports = Reports(own_broker.port)
    data = Collector(own_broker.port)
    try:
        with simulator(sim_site, tmp_path):
            with agent(local, own_broker.url, tmp_path, "--health-gate-s", "60") as proc:
                assert data.wait_for(lambda c: any(r.device == "lamp" for r in c.readings))
                reports.publish(bundle(1, LAMP + METER))
                journal = state / "config-control.json"
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not (
                        journal.exists() and '"switched"' in journal.read_text()):
                    time.sleep(0.05)
                assert '"switched"' in journal.read_text()
                proc.kill()  # kill -9 in the middle of the 60 s health gate
                proc.wait()
            n = len(data.snapshot())
            with agent(local, own_broker.url, tmp_path, "--health-gate-s", "60"):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not any(
                        r.get("result") == "reverted" for r in reports.items):
                    time.sleep(0.1)
                reverted = [r for r in reports.items if r.get("result") == "reverted"]
                assert reverted, reports.items
                report = reverted[0]
                assert report["version"] == 1 and report["committed"] == 0, report
                # Back on the local config (the lamp), not the interrupted one (no meter).
                assert data.wait_for(lambda c: any(r.device == "lamp" for r in c.readings[n:]))
                time.sleep(1.0)
                assert not any(r.device == "meter" for r in data.snapshot()[n:])
        assert not (state / "config.good").exists()
    finally:
        reports.close()
        data.close()
        reg.close()


def test_config_switches_under_load_each_complete_and_report(
        tmp_path: Path, own_broker: Mosquitto) -> None:
    """``SWITCHES`` signed configs in a row on 40 devices, each on a bus of its own, polled every
    0.2 s or 0.25 s in turn: every switch stops an agent in the middle of its polling (the
    stop that used to hang on a cancel lost in a Modbus request), and each must be applied and
    reported, with data flowing on the last one."""
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    enrol_direct(reg, tmp_path / "gw", [GW], "test-site", own_broker.url)
    state = tmp_path / "gw" / GW
    ports = free_ports(40)

    def config(poll_s: float) -> bytes:
        return (site_head(state, ports) + site_devices(40, poll_s=poll_s)).encode()

    local = tmp_path / "local.toml"
    local.write_bytes(config(0.2))
    sim_site = tcp_site(tmp_path, 40, ports=ports, name="sim.toml")
    now = int(time.time())
    reports = Reports(own_broker.port)
    data = Batches(own_broker.port)
    took: list[float] = []
    try:
        with tcp_simulator(sim_site, tmp_path / "sim.log"), \
                agent(local, own_broker.url, tmp_path, "--health-gate-s", "0.5"):
            deadline = time.monotonic() + 30
            while not data.seen and time.monotonic() < deadline:
                time.sleep(0.1)
            assert data.seen, "no data from the gateway before the first switch"
            for version in range(1, SWITCHES + 1):
                blob = make_bundle("config", version, config(0.25 if version % 2 else 0.2),
                                   pki.release_keys, issued=now, expires=now + 3600,
                                   gateways=[GW], roots=reg.roots())
                started = time.monotonic()
                reports.publish(blob)
                report = reports.result(version, timeout_s=60)
                took.append(time.monotonic() - started)
                assert report["result"] == "applied", (version, report)
                assert report["committed"] == version, report
            # The last config polls and reports: its agent's batches keep arriving.
            last = max(e for e, _ in data.seen)
            so_far = len(data.of(last))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(data.of(last)) <= so_far + 2:
                time.sleep(0.1)
            assert len(data.of(last)) > so_far + 2, "no data after the last switch"
    finally:
        print(f"\n{len(took)} of {SWITCHES} switches applied; time per switch median "
              f"{statistics.median(took) if took else float('nan'):.1f} s, max "
              f"{max(took) if took else float('nan'):.1f} s")
        reports.close()
        data.close()
        reg.close()
