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

A gateway runs for years on a small card, so the log is bounded: past ``MAX_BYTES`` it is
rotated to ``commands.log.1`` (the one before is dropped) and the new log starts with what the
journal still needs, written and synced before the switch: the latest record of every id
verified within ``KEEP_S`` (twice the longest a command lives, so no unexpired command can be
replayed however many records came after it) and each cabinet's last plan change (for
``min_plan_change_s``). Unverified ``rejected`` records are never carried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from edge_agent.protocol.command import MAX_LIFETIME_S
from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict

log = logging.getLogger(__name__)

AUDIT_FILE = "commands.log"
MAX_LINE = 64 * 1024
FINAL = ("done", "refused", "failed")
MAX_BYTES = 4 * 1024 * 1024   # about 13,000 records; at most twice this on disk with the .1
KEEP_S = 2 * MAX_LIFETIME_S


class AuditLog:
    """Append-only audit of commands, and the index of verified ids (outcome or accepted)."""

    def __init__(self, state_dir: Path, *, fsync: bool = True, max_bytes: int = MAX_BYTES) -> None:
        self.path = state_dir / AUDIT_FILE
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.rotations = 0
        self.by_id: dict[str, dict[str, Any]] = {}   # verified id -> its latest record
        self.counts: Counter[str] = Counter()          # records by status, since the log began
        self.damaged = 0
        self.last_plan_change: dict[str, float] = {}   # cabinet -> wall time of its last plan
        self._plan_records: dict[str, dict[str, Any]] = {}  # cabinet -> that record
        self._newest_ms = 0
        self._torn = False  # the file ends inside a line: the next record starts a new one
        self._load()

    def _load(self) -> None:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            try:  # a rotation cut short between its two renames: the whole log is in .1
                fh = self._older.open("rb")
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

    @property
    def _older(self) -> Path:
        return self.path.with_name(AUDIT_FILE + ".1")

    def _index(self, rec: dict[str, Any]) -> None:
        status = rec["status"]
        self.counts[status] += 1
        if isinstance(rec.get("ts"), int):
            self._newest_ms = max(self._newest_ms, rec["ts"])
        cid = rec.get("id")
        if status != "rejected" and isinstance(cid, str):
            self.by_id[cid] = rec
        if status == "done" and rec.get("action") == "plan" and isinstance(rec.get("device"),
                                                                            str):
            ts = rec.get("ts")
            if isinstance(ts, int | float):
                self.last_plan_change[rec["device"]] = ts / 1000
                self._plan_records[rec["device"]] = rec

    def append(self, rec: dict[str, Any]) -> None:
        """Append one record (fsync'd unless told otherwise) and index it."""
        line = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size + len(line) > self.max_bytes:
                self._rotate()
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

    def _rotate(self) -> None:
        """Start a new log with what the journal still needs; the old one becomes ``.1``."""
        since_ms = self._newest_ms - int(KEEP_S * 1000)
        carried = {id(r): r for r in self.by_id.values()
                   if isinstance(r.get("ts"), int) and r["ts"] >= since_ms}
        carried.update({id(r): r for r in self._plan_records.values()})
        data = b"".join(json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n"
                        for r in sorted(carried.values(), key=lambda r: r.get("ts", 0)))
        os.replace(self.path, self._older)  # a crash here leaves it all in .1 (read at start)
        atomic_write(self.path, data, fsync=self.fsync)
        self._torn = False
        self.rotations += 1
        log.info("command audit %s rotated: %d records carried, the rest in %s", self.path,
                 len(carried), self._older.name)

    def seen(self, cid: str) -> dict[str, Any] | None:
        """The latest record of a verified id, if it was ever taken in."""
        return self.by_id.get(cid)

    def health(self) -> dict[str, Any]:
        """Counts for the gateway's health."""
        return {"by_status": dict(sorted(self.counts.items())), "ids": len(self.by_id),
                "damaged_lines": self.damaged, "rotations": self.rotations}
