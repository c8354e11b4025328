"""The agent speaks sd_notify: READY once started, WATCHDOG pings, STOPPING on the way out."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

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
