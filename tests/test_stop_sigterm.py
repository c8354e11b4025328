"""SIGTERM stops a polling 40-device gateway within its deadline, every time, losing nothing.

Each try starts the real ``edge-agent run`` on a site of 40 simulated Modbus TCP devices, each
on a bus of its own (one poller task each), polled every 0.2 s, with a private broker. Once it
polls it gets SIGTERM a few milliseconds after a poll mark, while the replies of every bus
arrive together: the moment a cancel swallowed inside a Modbus request needs (Python 3.11's
``asyncio.wait_for``; see drivers/modbus/transport.py). Each try must exit with status 0 within
the agent's stop budget, without a forced step, and every batch the agent logged as built must
have reached the broker or be in the spool file, together holding every reading it sent.

``TRIES`` tries run by default (about a minute); a soak runs more:

    EDGE_STOP_TRIES=100 .venv/bin/pytest tests/test_stop_sigterm.py -s

It prints how many stops ended within the deadline and the time per stop (median, max).
"""

from __future__ import annotations

import os
import random
import statistics
from pathlib import Path

import pytest

from edge_agent.runtime.agent import stop_budget_s
from edge_agent.tools.devbroker import Mosquitto
from tests.support.brokers import free_ports
from tests.support.stopkit import Batches, Try, sigterm_try, tcp_simulator, tcp_site

pytestmark = [pytest.mark.integration, pytest.mark.serial]

TRIES = int(os.environ.get("EDGE_STOP_TRIES", "25"))
DEVICES = 40
POLL_S = 0.2
# The agent's worst case (every step to its deadline) plus the interpreter's own exit.
DEADLINE_S = stop_budget_s(durable=True) + 2.0


def test_sigterm_stops_a_40_device_gateway_in_time_with_every_batch_kept(
        tmp_path: Path, broker: Mosquitto) -> None:
    rng = random.Random(2024)
    ports = free_ports(DEVICES)
    sim_site = tcp_site(tmp_path, DEVICES, poll_s=POLL_S, ports=ports, name="sim.toml")
    data = Batches(broker.port)
    tries: list[Try] = []
    try:
        with tcp_simulator(sim_site, tmp_path / "sim.log"):
            for i in range(TRIES):
                tries.append(sigterm_try(i, tmp_path, ports, broker.url, data, rng,
                                         poll_s=POLL_S, deadline_s=DEADLINE_S))
    finally:
        data.close()
    times = [t.took_s for t in tries if t.took_s is not None]
    in_time = sum(1 for t in tries if t.took_s is not None and not t.problems)
    print(f"\nSIGTERM stops: {in_time}/{len(tries)} exited in time with every batch kept "
          f"(deadline {DEADLINE_S:g} s); time per stop median "
          f"{statistics.median(times) if times else float('nan'):.2f} s, max "
          f"{max(times) if times else float('nan'):.2f} s")
    failed = [t for t in tries if t.problems]
    assert not failed, "\n\n".join(f"try {t.index}: " + "\n".join(t.problems)
                                   for t in failed[:3])
