"""The gateway's control plane: verify -> validate -> dry-run -> switch -> health gate -> commit.

The pure core is ``control.journal`` (stages, the journal, what a restart must do). This is
the thin async shell around it: ``ControlPlane.offer(blob)`` runs one bundle through the
stages with callables the agent supplies (validate, dry-run, switch, healthy), persisting the
journal before each step that changes what runs.

Nothing waits forever: a dry run or a switch (and a switch back) that does not complete within
its deadline counts as failed, the trial is reverted (or dropped) and reported. A revert that
fails too is reported and kept in ``revert_failed``, so the gateway's watchdog stops pinging
and systemd restarts it on the last known good config (the journal already says so). A step
that raises anything but the project's own errors is a bug: logged with its stack, it fails
the trial like any other failure, and the gateway goes on.

Crash safety: the journal is written atomically before the switch (stage "switched") and again
at commit, in this order: journal (good = new) first, then the trust floor. A restart finding a
trial at "switched" reverts to the last known good config; one finding it earlier drops it
(nothing was switched). A crash between the two commit writes leaves floor < good version; the
re-delivered retained bundle then verifies, matches the good hash, and only the floor moves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from edge_agent.control.journal import Journal, Result, Stage, recover
from edge_agent.control.truststore import load_trust, save_trust
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import EdgeError
from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.rejections import Rejections
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import (
    ACCEPTED,
    CURRENT,
    FAULT,
    MAX_PAYLOAD,
    Bundle,
    claimed_version,
    verify_bundle,
)
from edge_agent.runtime.lifecycle import Operations, Overrun

log = logging.getLogger(__name__)

C = TypeVar("C")
JOURNAL_FILE = "control.json"
SWITCH_TIMEOUT_S = 300.0   # a switch's deadline unless the caller sizes it per config
DRY_RUN_TIMEOUT_S = 120.0  # a dry run's deadline unless the caller sizes it per config
GATE_MARGIN_S = 10.0       # the health gate's deadline beyond its hold (one slow check)


@dataclass
class ControlCounters:
    """What the control plane has done since start."""

    offered: int = 0
    by_result: dict[str, int] = field(default_factory=dict)


class ControlPlane(Generic[C]):
    """The async shell: runs bundles of one kind through the stages; one at a time."""

    def __init__(self, state_dir: Path, *, validate: Callable[[bytes], C],
                 dry_run: Callable[[C], Awaitable[None]], switch: Callable[[C], Awaitable[None]],
                 healthy: Callable[[], Awaitable[tuple[bool, str]]], kind: str = "config",
                 hold_s: float = 30.0, check_every_s: float = 1.0, clock: Clock | None = None,
                 max_payload: int = MAX_PAYLOAD, fsync: bool = True,
                 switch_timeout_s: float | Callable[[C], float] = SWITCH_TIMEOUT_S,
                 dry_run_timeout_s: float | Callable[[C], float] = DRY_RUN_TIMEOUT_S,
                 ops: Operations | None = None, rejection_summary_s: float = 60.0) -> None:
        self.state_dir = state_dir
        self.kind = kind
        self.validate = validate
        self.dry_run = dry_run
        self.switch = switch
        self.healthy = healthy
        self.hold_s = hold_s
        self.check_every_s = check_every_s
        self.clock = clock or SystemClock()
        self.max_payload = max_payload
        self.fsync = fsync
        self.counters = ControlCounters()
        # Anyone who can publish on desired/ can make us refuse bundles all day: each refusal
        # is counted (health) and reported, but only the first of a reason is logged in full.
        self.rejections = Rejections(f"{kind} bundles", log, summary_s=rejection_summary_s,
                                     clock=self.clock)
        self.switch_timeout_s = switch_timeout_s
        self.dry_run_timeout_s = dry_run_timeout_s
        # Shared with the gateway, whose watchdog stops pinging when a step is overdue.
        self.ops = ops or Operations(self.clock)
        self.revert_failed: str | None = None
        self.trust = load_trust(state_dir)
        self.journal = self._load_journal()
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ files

    @property
    def good_path(self) -> Path:
        """Where the last known good payload is kept."""
        return self.state_dir / f"{self.kind}.good"

    @property
    def trial_path(self) -> Path:
        """Where the payload on trial is kept."""
        return self.state_dir / f"{self.kind}.trial"

    def _load_journal(self) -> Journal:
        path = self.state_dir / f"{self.kind}-{JOURNAL_FILE}"
        try:
            return Journal.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return Journal()

    def _save_journal(self, journal: Journal) -> None:
        data = json.dumps(journal.to_json(), sort_keys=True).encode()
        atomic_write(self.state_dir / f"{self.kind}-{JOURNAL_FILE}", data, fsync=self.fsync)
        self.journal = journal

    def _save_trust(self, trust: TrustedState) -> None:
        save_trust(self.state_dir, trust, fsync=self.fsync)
        self.trust = trust

    # ------------------------------------------------------------------ public

    def boot(self) -> tuple[bytes | None, dict[str, Any] | None]:
        """Recover after a restart: the good payload to run (None: the local config) and a
        report for the fleet if an apply was interrupted."""
        journal, report = recover(self.journal)
        if report is not None:
            self._save_journal(journal)
            report = self._report(report["version"], Result(report["result"]), report["reason"])
        good = self.good_path.read_bytes() if self.good_path.exists() else None
        return good, report

    def status(self) -> dict[str, Any]:
        """Committed version and the trial, for the reported topic and health."""
        t = self.journal.trial
        return {"kind": self.kind, "committed": self.trust.floor(self.kind),
                "good": self.journal.good_version,
                "trial": None if t is None else {"version": t.version, "stage": str(t.stage)}}

    def health(self) -> dict[str, Any]:
        """The gateway health's ``control`` section: bundles offered, results, refusals by
        reason, and where the committed and trial versions are. Also logs the summary of
        refusals gathered since the last one (health is built periodically)."""
        self.rejections.maybe_summarise()
        return {"offered": self.counters.offered,
                "by_result": dict(sorted(self.counters.by_result.items())),
                "rejected_by_reason": dict(sorted(self.rejections.counts.items())),
                **self.status()}

    async def offer(self, blob: bytes, current: C | None) -> dict[str, Any]:
        """Run one bundle through every stage; the report to publish. ``current`` is the config
        running now (switched back to on a revert)."""
        async with self._lock:
            self.counters.offered += 1
            report = await self._offer(blob, current)
            result = str(report["result"])
            self.counters.by_result[result] = self.counters.by_result.get(result, 0) + 1
            return report

    # ------------------------------------------------------------------ stages

    def _report(self, version: int | None, result: Result, reason: str) -> dict[str, Any]:
        return {"kind": self.kind, "version": version, "result": str(result), "reason": reason,
                "committed": self.trust.floor(self.kind), "ts": int(self.clock.now() * 1000)}

    async def _offer(self, blob: bytes, current: C | None) -> dict[str, Any]:
        verdict = verify_bundle(blob, self.trust, self.kind, self.clock.now(),
                                max_payload=self.max_payload)
        if verdict.code == CURRENT:
            return self._report(self.trust.floor(self.kind), Result.CURRENT, verdict.reason)
        if verdict.code != ACCEPTED or verdict.bundle is None:
            # The version is the bundle's unverified claim, so the fleet can attribute it.
            claimed = claimed_version(blob)
            self.rejections.reject("fault" if verdict.reason.startswith(FAULT) else "unverified",
                                   f"v{claimed}, nothing changed: {verdict.reason}")
            return self._report(claimed, Result.REJECTED, verdict.reason)
        bundle = verdict.bundle
        # An authentic newer root (rotation, revocation) is kept even if the config fails.
        if verdict.trust.root != self.trust.root:
            self._save_trust(replace(self.trust, root=verdict.trust.root))
        earlier = self.journal.already_failed(bundle)
        if earlier is not None:
            reason = f"v{bundle.version} already failed here: {earlier}"
            self.rejections.reject("already_failed", reason)
            return self._report(bundle.version, Result.REJECTED, reason)
        if bundle.sha256 == self.journal.good_sha256:
            # Same config under a new version (a re-signed rollback, or a commit cut short by
            # a crash): nothing to switch, only the floor moves.
            self._save_journal(Journal(bundle.version, bundle.sha256))
            self._save_trust(self.trust.committed(self.kind, bundle.version, bundle.sha256,
                                                  bundle.issued))
            return self._report(bundle.version, Result.APPLIED, "same config, version advanced")
        return await self._apply(bundle, current)

    async def _apply(self, bundle: Bundle, current: C | None) -> dict[str, Any]:
        journal = self.journal.advance(Stage.VERIFIED, bundle)
        try:
            config = self.validate(bundle.payload)
        except Exception as exc:  # a bug in validation must cost this bundle, not the gateway
            return self._failed(journal, Stage.FAILED, Result.INVALID,
                                f"invalid config: {_why(exc, 'validation')}")
        journal = journal.advance(Stage.VALIDATED)
        try:
            await self._within(self.dry_run(config), self.dry_run_timeout_s, config,
                               f"{self.kind} v{bundle.version}: dry run")
        except Exception as exc:
            return self._failed(journal, Stage.FAILED, Result.DRY_RUN_FAILED,
                                f"dry run failed: {_why(exc, 'the dry run')}")
        journal = journal.advance(Stage.DRY_RUN_OK)
        # Persist before switching: from here a restart must revert.
        atomic_write(self.trial_path, bundle.payload, fsync=self.fsync)
        self._save_journal(journal.advance(Stage.SWITCHED))
        good = self.journal.good_version
        try:
            await self._switch_within(config, f"switch to {self.kind} v{bundle.version}")
            with self.ops.step(f"{self.kind} v{bundle.version}: health gate",
                               self.hold_s + self.check_every_s + GATE_MARGIN_S):
                ok, why = await self._health_gate()
        except Exception as exc:  # whatever broke the switch, the revert below still runs
            ok, why = False, f"switch failed: {_why(exc, 'the switch')}"
        if not ok:
            back = f"reverted to v{good}"
            if current is not None:
                try:
                    await self._switch_within(current, f"revert to {self.kind} v{good}")
                except Exception as exc:
                    exc_text = _why(exc, "the revert")
                    self.revert_failed = f"the revert to {self.kind} v{good} failed: {exc_text}"
                    log.error("%s; the watchdog will have the gateway restarted on it",
                              self.revert_failed)
                    back = f"the revert to v{good} failed ({exc_text}); restarting on it"
            return self._failed(self.journal, Stage.REVERTED, Result.REVERTED,
                                f"health gate failed: {why}; {back}")
        # Commit: good payload, then journal, then the floor (see the module docstring).
        atomic_write(self.good_path, bundle.payload, fsync=self.fsync)
        self._save_journal(self.journal.commit())
        self._save_trust(self.trust.committed(self.kind, bundle.version, bundle.sha256,
                                              bundle.issued))
        return self._report(bundle.version, Result.APPLIED,
                            f"committed after {self.hold_s:g} s healthy")

    def _failed(self, journal: Journal, stage: Stage, result: Result,
                reason: str) -> dict[str, Any]:
        t = journal.trial
        assert t is not None
        self._save_journal(journal.fail(stage, reason))
        log.warning("%s v%d not applied: %s", self.kind, t.version, reason)
        return self._report(t.version, result, reason)

    async def _switch_within(self, config: C, what: str) -> None:
        """``switch(config)`` within its deadline; Overrun (an EdgeError) if it did not end."""
        await self._within(self.switch(config), self.switch_timeout_s, config, what)

    async def _within(self, step: Awaitable[None], limit_s: float | Callable[[C], float],
                      config: C, what: str) -> None:
        """Await ``step`` as a tracked operation; Overrun (an EdgeError) past its deadline."""
        limit = limit_s(config) if callable(limit_s) else limit_s
        with self.ops.step(what, limit):
            try:
                async with asyncio.timeout(limit):
                    await step
            except TimeoutError as exc:
                log.error("%s did not complete within %g s: cancelled", what, limit)
                raise Overrun(f"{what} did not complete within {limit:g} s") from exc

    async def _health_gate(self) -> tuple[bool, str]:
        """Healthy at every check for ``hold_s`` (at least one check)."""
        deadline = self.clock.monotonic() + self.hold_s
        checks = 0
        while True:
            ok, why = await self.healthy()
            checks += 1
            if not ok:
                return False, f"check {checks}: {why}"
            if self.clock.monotonic() >= deadline:
                return True, f"{checks} checks passed"
            await self.clock.sleep(min(self.check_every_s,
                                       max(0.0, deadline - self.clock.monotonic())))


def _why(exc: Exception, step: str) -> str:
    """An exception as a report's reason; one that is not ours is a bug, logged with its stack."""
    if isinstance(exc, EdgeError):
        return str(exc)
    log.error("%s raised %s (a bug: the trial fails, the gateway goes on)", step,
              type(exc).__name__, exc_info=exc)
    return f"internal error in {step}: {type(exc).__name__}: {exc}"

