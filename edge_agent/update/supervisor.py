"""``edge-agent supervise``: run ``current``, gate a new release on health, roll back by itself.

Standard library only (checked by a test): it must run, and switch back, when the release it
supervises cannot even import its dependencies, and without any network.

Each turn of the loop reads the update journal (``edge_agent.update.journal``) and does one of:

- **trial** (step ``switch`` or ``start``): finish the switch (``current`` -> target), then start
  the target; it must report healthy in ``STATE_DIR/health.json`` (its own pid and version,
  ``healthy: true``: uplink up, devices answering, the config applied) within the deadline.
  Every start is persisted first (``attempts``); after ``max_starts`` failed starts (exit, no
  health in time, a hang) the supervisor switches back to the previous release, recording the
  reason and the failed release's last log lines. A supervisor killed at any point resumes
  from the journal, and a start that kills it every time still counts (the loop guard).
- **health** (healthy seen, not yet committed): commit: the journal's committed release (the
  anti-rollback floor for software) moves up, then old releases beyond KEEP are pruned.
- **rollback**: finish switching back.
- **steady**: run ``current``; restart it with capped backoff when it exits; stop it when the
  journal turns to ``switch`` (a release was staged), then take the trial.

The supervisor runs from the release that was current when it started; once a newer release
has committed, it re-executes itself from that release when its child next exits, so it is
updated only together with a release that passed its health gate.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent import __version__
from edge_agent.update.journal import STAGING, UpdateJournal, load_journal, persist
from edge_agent.update.releases import (
    InstallError,
    current_version,
    installed,
    prune,
    release_dir,
    switch_current,
    venv_python,
)

log = logging.getLogger("edge_agent.supervise")

HEALTH_FILE = "health.json"
LOG_FILE = "agent.log"
MAX_LOG_BYTES = 1 << 20
TAIL_LINES = 20
STOP_GRACE_S = 15.0
POLL_S = 0.2


@dataclass
class Options:
    """How the supervisor runs the agent."""

    root: Path
    state_dir: Path
    agent_args: list[str]
    max_starts: int = 3
    health_deadline_s: float = 120.0
    backoff_max_s: float = 30.0
    release_url: str | None = None  # handed to the agent: where it downloads releases
    release_ca: str | None = None


def sd_notify(message: str) -> None:
    """One datagram to systemd's ``$NOTIFY_SOCKET`` (nothing without one; errors ignored)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), addr)
    except OSError:
        pass  # systemd gone or not listening: the supervisor goes on regardless


def read_health(state_dir: Path) -> dict[str, object]:
    """The agent's last health report (empty if none or unreadable)."""
    try:
        doc = json.loads((state_dir / HEALTH_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file (each cut to 300 characters)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line[:300] for line in text.splitlines()[-lines:]]


class Supervisor:
    """One supervisor of one install root."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.root = opts.root
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    # ------------------------------------------------------------------ child

    def _spawn(self, version: str) -> subprocess.Popen[bytes]:
        logf = release_dir(self.root, version) / LOG_FILE
        mode = "wb" if logf.exists() and logf.stat().st_size > MAX_LOG_BYTES else "ab"
        env = {**os.environ, "EDGE_UPDATE_ROOT": str(self.root)}
        if self.opts.release_url:
            env["EDGE_RELEASE_URL"] = self.opts.release_url
            env["EDGE_RELEASE_CA"] = self.opts.release_ca or ""
        with logf.open(mode) as out:
            out.write(f"--- supervisor: starting {version} at {time.ctime()}\n".encode())
            out.flush()
            self.child = subprocess.Popen(
                # -I: the release's own venv only (no cwd, no PYTHONPATH on sys.path)
                [str(venv_python(self.root, version)), "-I", "-m", "edge_agent",
                 *self.opts.agent_args], cwd=release_dir(self.root, version), env=env,
                # same process group (systemd's cgroup): a killed supervisor's child dies too
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.info("started release %s (pid %d)", version, self.child.pid)
        return self.child

    def _stop_child(self) -> None:
        proc, self.child = self.child, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.error("release did not stop within %.0f s; killing it", STOP_GRACE_S)
            proc.kill()
            proc.wait()

    def _healthy(self, proc: subprocess.Popen[bytes], version: str) -> tuple[bool, str]:
        doc = read_health(self.opts.state_dir)
        if doc.get("pid") != proc.pid or doc.get("version") != version:
            return False, "no health report from the new release"
        return doc.get("healthy") is True, str(doc.get("reason", ""))[:300]

    # ------------------------------------------------------------------ steps

    def _finish_switch(self, j: UpdateJournal) -> bool:
        if current_version(self.root) != j.target:
            try:
                switch_current(self.root, j.target)
            except InstallError as exc:
                self._rollback(j, f"switch failed: {exc}")
                return False
        return True

    def _trial(self, j: UpdateJournal) -> None:
        if j.attempts >= self.opts.max_starts:
            self._rollback(j, f"not healthy after {j.attempts} starts: {j.reason}")
            return
        if not self._finish_switch(j):
            return
        j.attempts += 1
        persist(self.root, j, "start")
        proc = self._spawn(j.target)
        deadline = time.monotonic() + self.opts.health_deadline_s
        why = ""
        while not self.stopping:
            # During a trial the supervisor vouches for progress itself: its own deadline, not
            # systemd's WatchdogSec, decides about a new release that hangs (NotifyAccess=all).
            sd_notify("WATCHDOG=1")
            ok, why = self._healthy(proc, j.target)
            if ok:
                persist(self.root, j, "health")
                self._commit(j)
                self._watch(proc)
                return
            code = proc.poll()
            if code is not None:
                why = f"start {j.attempts} exited with code {code} before reporting healthy"
                break
            if time.monotonic() > deadline:
                why = (f"start {j.attempts} not healthy within "
                       f"{self.opts.health_deadline_s:.0f} s ({why})")
                break
            time.sleep(POLL_S)
        self._stop_child()
        if self.stopping:
            return
        log.error("release %s: %s", j.target, why)
        j.reason = why
        j.log_tail = log_tail(release_dir(self.root, j.target) / LOG_FILE)
        persist(self.root, j, "start")  # the reason, durably; the attempt was counted before

    def _commit(self, j: UpdateJournal) -> None:
        j.committed, j.reason, j.log_tail = j.target, "", []
        j.committed_number, j.committed_sha256 = j.target_number, j.target_sha256
        persist(self.root, j, "commit")
        removed = prune(self.root, {j.target, j.previous})
        log.info("release %s committed%s", j.target,
                 f"; pruned {', '.join(removed)}" if removed else "")

    def _rollback(self, j: UpdateJournal, reason: str) -> None:
        j.reason = reason
        j.failed = {**j.failed, j.target: reason[:300]}
        if not j.log_tail:
            j.log_tail = log_tail(release_dir(self.root, j.target) / LOG_FILE)
        persist(self.root, j, "rollback")
        back = j.previous
        if back and installed(self.root, back):
            switch_current(self.root, back)
        else:
            log.critical("no previous release to roll back to; staying on %s",
                         current_version(self.root))
        persist(self.root, j, "rolled_back")
        log.error("rolled back from %s to %s: %s", j.target, back, reason)

    def _watch(self, proc: subprocess.Popen[bytes]) -> int | None:
        """Wait for the child to exit (its code) or for a staged switch (None: child stopped)."""
        while not self.stopping:
            code = proc.poll()
            if code is not None:
                self.child = None
                return code
            if load_journal(self.root).step == "switch":
                log.info("a release was staged; stopping the running one to try it")
                self._stop_child()
                return None
            time.sleep(POLL_S)
        self._stop_child()
        return None

    def _steady(self, backoff: float) -> float:
        version = current_version(self.root)
        if version is None or not installed(self.root, version):
            log.critical("no installed release at %s/current; waiting", self.root)
            time.sleep(5.0)
            return backoff
        self._maybe_reexec(version)
        started = time.monotonic()
        code = self._watch(self._spawn(version))
        if code is None or self.stopping:
            return 1.0
        if time.monotonic() - started > 60:
            backoff = 1.0  # it ran a while: a fresh failure, not a crash loop
        log.error("release %s exited with code %s; restarting in %.0f s", version, code, backoff)
        self._sleep(backoff)
        return min(backoff * 2, self.opts.backoff_max_s)

    def _maybe_reexec(self, version: str) -> None:
        """Run the committed release's own supervisor (it passed its health gate)."""
        j = load_journal(self.root)
        if version == __version__ or j.committed != version or os.environ.get(
                "EDGE_SUPERVISOR_NO_REEXEC"):
            return
        log.info("supervisor %s: re-executing the committed release %s's supervisor",
                 __version__, version)
        py = str(venv_python(self.root, version))
        os.execv(py, [py, "-I", "-m", "edge_agent", *sys.argv[1:]])

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(POLL_S, end - time.monotonic()))

    # ------------------------------------------------------------------ run

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT; the exit code for systemd."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.opts.state_dir.mkdir(parents=True, exist_ok=True)
        # Ready once supervising: a trial's new release may take its whole health deadline.
        sd_notify("READY=1")
        backoff = 1.0
        try:
            while not self.stopping:
                j = load_journal(self.root)
                if j.step in ("switch", "start"):
                    self._trial(j)
                elif j.step == "health":
                    self._commit(j)
                elif j.step == "rollback":
                    self._rollback(j, j.reason)
                else:
                    if j.step in STAGING and j.target:
                        pass  # staging interrupted: `current` is untouched; it resumes
                    backoff = self._steady(backoff)
        finally:
            self._stop_child()
        return 0


def supervise_main(argv: list[str]) -> int:
    """``edge-agent supervise --root R --state-dir S [...] -- run SITE.toml [...]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="edge-agent supervise",
                                 description="Run the current release; gate and roll back "
                                             "new releases by their health.")
    ap.add_argument("--root", type=Path, required=True, help="install root (releases, current)")
    ap.add_argument("--state-dir", type=Path, required=True,
                    help="the agent's state directory (where it writes health.json)")
    ap.add_argument("--max-starts", type=int, default=3)
    ap.add_argument("--health-deadline-s", type=float, default=120.0)
    ap.add_argument("--release-url", help="the fleet's release URL (https://HOST/releases): "
                    "the agent then takes software bundles from desired/software")
    ap.add_argument("--release-ca", help="CA file of the release URL's certificate")
    ap.add_argument("agent_args", nargs=argparse.REMAINDER,
                    help="-- then the agent's command, e.g. -- run /etc/edge-agent/site.toml")
    args = ap.parse_args(argv)
    agent_args = [a for a in args.agent_args if a != "--"] or ["run"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervise %(message)s")
    return Supervisor(Options(args.root, args.state_dir, agent_args, args.max_starts,
                              args.health_deadline_s, release_url=args.release_url,
                              release_ca=args.release_ca)).run()
