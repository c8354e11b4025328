"""The agent speaks sd_notify: READY once started, WATCHDOG pings, STOPPING on the way out;
and the pings stop while the gateway is stuck although its event loop is alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import edge_agent.runtime.agent as agent_mod
from edge_agent.control.gateway import Gateway
from edge_agent.drivers.modbus.transport import BusTransport, Reply
from edge_agent.tools.devbroker import Mosquitto
from tests.support.sitekit import PY, simulator, write_site

pytestmark = pytest.mark.integration


def test_agent_notifies_systemd_and_pings_the_watchdog(tmp_path: Path, broker: Mosquitto) -> None:
    site = write_site(tmp_path, [("lamp", "rs485", 3, "streetlight")])
    notify = tmp_path / "notify.sock"
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, simulator(site, tmp_path):
        sock.bind(str(notify))
        sock.settimeout(0.2)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="600000")
        proc = subprocess.Popen([*PY, "run", str(site), "--broker", broker.url], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 4:
                with contextlib.suppress(TimeoutError):
                    messages.append(sock.recv(4096).decode())
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
            while True:
                try:
                    messages.append(sock.recv(4096).decode())
                except TimeoutError:
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert any(m.startswith("READY=1") for m in messages), messages
    assert sum("WATCHDOG=1" in m for m in messages) >= 4, messages
    assert messages[-1] == "STOPPING=1", messages
    assert proc.returncode == 0


def test_the_watchdog_is_not_pinged_while_a_bus_poller_is_stuck(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """In process: one bus request hangs (a lost cancel, a driver stuck in a call: the loop
    stays alive), the poller misses its heartbeat, the pings stop; released, they resume."""
    site = write_site(tmp_path, [("m", "lan", 1, "energy_meter")], poll_s=0.2)
    notify = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")    # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(agent_mod, "HEARTBEAT_MIN_GRACE_S", 0.5)
    hang = [False]
    stuck, release = asyncio.Event(), asyncio.Event()
    exchange = BusTransport._exchange

    async def maybe_hang(self: BusTransport, call: Callable[[], Awaitable[object]],
                         attempts: int | None) -> Reply:
        if hang[0]:
            stuck.set()
            await release.wait()
        return await exchange(self, call, attempts)

    monkeypatch.setattr(BusTransport, "_exchange", maybe_hang)

    async def pings(sock: socket.socket, seconds: float) -> int:
        """WATCHDOG=1 datagrams received over ``seconds``."""
        loop, n = asyncio.get_running_loop(), 0
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    n += (await loop.sock_recv(sock, 4096)).startswith(b"WATCHDOG=1")
            except TimeoutError:
                break
        return n

    async def main() -> tuple[int, int, int, list[str]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(notify))
            sock.setblocking(False)
            gw = Gateway(site, broker_url="mqtt://127.0.0.1:1", own_process=False)
            stop = asyncio.Event()
            run = asyncio.create_task(gw.run(stop))
            before = await pings(sock, 1.0)
            hang[0] = True
            async with asyncio.timeout(5):
                await stuck.wait()
            # The promise of the hung request (its timeouts plus a second) and the grace pass.
            await pings(sock, 4.0)
            reasons = gw.stuck()
            during = await pings(sock, 1.0)
            hang[0] = False
            release.set()
            await pings(sock, 1.0)   # the poller beats again, the watchdog sees it
            after = await pings(sock, 1.0)
            stop.set()
            await asyncio.wait_for(run, 30)
            return before, during, after, reasons

    with caplog.at_level(logging.WARNING, logger="edge_agent.control.gateway"):
        before, during, after, reasons = asyncio.run(main())
    assert before >= 5, before
    assert during == 0 and any("bus:lan silent for" in r for r in reasons), (during, reasons)
    assert after >= 5, after
    withheld = [r.getMessage() for r in caplog.records
                if "watchdog: not pinging systemd" in r.getMessage()]
    assert len(withheld) == 1 and "bus:lan silent for" in withheld[0], withheld
    assert "task bus:lan" in withheld[0]  # ...with the tasks and where they wait
    assert any("pinging again" in r.getMessage() for r in caplog.records)
