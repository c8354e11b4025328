"""The control plane's pure core: where a trial bundle is, and what a restart does with it.

``Stage`` with its transition table, the ``Journal`` (what is committed, what is on trial,
which bundles failed) and ``recover`` take values and return values; ``plane`` persists the
journal and drives the steps around it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from edge_agent.protocol.verify import Bundle


class Stage(StrEnum):
    """Where a trial bundle is."""

    VERIFIED = "verified"
    VALIDATED = "validated"
    DRY_RUN_OK = "dry_run_ok"
    SWITCHED = "switched"
    COMMITTED = "committed"
    REVERTED = "reverted"
    FAILED = "failed"


# The only legal moves; anything else is a bug and raises (a table, not scattered ifs).
TRANSITIONS: dict[Stage | None, frozenset[Stage]] = {
    None: frozenset({Stage.VERIFIED}),
    Stage.VERIFIED: frozenset({Stage.VALIDATED, Stage.FAILED}),
    Stage.VALIDATED: frozenset({Stage.DRY_RUN_OK, Stage.FAILED}),
    Stage.DRY_RUN_OK: frozenset({Stage.SWITCHED, Stage.FAILED}),
    Stage.SWITCHED: frozenset({Stage.COMMITTED, Stage.REVERTED}),
}


class Result(StrEnum):
    """What a bundle came to, as reported to the fleet."""

    APPLIED = "applied"
    CURRENT = "current"
    REJECTED = "rejected"          # failed verification: nothing changed
    INVALID = "invalid"            # verified but the config does not validate
    DRY_RUN_FAILED = "dry_run_failed"
    REVERTED = "reverted"          # switched, then the health gate (or a restart) reverted it


@dataclass(frozen=True, slots=True)
class Trial:
    """A bundle on its way through the stages."""

    version: int
    sha256: str
    issued: int
    stage: Stage


@dataclass(frozen=True, slots=True)
class Journal:
    """The persisted control state: the last known good config and the trial, if any."""

    good_version: int = 0
    good_sha256: str = ""
    trial: Trial | None = None
    failed: dict[str, Any] | None = None  # {version, sha256, reason} of the last failed trial

    def advance(self, stage: Stage, bundle: Bundle | None = None) -> Journal:
        """The journal after moving the trial to ``stage``; ValueError if illegal."""
        current = self.trial.stage if self.trial else None
        if stage not in TRANSITIONS.get(current, frozenset()):
            raise ValueError(f"illegal control transition {current} -> {stage}")
        if self.trial is None:
            assert bundle is not None
            return replace(self, trial=Trial(bundle.version, bundle.sha256, bundle.issued,
                                             stage))
        return replace(self, trial=replace(self.trial, stage=stage))

    def commit(self) -> Journal:
        """The trial becomes the last known good."""
        t = self.advance(Stage.COMMITTED).trial
        assert t is not None
        return Journal(good_version=t.version, good_sha256=t.sha256, trial=None, failed=None)

    def fail(self, stage: Stage, reason: str) -> Journal:
        """The trial ends at ``stage`` (failed or reverted) and is remembered as failed."""
        t = self.advance(stage).trial
        assert t is not None
        return replace(self, trial=None,
                       failed={"version": t.version, "sha256": t.sha256, "reason": reason})

    def already_failed(self, bundle: Bundle) -> str | None:
        """The reason if exactly this bundle was tried before and failed."""
        f = self.failed
        if f and f["version"] == bundle.version and f["sha256"] == bundle.sha256:
            return str(f["reason"])
        return None

    def to_json(self) -> dict[str, Any]:
        """The journal as stored."""
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Journal:
        """Parse a stored journal."""
        t = doc.get("trial")
        trial = Trial(int(t["version"]), str(t["sha256"]), int(t["issued"]),
                      Stage(t["stage"])) if t else None
        return cls(int(doc.get("good_version", 0)), str(doc.get("good_sha256", "")), trial,
                   doc.get("failed"))


def recover(journal: Journal) -> tuple[Journal, dict[str, Any] | None]:
    """What a restart does with an unfinished trial: the journal to keep and a report."""
    t = journal.trial
    if t is None:
        return journal, None
    reason = f"gateway restarted during apply (stage {t.stage}); running last known good " \
             f"v{journal.good_version}"
    end = Stage.REVERTED if t.stage is Stage.SWITCHED else Stage.FAILED
    result = Result.REVERTED if end is Stage.REVERTED else Result.DRY_RUN_FAILED
    return journal.fail(end, reason), {"version": t.version, "result": str(result),
                                       "reason": reason}
