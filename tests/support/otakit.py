"""The update tests' harness: a gateway's install root, the supervisor run as systemd would,
and waiting until a release runs, healthy, with a settled journal (tests and bench/ota_rollout.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fleet.release_http import ReleaseServer
from edge_agent.update.journal import SETTLED, load_journal
from edge_agent.update.releases import current_version
from edge_agent.update.supervisor import read_health
from tests.support.brokers import Mosquitto


@dataclass
class Fleet:
    url: str
    cafile: Path
    server: ReleaseServer


@dataclass
class Gateway:
    root: Path
    state: Path
    trust_dir: Path
    site: Path
    tmp: Path


class Supervised:
    """The supervisor, restarted like systemd (``Restart=always``) whenever it dies."""

    def __init__(self, gw: Gateway, broker: Mosquitto, *, env: dict[str, str] | None = None,
                 max_starts: int = 2, deadline_s: float = 60.0,
                 release: Fleet | None = None) -> None:
        py = gw.root / "current" / "venv" / "bin" / "python"
        url = ["--release-url", release.url, "--release-ca", str(release.cafile)] \
            if release is not None else []
        self.cmd = [str(py), "-I", "-m", "edge_agent", "supervise", "--root", str(gw.root),
                    "--state-dir", str(gw.state), "--max-starts", str(max_starts),
                    "--health-deadline-s", str(deadline_s), *url, "--", "run", str(gw.site),
                    "--broker", broker.url]
        # the supervisor re-executes itself from a committed release only where a test asks
        self.env = {**os.environ, "EDGE_SUPERVISOR_NO_REEXEC": "1", **(env or {})}
        if self.env["EDGE_SUPERVISOR_NO_REEXEC"] == "0":
            del self.env["EDGE_SUPERVISOR_NO_REEXEC"]
        self.log = (gw.tmp / "supervisor.log").open("ab")
        self.deaths: list[int] = []
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the cgroup goes with the main process

    def restart_if_dead(self) -> None:
        """Restart a dead supervisor (and kill what it left), as systemd does."""
        code = self.proc.poll()
        if code is not None:
            self.deaths.append(code)
            self._kill_group()
            self.proc = self._start()

    def close(self) -> None:
        """SIGTERM and wait (the supervisor stops its agent), then sweep the group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_group()
        self.log.close()


@contextmanager
def supervised(gw: Gateway, broker: Mosquitto, **kw: object) -> Iterator[Supervised]:
    """A running ``Supervised``, closed at the end."""
    sup = Supervised(gw, broker, **kw)  # type: ignore[arg-type]
    try:
        yield sup
    finally:
        sup.close()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def settle(gw: Gateway, sup: Supervised, want: str, timeout_s: float = 90.0,
           not_pid: object = None) -> dict[str, object]:
    """Wait until the journal is settled and release ``want`` runs and reports healthy
    (from a live process other than ``not_pid``, the agent that ran before)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        sup.restart_if_dead()
        j = load_journal(gw.root)
        health = read_health(gw.state)
        if (j.step in SETTLED and current_version(gw.root) == want
                and health.get("version") == want and health.get("healthy") is True
                and health.get("pid") != not_pid and _alive(health.get("pid"))):
            return health
        time.sleep(0.2)
    raise AssertionError(f"not settled on {want}: journal {load_journal(gw.root).to_json()}, "
                         f"current {current_version(gw.root)}, health {read_health(gw.state)}; "
                         f"log:\n{(gw.tmp / 'supervisor.log').read_text()[-3000:]}")
