"""A paused gateway says so: a 3 s SIGSTOP is logged once as a pause, with the slots it missed.

The real ``edge-agent run`` against the simulator, stopped with SIGSTOP for 3 s and resumed:
from inside that is what a VM pause looks like (nothing in the process runs, then monotonic and
wall time have both jumped). Before, every device silently skipped its slots; now the agent
logs one stall naming a pause (not a blocked event loop) and one line of missed slots with that
cause, and health shows the stall.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from edge_agent.tools.devbroker import Mosquitto
from tests.support.sitekit import Collector, agent, simulator, write_site

pytestmark = [pytest.mark.integration, pytest.mark.serial]


def test_a_paused_gateway_logs_the_pause_and_the_slots_it_missed(
        tmp_path: Path, broker: Mosquitto) -> None:
    site = write_site(tmp_path, [("lamp", "rs485", 3, "streetlight"),
                                 ("meter", "lan", 1, "energy_meter")], poll_s=0.5, health_s=1.0)
    log = tmp_path / "agent.log"
    data = Collector(broker.port)
    try:
        with simulator(site, tmp_path), agent(site, broker.url, tmp_path) as proc:
            assert data.wait_for(lambda c: len(c.readings) > 0)
            proc.send_signal(signal.SIGSTOP)
            time.sleep(3.0)
            proc.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                text = log.read_text()
                if "poll slots" in text and any(_stalls(h) for h in data.health):
                    break
                time.sleep(0.2)
    finally:
        data.close()
    lines = log.read_text().splitlines()
    stalls = [line for line in lines if "stall:" in line]
    assert len(stalls) == 1, stalls
    assert "process or VM paused for at least" in stalls[0], stalls
    missed = [line for line in lines if "poll slots" in line]
    assert missed and all("process or VM paused" in line for line in missed), missed
    loops = [doc for h in data.health if isinstance(doc := h.get("loop"), dict)]
    assert any(doc["stalls"] == 1 and doc["lag_ms_worst"] > 2000 for doc in loops), loops[-1:]


def _stalls(health: dict[str, object]) -> int:
    """The stall count of a health document (0 without a loop section)."""
    loop = health.get("loop")
    return int(loop.get("stalls", 0)) if isinstance(loop, dict) else 0
