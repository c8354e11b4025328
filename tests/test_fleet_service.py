"""The fleet service end to end: real mosquitto, ``edge-fleet serve`` and simulated gateways
(real verifier, control plane and files) as subprocesses. A rollout with injected failures
aborts at its threshold and the previous config is restored; a gateway killed with -9 during
apply comes back on its last known good config. One gateway's poison message (retained) costs
only that message, before and after a restart; a dying task is restarted and shows in health."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.control.truststore import load_trust
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

pytestmark = pytest.mark.integration
SEED = 17
print(f"test_fleet_service: key seed {SEED}")
GOOD = b'[gateway]\nsite = "north"\n# config A: good\n'
BROKEN = b'[gateway]\nsite = "north"\n# config B: broken on some gateways\n'


def status(reg: Registry, rid: str) -> dict[str, Any]:
    return RolloutStore(reg).load(rid)[0]


def test_rollout_with_injected_failures_aborts_and_restores(tmp_path: Path,
                                                            own_broker: Mosquitto) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    gws = [f"gw-{i:02d}" for i in range(20)]
    enrol_direct(reg, tmp_path / "gw", gws, "north", own_broker.url)
    failing = gws[::3]  # 7 of 20 fail their health gate on the broken config
    with running(serve_args(db, own_broker.url, "--tick-s", "0.1"), tmp_path / "serve.log"), \
            running(simgateway_args(own_broker.url, tmp_path / "gw", gws, "--fail",
                                    ",".join(failing), "--no-fsync"),
                    tmp_path / "sim.log", ready="ready 20"):
        ops.start_rollout(reg, GOOD, ["site:north"], pki.release_keys, waves=[10, 50, 100],
                          abort_above_pct=20, abort_min_count=3, wave_deadline_s=60,
                          rollout_id="good")
        wait_until(lambda: status(reg, "good")["status"] == ro.SUCCEEDED, 60,
                   "the good rollout")
        ops.start_rollout(reg, BROKEN, ["site:north"], pki.release_keys, waves=[10, 50, 100],
                          abort_above_pct=20, abort_min_count=3, wave_deadline_s=60,
                          rollout_id="broken")
        wait_until(lambda: status(reg, "broken")["status"] == ro.ABORTED, 60, "the abort")
        wait_until(lambda: ro.REVERTING not in status(reg, "broken")["gw"].values(), 60,
                   "every gateway offered the previous config back to report")
        state = status(reg, "broken")
        sim_log = (tmp_path / "sim.log").read_text()
    counts = ro.counts(state)
    print(counts, state["abort_reason"])
    assert "failed (> 20%)" in state["abort_reason"]
    assert counts.get(ro.WAITING, 0) > 0, "the abort came before the last wave"
    assert counts.get(ro.RESTORE_FAILED, 0) == 0 and counts[ro.RESTORED] >= 3
    broken_v, revert_v = state["plan"]["version"], state["plan"]["revert_version"]
    for gw in gws:
        running_now = (tmp_path / "gw" / gw / "running.toml").read_bytes()
        assert running_now == GOOD, f"{gw} runs {running_now!r}"
        floor = load_trust(tmp_path / "gw" / gw).floor("config")
        if state["gw"][gw] == ro.RESTORED:
            assert floor == revert_v  # the old config, under a newer version
        else:
            assert state["gw"][gw] == ro.WAITING and floor == broken_v - 1
    # The failing gateways that were offered the broken config reverted by themselves.
    offered_failing = [gw for gw in failing if state["gw"][gw] != ro.WAITING]
    assert offered_failing
    for gw in offered_failing:
        assert f'report {gw} ' in sim_log and '"result": "reverted"' in sim_log
        assert "health gate failed" in state["reasons"].get(gw, "health gate failed")
    rows = {g.id: g for g in reg.gateways()}
    assert all(rows[gw].config_version in (broken_v - 1, revert_v) for gw in gws)
    reg.close()


def _journal(state_dir: Path) -> dict[str, Any]:
    path = state_dir / "config-control.json"
    return dict(json.loads(path.read_bytes())) if path.exists() else {}


def test_gateway_killed_during_apply_comes_back_on_its_good_config(
        tmp_path: Path, own_broker: Mosquitto) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    enrol_direct(reg, tmp_path / "gw", ["gw-k"], "north", own_broker.url)
    state_dir = tmp_path / "gw" / "gw-k"
    with running(serve_args(db, own_broker.url, "--tick-s", "0.1"), tmp_path / "serve.log"):
        with running(simgateway_args(own_broker.url, tmp_path / "gw", ["gw-k"]),
                     tmp_path / "sim1.log", ready="ready 1"):
            ops.start_rollout(reg, GOOD, ["gw:gw-k"], pki.release_keys, rollout_id="one",
                              waves=[100])
            wait_until(lambda: status(reg, "one")["status"] == ro.SUCCEEDED, 30, "rollout one")
        # A long health gate, and kill -9 while the new config is switched in.
        with running(simgateway_args(own_broker.url, tmp_path / "gw", ["gw-k"],
                                     "--hold-s", "600"),
                     tmp_path / "sim2.log", ready="ready 1") as sim:
            ops.start_rollout(reg, BROKEN, ["gw:gw-k"], pki.release_keys, rollout_id="two",
                              waves=[100], wave_deadline_s=600)
            wait_until(lambda: (_journal(state_dir).get("trial") or {}).get("stage")
                       == "switched", 30, "the trial to be switched in")
            assert (state_dir / "running.toml").read_bytes() == BROKEN
            os.kill(sim.pid, signal.SIGKILL)
            sim.wait()
        assert load_trust(state_dir).floor("config") == 1  # nothing committed
        with running(simgateway_args(own_broker.url, tmp_path / "gw", ["gw-k"]),
                     tmp_path / "sim3.log", ready="ready 1"):
            wait_until(lambda: status(reg, "two")["gw"]["gw-k"] == ro.FAILED, 30,
                       "the fleet to see the revert")
            # The retained bundle is delivered again and refused: it already failed here.
            wait_until(lambda: "already failed here" in (tmp_path / "sim3.log").read_text(),
                       30, "the re-delivered bundle to be refused")
    assert (state_dir / "running.toml").read_bytes() == GOOD
    assert load_trust(state_dir).floor("config") == 1
    assert _journal(state_dir)["trial"] is None
    log3 = (tmp_path / "sim3.log").read_text()
    assert "gateway restarted during apply (stage switched)" in log3
    reg.close()
    time.sleep(0)  # keep the with-blocks' teardown before the leftovers check


# ------------------------------------------------------------------ nothing stops silently

def _publish_retained(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish retained at QoS 1 and wait for every PUBACK."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for info in [c.publish(t, p, qos=1, retain=True) for t, p in messages]:
            info.wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


def _health(log_path: Path) -> dict[str, Any]:
    port = re.findall(r"enrolment http://127\.0\.0\.1:(\d+)", log_path.read_text())[-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def _report(version: int) -> bytes:
    return json.dumps({"kind": "config", "version": version, "result": "applied",
                       "committed": version, "ts": 1, "reason": "",
                       "status": {"kind": "config", "committed": version}}).encode()


def _reported(reg: Registry, gw: str, version: int) -> bool:
    return {g.id: g for g in reg.gateways()}[gw].result_version == version


def _listing(db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent.fleet.cli", "gateways", "--db", db],
                          capture_output=True, text=True, timeout=60)


# Each observed poison, on the topic it came on (retained, as gateways publish reported).
POISONS = {
    "version-overflow": ("reported", json.dumps({"version": 10**30}).encode(),
                         "reported:int_range"),
    "deep-nesting": ("reported", b"[" * 100_000, "reported:too_large"),
    "oversize-health": ("health", json.dumps({"devices": {f"d{i}": {"pad": "x" * 4000}
                                                          for i in range(1100)}}).encode(),
                        "health:too_large"),
}


@pytest.mark.parametrize("case", sorted(POISONS))
def test_a_poison_message_costs_only_itself(case: str, tmp_path: Path,
                                            own_broker: Mosquitto) -> None:
    kind, poison, reason = POISONS[case]
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    for gw in ("gw-evil", "gw-good"):
        reg.add_gateway(gw, "north", [], 0)
    _publish_retained(own_broker.port, [(f"edge/gw-evil/{kind}", poison)])
    log = tmp_path / "serve.log"
    args = serve_args(db, own_broker.url, "--http", "127.0.0.1:0", "--insecure-http")
    # The over-20,000-character health that used to be stored cut: stored whole now.
    big_health = json.dumps({"devices": {f"d{i}": {"status": "online", "pad": "y" * 900}
                                         for i in range(30)}}).encode()
    for run, version in ((1, 3), (2, 4)):  # the second run: a restart, the poison retained
        with running(args, log, ready="enrolment http://") as proc:
            _publish_retained(own_broker.port, [("edge/gw-good/reported", _report(version)),
                                                ("edge/gw-good/health", big_health)])
            wait_until(functools.partial(_reported, reg, "gw-good", version), 30,
                       f"gw-good's report v{version} (run {run})")
            wait_until(lambda: _health(log)["consumer"]["rejected"].get(reason, 0) >= 1, 30,
                       f"the {reason} rejection (run {run})")
            health = _health(log)
            assert proc.poll() is None
            assert health["connected"] is True and health["ok"] is True, health
            assert health["consumer"]["last_message_ms"] is not None
            assert all(t["state"] == "running" and t["restarts"] == 0
                       for t in health["tasks"].values()), health["tasks"]
    rows = {g.id: g for g in reg.gateways()}
    assert rows["gw-good"].health == json.loads(big_health)
    assert rows["gw-evil"].result is None and rows["gw-evil"].health is None
    listing = _listing(db)
    assert listing.returncode == 0 and "2 gateways" in listing.stdout, listing.stderr
    text = log.read_text()
    assert text.count(f"rejected ({reason})") == 2  # once per run, with the topic named
    assert "edge/gw-evil/" in text
    reg.close()


def test_a_cut_health_row_from_before_does_not_break_the_listing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    for gw in ("gw-a", "gw-b"):
        reg.add_gateway(gw, "north", [], 0)
    reg.record_health("gw-a", {"uptime_s": 1.0}, 1)
    reg.execute("UPDATE gateways SET health = ? WHERE id = 'gw-b'",
                (json.dumps({"pad": "z" * 30_000})[:20_000],))
    reg.close()
    listing = _listing(db)
    assert listing.returncode == 0, listing.stderr
    assert "gw-a" in listing.stdout and "gw-b" in listing.stdout
    assert "2 gateways" in listing.stdout


def test_a_dying_task_is_restarted_and_shows_in_health(tmp_path: Path,
                                                       own_broker: Mosquitto) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    reg.add_gateway("gw-good", "north", [], 0)
    log = tmp_path / "serve.log"
    with running(serve_args(db, own_broker.url, "--http", "127.0.0.1:0", "--insecure-http",
                            "--tick-s", "0.1"), log, ready="enrolment http://") as proc:
        wait_until(lambda: _health(log)["connected"], 30, "the service to connect")
        # Pull the rollouts table from under the tick loop: each step now raises.
        reg.execute("DROP TABLE rollouts")
        wait_until(lambda: _health(log)["tasks"]["fleet-tick"]["restarts"] >= 1, 30,
                   "the tick loop's restart to show in health")
        health = _health(log)
        tick = health["tasks"]["fleet-tick"]
        assert health["ok"] is False and "no such table" in tick["last_error"], health
        # The consumer goes on meanwhile.
        _publish_retained(own_broker.port, [("edge/gw-good/reported", _report(7))])
        wait_until(lambda: reg.gateways()[0].result_version == 7, 30, "the report")
        Registry(db).close()  # puts the tables back
        wait_until(lambda: _health(log)["tasks"]["fleet-tick"]["state"] == "running"
                   and _health(log)["ok"], 60, "the tick loop to run again")
        assert proc.poll() is None
    text = log.read_text()
    assert text.count("task fleet-tick died; restarting") == 1
    assert text.count("Traceback") == 1  # logged once with its traceback, then one line each
    reg.close()
