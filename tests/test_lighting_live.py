"""The real agent and the streetlight simulator as subprocesses, with no broker running.

The agent process runs the site's night schedule with its broker down (nothing listens on the
configured port) and the simulated lamps deliver what it writes. An override set before the
first start (the state dir's ``lighting-overrides.json``, as the command path writes it) holds
one lamp through a real restart of the agent (SIGTERM, start again) and ends on time: the lamp
returns to its schedule's level within a second or two of the override's end.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.sitekit import agent, control, simulator, write_site

LAMPS = [("lamp-101", "rs485", 11, "streetlight"), ("lamp-102", "rs485", 12, "streetlight")]


def _night_now() -> str:
    """A [lighting] section at a place where it is about local midnight now (on the equator)."""
    hours = datetime.now(UTC).hour + datetime.now(UTC).minute / 60
    offset = round(-hours) % 24
    offset = offset - 24 if offset > 14 else offset
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"   # Etc/ signs are inverted
    return f"""
[lighting]
latitude = 0.0
longitude = {max(-180, min(180, offset * 15))}
timezone = "{zone}"
[lighting.groups]
all = ["lamp-101", "lamp-102"]
[lighting.schedules.night]
lamps = ["group:all"]
steps = [{{ until = "dawn", level = 90 }}]
"""


def _lamp(sock: Path, name: str) -> tuple[bool, int, int, float]:
    """(relay, dim command, dim delivered, power W) as the simulated lamp holds them now."""
    regs: dict[str, Any] = control(sock, {"cmd": "registers", "device": name})["registers"]
    coils, holding = regs["coil"], regs["holding_register"]
    return bool(coils["0"]), holding["0"], holding["1"], holding["2"] / 10


def _until(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.serial
def test_the_agent_runs_the_schedule_without_a_broker_and_an_override_survives_restart(
        tmp_path: Path) -> None:
    site = write_site(tmp_path, LAMPS, poll_s=1.0, extra=_night_now())
    until = time.time() + 12.0   # the two starts and a stop take a few seconds
    state = tmp_path / "state"
    state.mkdir()
    (state / "lighting-overrides.json").write_text(json.dumps({"overrides": [
        {"target": "lamp-102", "level_pct": 30, "until_s": until, "command_id": "cmd-live",
         "set_at_s": time.time()}]}))
    with simulator(site, tmp_path) as sock:
        with agent(site, "mqtt://127.0.0.1:1", tmp_path):
            assert _until(lambda: _lamp(sock, "lamp-101")[:3] == (True, 90, 90), 15), \
                _lamp(sock, "lamp-101")
            assert _until(lambda: _lamp(sock, "lamp-102")[:3] == (True, 30, 30), 5)
            dimmed_w = _lamp(sock, "lamp-102")[3]
        # Restarted in the middle of the override: it still holds, and ends on time.
        with agent(site, "mqtt://127.0.0.1:1", tmp_path):
            assert time.time() < until - 2, "the restart took too long for this test"
            assert _lamp(sock, "lamp-102")[:3] == (True, 30, 30)
            assert _until(lambda: _lamp(sock, "lamp-102")[1] == 90, until - time.time() + 5)
            ended = time.time()
            assert until <= ended < until + 3.0, ended - until
            # The power follows the delivered level: 90 % takes about three times 30 %.
            assert _until(lambda: 2.5 < _lamp(sock, "lamp-102")[3] / dimmed_w < 3.5, 3)
    log = (tmp_path / "agent.log").read_text()
    assert "lighting: lamp-102 on at 90 % (schedule:night)" in log
