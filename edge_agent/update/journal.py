"""The update journal: every persisted step of a software update, fsynced, with a fault hook.

Standard library only: the supervisor (``edge_agent.update.supervisor``) reads and writes it.

One JSON file, ``ROOT/update.json``, replaced atomically (temporary file, fsync, rename, fsync of
the directory) at each step, in this order (docs/updates.md has the full table)::

    download -> verify -> unpack -> install -> switch -> start (one per attempt) -> health -> commit
                                                   \\-> rollback -> rolled_back

``step`` is the last step persisted. Steps before ``switch`` change nothing that runs: a crash
there leaves ``current`` on the old release and the staging is redone (the download resumes).
From ``switch`` on, the supervisor owns the trial: it finishes the switch, starts the new
release at most ``max_starts`` times, commits it once healthy, or rolls back by itself.

Fault injection (tests, and anyone who wants to prove power-loss safety on real hardware):
``EDGE_UPDATE_CRASH_AT=STEP`` makes the process SIGKILL itself right after STEP was persisted
and synced, every time; ``EDGE_UPDATE_CRASH_AT=STEP:once`` only the first time (a marker file
``ROOT/.crash-STEP`` remembers it). That is a power cut at the worst moment of each step.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.protocol.fileio import atomic_write

JOURNAL = "update.json"
CRASH_ENV = "EDGE_UPDATE_CRASH_AT"
STEPS = ("download", "verify", "unpack", "install", "switch", "start", "health", "commit",
         "rollback", "rolled_back", "refused")
STAGING = ("download", "verify", "unpack", "install")   # nothing switched yet
TRIAL = ("switch", "start", "health", "rollback")        # the supervisor finishes these
SETTLED = ("", "commit", "rolled_back", "refused")
MAX_HISTORY = 40
MAX_STAGE_ATTEMPTS = 3  # staging one release that dies this often is given up (loop guard)


@dataclass
class UpdateJournal:
    """What the gateway's software is doing; persisted at each step."""

    step: str = ""                 # the last step persisted ("" : nothing ever happened)
    target: str = ""               # the release being staged or tried
    target_number: int = 0
    target_sha256: str = ""        # the signed manifest's hash (the committed payload hash)
    target_issued: int = 0
    previous: str = ""             # the release to fall back to
    committed: str = ""            # the last release that passed its health gate
    committed_number: int = 0      # its number: the anti-rollback floor of software
    committed_sha256: str = ""     # its signed manifest's hash
    attempts: int = 0              # starts of the target in this trial
    stage_attempts: int = 0        # stagings of the target begun (loop guard)
    downloaded: int = 0            # bytes of the artefact on disk when last persisted
    reason: str = ""               # why the last trial was rolled back or refused
    log_tail: list[str] = field(default_factory=list)   # the failed release's last log lines
    failed: dict[str, str] = field(default_factory=dict)  # version -> why it was rolled back
    history: list[list[Any]] = field(default_factory=list)  # [time, step, target]

    @property
    def in_trial(self) -> bool:
        """True while the supervisor must finish a switch, a start or a rollback."""
        return self.step in TRIAL

    def to_json(self) -> dict[str, Any]:
        """The journal as stored."""
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> UpdateJournal:
        """Parse a stored journal; ValueError if it is not one."""
        if not isinstance(doc, dict):
            raise ValueError("update journal is not a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        j = cls(**{k: v for k, v in doc.items() if k in known})
        if j.step and j.step not in STEPS:
            raise ValueError(f"update journal step {j.step!r} unknown")
        return j


def journal_path(root: Path) -> Path:
    """Where the journal of the install root ``root`` lives."""
    return root / JOURNAL


def load_journal(root: Path) -> UpdateJournal:
    """The journal (empty if none yet). A corrupt one is kept aside and an empty one used."""
    path = journal_path(root)
    try:
        return UpdateJournal.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return UpdateJournal()
    except (ValueError, TypeError):
        # Written atomically, so this is not a torn write: someone edited it. Keep it for
        # inspection; what runs is decided by the `current` link, never by a guess.
        os.replace(path, path.with_suffix(f".corrupt-{int(time.time())}"))
        return UpdateJournal()


def persist(root: Path, journal: UpdateJournal, step: str, *, fsync: bool = True) -> None:
    """Record ``step`` durably, then run the fault-injection hook for it."""
    if step not in STEPS:
        raise ValueError(f"unknown update step {step!r}")
    journal.step = step
    journal.history = [*journal.history, [int(time.time()), step, journal.target]][
        -MAX_HISTORY:]
    atomic_write(journal_path(root), json.dumps(journal.to_json(), sort_keys=True,
                                                indent=1).encode(), 0o644, fsync=fsync)
    crash_point(root, step)


def crash_point(root: Path, step: str) -> None:
    """SIGKILL this process here if ``EDGE_UPDATE_CRASH_AT`` names ``step`` (after the sync)."""
    wanted = os.environ.get(CRASH_ENV, "")
    name, _, mode = wanted.partition(":")
    if name != step:
        return
    if mode == "once":
        marker = root / f".crash-{step}"
        if marker.exists():
            return
        marker.write_bytes(b"")
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
