"""The fleet under load: a service starved of CPU fails no gateway, and two instances split
the intake through a share group on one PostgreSQL (counts, never timings)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

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

pytestmark = [pytest.mark.integration, pytest.mark.serial]
SEED = 18
print(f"test_fleet_scale: key seed {SEED}")


def _health(log_path: Path) -> dict[str, Any]:
    port = re.findall(r"enrolment http://127\.0\.0\.1:(\d+)", log_path.read_text())[-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def _done(store: RolloutStore, rid: str) -> bool:
    return store.core(rid)["status"] not in ro.ACTIVE


def test_a_service_stopped_past_the_deadline_fails_no_gateway(tmp_path: Path,
                                                               own_broker: Mosquitto) -> None:
    """SIGSTOP the service for 2.5 wave deadlines right after it published a wave: the
    gateways apply and report meanwhile, their reports wait unread at the broker, and on
    SIGCONT not one of them may be taken for silent. Any failure aborts this rollout."""
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    gws = [f"gw-{i:02d}" for i in range(150)]
    enrol_direct(reg, tmp_path / "gw", gws, "north", own_broker.url)
    store = RolloutStore(reg)
    try:
        with running(serve_args(db, own_broker.url, "--tick-s", "0.05"),
                     tmp_path / "serve.log") as svc, \
                running(simgateway_args(own_broker.url, tmp_path / "gw", gws, "--no-fsync"),
                        tmp_path / "sim.log", ready="ready 150"):
            ops.start_rollout(reg, b"# starved\n", ["all"], pki.release_keys,
                              rollout_id="starved", waves=[2, 100], wave_deadline_s=2,
                              abort_above_pct=0, abort_min_count=1)
            # The second wave's offers are persisted before they are published, and published
            # within the same step: stop the service as soon as they are decided.
            wait_until(lambda: store.core("starved")["wave"] >= 1, 60, "the second wave")
            os.kill(svc.pid, signal.SIGSTOP)
            try:
                time.sleep(5.0)  # 2.5 deadlines: every report of the wave now waits unread
            finally:
                os.kill(svc.pid, signal.SIGCONT)
            wait_until(lambda: _done(store, "starved"), 60, "the rollout to finish")
            core = store.core("starved")
    finally:
        reg.close()
    assert core["status"] == ro.SUCCEEDED, core
    assert core["counts"] == {ro.APPLIED: 150}, core


@pytest.mark.skipif(not pg_available(), reason="no PostgreSQL on 127.0.0.1:5432")
def test_two_instances_split_the_intake_through_a_share_group(tmp_path: Path,
                                                              own_broker: Mosquitto) -> None:
    with pg_schema() as db:
        reg = Registry(db)
        pki = Pki.from_seed(SEED)
        pki.init(reg)
        gws = [f"gw-{i:02d}" for i in range(40)]
        enrol_direct(reg, tmp_path / "gw", gws, "north", own_broker.url)
        store = RolloutStore(reg)
        common = ("--tick-s", "0.1", "--share-group", "fleet", "--http", "127.0.0.1:0",
                  "--insecure-http")
        try:
            with running(serve_args(db, own_broker.url, *common, "--instance", "svc-a"),
                         tmp_path / "a.log", ready="enrolment http://"), \
                    running(serve_args(db, own_broker.url, *common, "--instance", "svc-b"),
                            tmp_path / "b.log", ready="enrolment http://"), \
                    running(simgateway_args(own_broker.url, tmp_path / "gw", gws,
                                            "--no-fsync"), tmp_path / "sim.log",
                            ready="ready 40"):
                wait_until(lambda: all(_health(tmp_path / f"{n}.log")["connected"]
                                       for n in "ab"), 30, "both instances to connect")
                ops.start_rollout(reg, b"# shared\n", ["all"], pki.release_keys,
                                  rollout_id="shared", waves=[10, 50, 100],
                                  abort_above_pct=0, abort_min_count=1)
                wait_until(lambda: _done(store, "shared"), 60, "the rollout to finish")
                core = store.core("shared")
                recorded = {n: _health(tmp_path / f"{n}.log")["consumer"]["recorded"]
                            ["reported"] for n in "ab"}
        finally:
            reg.close()
    assert core["status"] == ro.SUCCEEDED and core["counts"] == {ro.APPLIED: 40}, core
    # each report went to one instance of the group, and each instance took some
    assert sum(recorded.values()) == 40 and min(recorded.values()) > 0, recorded
