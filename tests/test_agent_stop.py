"""The agent's stop is bounded whatever its tasks do, and the last window still reaches the spool.

In process, no broker and no devices (the bus's port is closed, the broker's is 1): a poller
that ignores its stop flag and swallows every cancel is cancelled again, then forced (its bus
closed), then named with its stack and left behind, and the stop goes on to flush the last
window into the spool and close it within the stop budget. The stop deadlines are shrunk so
the test takes a second; their order and handling are the product's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest

import edge_agent.runtime.agent as agent_mod
from edge_agent.config.loader import load_config
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.agent import Agent, open_store, stop_budget_s
from tests.support.sitekit import spool_batches, write_site


@pytest.fixture
def quick_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop deadlines a hundredth of the product's, give or take."""
    for name, value in (("STOP_POLLERS_S", 0.05), ("STOP_TASKS_S", 0.3), ("STOP_FORCED_S", 0.3),
                        ("STOP_FLUSH_S", 1.0), ("STOP_UPLINK_S", 0.5), ("STOP_CLOSE_S", 1.0)):
        monkeypatch.setattr(agent_mod, name, value)
    monkeypatch.setattr(agent_mod, "drain_s", lambda durable: 0.1)


def test_a_task_that_will_not_stop_is_forced_named_and_the_window_still_stored(
        tmp_path: Path, quick_stops: None, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(write_site(tmp_path, [("m", "lan", 1, "energy_meter")], poll_s=0.2),
                      broker_url="mqtt://127.0.0.1:1")
    release = [False]

    async def stubborn_poller() -> None:
        # Ignores its stop flag and every cancel: what a lost cancel looks like, made certain.
        while not release[0]:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    async def main() -> tuple[float, Agent]:
        agent = Agent(cfg, await open_store(cfg))
        agent.schedulers["lan"].run = stubborn_poller  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(0.2)
        # The last window: readings the bus handed over and no batch window has sealed yet.
        agent.schedulers["lan"].sink([Reading("m", "energy_wh", 1000 + i, i) for i in range(7)])
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, stop_budget_s(True) + 2)
        took = time.monotonic() - started
        release[0] = True
        left = [t for t in asyncio.all_tasks() if t.get_name() == "bus:lan"]
        await asyncio.wait(left, timeout=1.0)
        return took, agent

    with caplog.at_level(logging.INFO):
        took, agent = asyncio.run(main())
    assert took <= stop_budget_s(True), took
    assert agent.abandoned == ["bus:lan"]
    log = caplog.text
    # The overrun says what it waited for: the task's name, the cancels it ignored, its stack.
    assert "stop: bus, batch and health tasks still running" in log
    assert "task bus:lan, cancel asked" in log and "in stubborn_poller" in log
    assert "stop was forced: tasks still running: bus:lan" in log
    # ...and the stop went on: the last window is in the spool, which was closed.
    stored = [n for _, _, n in spool_batches(tmp_path / "state" / "spool.db")]
    assert sum(stored) == 7 and agent.filter.stats.sent == 7
    assert "agent gw-test stopped in" in log
