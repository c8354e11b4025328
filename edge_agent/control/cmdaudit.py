"""The command audit log: ``commands.log`` in the state dir, append-only, one JSON line each.

Every command the gateway takes in leaves lines here: ``accepted`` when it was verified and is
about to run, then its outcome (``done``, ``refused``, ``failed``), each fsync'd before the
answer goes out; a refused unverified command leaves a ``rejected`` line. The file survives
restarts and is the journal of idempotency: a verified id already in it is answered from it
and never executed again. An id found ``accepted`` without an outcome was cut short by a
restart mid-way; it is answered ``failed`` (its writes may or may not have happened) and not
run again. Unverified commands never claim an id: anyone may publish one, and must not be
able to block the genuine command of that id.

The log is read back at start under limits (a line of at most ``MAX_LINE`` bytes; a damaged
line, say the last one torn by a power cut, is skipped and counted).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict

log = logging.getLogger(__name__)

AUDIT_FILE = "commands.log"
MAX_LINE = 64 * 1024
FINAL = ("done", "refused", "failed")


class AuditLog:
    """Append-only audit of commands, and the index of verified ids (outcome or accepted)."""

    def __init__(self, state_dir: Path, *, fsync: bool = True) -> None:
        self.path = state_dir / AUDIT_FILE
        self.fsync = fsync
        self.by_id: dict[str, dict[str, Any]] = {}   # verified id -> its latest record
        self.counts: Counter[str] = Counter()          # records by status, since the log began
        self.damaged = 0
        self.last_plan_change: dict[str, float] = {}   # cabinet -> wall time of its last plan
        self._torn = False  # the file ends inside a line: the next record starts a new one
        self._load()

    def _load(self) -> None:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return
        with fh:
            for raw in fh:
                self._torn = not raw.endswith(b"\n")
                try:
                    if len(raw) > MAX_LINE:
                        raise UnsafeJsonError("$", f"line of {len(raw)} bytes")
                    rec = loads_strict(raw, max_bytes=MAX_LINE, max_depth=6, max_items=1024,
                                       max_str=4096, allow_float=True)
                    if not isinstance(rec, dict) or not isinstance(rec.get("status"), str):
                        raise UnsafeJsonError("$", "not a record with a status")
                except UnsafeJsonError as exc:
                    self.damaged += 1
                    log.warning("command audit %s: damaged line skipped (%s)", self.path, exc)
                    continue
                self._index(rec)

    def _index(self, rec: dict[str, Any]) -> None:
        status = rec["status"]
        self.counts[status] += 1
        cid = rec.get("id")
        if status != "rejected" and isinstance(cid, str):
            self.by_id[cid] = rec
        if status == "done" and rec.get("action") == "plan" and isinstance(rec.get("device"),
                                                                            str):
            ts = rec.get("ts")
            if isinstance(ts, int | float):
                self.last_plan_change[rec["device"]] = ts / 1000

    def append(self, rec: dict[str, Any]) -> None:
        """Append one record (fsync'd unless told otherwise) and index it."""
        line = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        if self._torn:
            line = b"\n" + line  # never glue a record onto the torn end of the last one
            self._torn = False
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._index(rec)

    def seen(self, cid: str) -> dict[str, Any] | None:
        """The latest record of a verified id, if it was ever taken in."""
        return self.by_id.get(cid)

    def health(self) -> dict[str, Any]:
        """Counts for the gateway's health."""
        return {"by_status": dict(sorted(self.counts.items())), "ids": len(self.by_id),
                "damaged_lines": self.damaged}
