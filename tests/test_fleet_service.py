"""The fleet service end to end: real mosquitto, ``edge-fleet serve`` and simulated gateways
(real verifier, control plane and files) as subprocesses. A rollout with injected failures
aborts at its threshold and the previous config is restored; a gateway killed with -9 during
apply comes back on its last known good config."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

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


def status(reg: Registry, rid: str) -> dict:
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


def _journal(state_dir: Path) -> dict:
    path = state_dir / "config-control.json"
    return json.loads(path.read_bytes()) if path.exists() else {}


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
