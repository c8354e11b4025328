"""The agent speaks sd_notify: READY once started, WATCHDOG pings, STOPPING on the way out;
and the pings stop while the gateway is stuck although its event loop is alive: a bus poller
that hangs, or a config switch that hangs (the control plane's step overdue)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import edge_agent.runtime.agent as agent_mod
from edge_agent.control.gateway import Gateway
from edge_agent.control.truststore import save_trust
from edge_agent.drivers.bus import Bus
from edge_agent.drivers.modbus.transport import BusTransport, Reply
from edge_agent.drivers.model import Table
from edge_agent.protocol.bundle import make_bundle, root_signed, sign_envelope
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.trust import TrustedState
from edge_agent.tools.devbroker import Mosquitto
from tests.support.fakebus import FakeBus
from tests.support.sitekit import PY, simulator, write_site

pytestmark = [pytest.mark.integration, pytest.mark.serial]


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
                         attempts: int | None, request_chars: int = 8) -> Reply:
        if hang[0]:
            stuck.set()
            await release.wait()
        return await exchange(self, call, attempts, request_chars)

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


SEED = 47
print(f"test_agent_watchdog: key seed {SEED}")


def _key(name: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(f"{SEED}/{name}".encode()).digest())


def _drain(sock: socket.socket) -> int:
    """Datagrams already waiting in ``sock``, read and dropped: how many."""
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(4096)
            n += 1
    return n


async def _pings(sock: socket.socket, seconds: float) -> int:
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


def test_the_watchdog_is_not_pinged_while_a_config_switch_hangs(
        tmp_path: Path, own_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """In process, a real enrolled Gateway on fake buses and a real broker: a signed config
    arrives on desired/config, and stopping the old agent for the switch hangs with its
    cancel swallowed (issue item 15's hang). The switch's deadline passes although the loop
    is alive: the pings stop; released, the switch completes, the config is applied and the
    pings resume."""
    site = write_site(tmp_path, [("m", "lan", 1, "energy_meter")], poll_s=0.2)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    roots, release_key = [_key("r1"), _key("r2")], _key("release")
    now = int(time.time())
    root = sign_envelope(root_signed(1, [k.public for k in roots], 2, [release_key.public], 1,
                                     issued=now - 10, expires=now + 10**6), roots)
    save_trust(state, TrustedState("gw-test", "test-site", (), root))
    payload = site.read_bytes() + b"# v1 from the fleet\n"
    bundle = make_bundle("config", 1, payload, [release_key], issued=now - 5,
                         expires=now + 3600, gateways=["gw-test"])
    buses: dict[str, FakeBus] = {}

    def fake_bus(bus: Bus) -> FakeBus:
        fb = buses.setdefault(bus.name, FakeBus(FakeClock(), name=bus.name))
        for table in Table:
            fb.unit(1).load(table, 0, [0] * 1000)
        return fb

    notify = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")    # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    # The switch's deadline: one second, so the test need not wait out a real stop budget.
    monkeypatch.setattr(Gateway, "switch_budget_s", lambda self, cfg: 1.0)
    hang = [False]
    hanging, release = asyncio.Event(), asyncio.Event()
    swallowed = [0]
    stop_agent = Gateway._stop_agent

    async def stop_that_hangs(self: Gateway) -> None:
        while hang[0] and not release.is_set():
            hanging.set()
            try:
                await release.wait()
            except asyncio.CancelledError:
                swallowed[0] += 1  # a lost cancel: the stop goes on waiting
        await stop_agent(self)

    monkeypatch.setattr(Gateway, "_stop_agent", stop_that_hangs)

    async def main() -> tuple[int, int, int, list[str], dict[str, int]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(notify))
            sock.setblocking(False)
            gw = Gateway(site, broker_url=own_broker.url, own_process=False,
                         make_transport=fake_bus, health_gate_s=0.5)
            assert gw.control is not None
            stop = asyncio.Event()
            run = asyncio.create_task(gw.run(stop))
            loop = asyncio.get_running_loop()
            before = await _pings(sock, 1.0)
            hang[0] = True
            publisher = mqtt.Client(CallbackAPIVersion.VERSION2)
            publisher.connect("127.0.0.1", own_broker.port)
            publisher.loop_start()
            try:
                publisher.publish("edge/gw-test/desired/config", bundle, qos=1,
                                  retain=True).wait_for_publish(10)
                async with asyncio.timeout(30):
                    await hanging.wait()
                    # Past the switch's deadline: its cancel is swallowed, the step overdue.
                    while not gw.stuck():
                        await asyncio.sleep(0.05)
                reasons = gw.stuck()
                # Pings sent before the step went overdue are still queued: not counted.
                _drain(sock)
                during = await _pings(sock, 1.0)
                hang[0] = False
                release.set()
                deadline = loop.time() + 60
                while gw.control.counters.by_result.get("applied", 0) < 1:
                    assert loop.time() < deadline and not run.done(), gw.control.counters
                    await asyncio.sleep(0.1)
                after = await _pings(sock, 1.0)
                stop.set()
                await asyncio.wait_for(run, 30)
            finally:
                publisher.publish("edge/gw-test/desired/config", b"", retain=True)
                publisher.loop_stop()
                publisher.disconnect()
            return before, during, after, reasons, dict(gw.control.counters.by_result)

    with caplog.at_level(logging.WARNING, logger="edge_agent.control"):
        before, during, after, reasons, results = asyncio.run(main())
    assert before >= 5, before
    assert swallowed[0] >= 1, "the switch's deadline never cancelled the hung stop"
    assert during == 0 and any("switch to config v1 still running" in r for r in reasons), (
        during, reasons)
    # (The new agent subscribes again and gets the retained bundle: "current", nothing to do.)
    assert results.get("applied") == 1 and set(results) <= {"applied", "current"}, results
    assert after >= 5, after
    withheld = [r.getMessage() for r in caplog.records
                if "watchdog: not pinging systemd" in r.getMessage()]
    assert len(withheld) == 1 and "switch to config v1" in withheld[0], withheld
    assert any("pinging again" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "state" / "config.good").read_bytes() == payload
