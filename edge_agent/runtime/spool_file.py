"""The spool file's format and its rescue: schema, integrity check, quarantine and salvage.

A spool that fails its check at open is moved aside whole (kept for forensics) and every row
whose checksum still matches is read back from a copy; ``runtime.spool_db`` then stores them in
a fresh file. Synchronous, like the rest of the SQLite side.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.runtime.spool_core import integrity_ok, payload_crc

log = logging.getLogger(__name__)

COLUMNS = ["id", "epoch", "seq", "readings", "nbytes", "crc", "payload"]
SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- append order; never reused, so a cursor stays valid
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- batches the broker acknowledged and no receipt confirmed yet (spool_sent.py); ord is the
-- order of their last send, sent_ms the wall time of their first
CREATE TABLE IF NOT EXISTS sent (id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL, ord INTEGER NOT NULL, sent_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sent_seq ON sent (epoch, seq);
CREATE INDEX IF NOT EXISTS sent_ord ON sent (ord);
CREATE TRIGGER IF NOT EXISTS batch_gone AFTER DELETE ON batches
    BEGIN DELETE FROM sent WHERE id = old.id; END;
"""
# Lifetime counters kept in the file itself, so a restart never hides an earlier loss.
COUNTER_KEYS = ("dropped_batches", "dropped_readings", "full_events", "integrity_events",
                "salvaged_batches", "confirmed_batches", "expired_batches", "resent_batches",
                "missed_slots", "rejected")
# State kept beside them: receipts seen once (auto mode), the send order, and the last life's
# epoch and seq (the next boot reports them so the ingest knows that epoch's end).
STATE_KEYS = ("receipts_seen", "send_ord", "life_epoch", "life_seq")
META_KEYS = COUNTER_KEYS + STATE_KEYS
SELECT_ROWS = "SELECT id, epoch, seq, readings, nbytes, crc, payload FROM batches"
MAX_PROBES = 2_000_000

SalvagedRow = tuple[int, int, int, int, bytes]   # epoch, seq, readings, crc, payload
# The state dir holds the trust state, the MQTT password and the spool: the gateway's alone,
# whatever the umask of whoever started it (the unit sets 0077; a shell usually 0022).
STATE_DIR_MODE = 0o700
SPOOL_FILE_MODE = 0o600
SPOOL_SUFFIXES = ("", "-wal", "-shm", ".reserve")  # the database, SQLite's two, the reserve


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with the directory itself 0700; narrow it if more open."""
    if not path.is_dir():
        path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, STATE_DIR_MODE)  # mkdir's mode is masked by the umask
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, mode & ~0o077 | STATE_DIR_MODE)
        except OSError as exc:
            log.warning("state directory %s is mode %04o, open to other users, and cannot be "
                        "narrowed to 0700: %s", path, mode, exc)
            return
        log.warning("state directory %s was mode %04o, open to other users: narrowed to %04o",
                    path, mode, mode & ~0o077 | STATE_DIR_MODE)


def private_file(path: Path, *, create: bool) -> None:
    """Leave ``path`` 0600 whatever the umask; create it empty first if ``create``."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, SPOOL_FILE_MODE)
    except FileNotFoundError:
        if create:
            raise
        return
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode != SPOOL_FILE_MODE:
            try:
                os.fchmod(fd, SPOOL_FILE_MODE)
            except OSError as exc:  # another user's file: SQLite may still use it, so warn
                log.warning("spool file %s is mode %04o and cannot be made 0600: %s", path,
                            mode, exc)
    finally:
        os.close(fd)


@dataclass(slots=True)
class IntegrityEvent:
    """A spool that failed its check at start: where it went and what was saved from it."""

    problem: str
    quarantined: str
    salvaged_batches: int
    ts_ms: int


@dataclass(slots=True)
class Salvage:
    """What was read back from a quarantined spool."""

    event: IntegrityEvent
    rows: list[SalvagedRow] = field(default_factory=list)   # in id order
    meta: dict[str, int] = field(default_factory=dict)      # its lifetime counters


def check_file(path: Path) -> str | None:
    """None when the spool file is sound, else what is wrong with it."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            if not integrity_ok(rows):
                return "integrity_check: " + "; ".join(str(r[0]) for r in rows[:5])
            cols = [r[1] for r in conn.execute("PRAGMA table_info(batches)")]
            if cols and cols != COLUMNS:
                return f"table batches has columns {cols}, expected {COLUMNS}"
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _salvage(conn: sqlite3.Connection) -> list[SalvagedRow]:
    """Rows readable from a damaged spool whose checksum still matches, in id order."""
    found: dict[int, tuple[Any, ...]] = {}
    top = 0
    try:
        for row in conn.execute(SELECT_ROWS + " ORDER BY id"):
            found[row[0]] = row
            top = row[0]
        complete = True
    except sqlite3.DatabaseError:
        complete = False
    if not complete:  # read down from the end, then probe the ids in between one by one
        bottom = None
        try:
            for row in conn.execute(SELECT_ROWS + " ORDER BY id DESC"):
                if row[0] <= top:
                    break
                found[row[0]] = row
                bottom = row[0]
        except sqlite3.DatabaseError:
            pass
        if bottom is None:
            try:
                bottom = int(conn.execute("SELECT seq FROM sqlite_sequence "
                                          "WHERE name = 'batches'").fetchone()[0]) + 1
            except (sqlite3.DatabaseError, TypeError, ValueError):
                bottom = top + 1
        for rid in range(top + 1, min(bottom, top + 1 + MAX_PROBES)):
            try:
                row = conn.execute(SELECT_ROWS + " WHERE id = ?", (rid,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row is not None:
                found[rid] = row
    good: list[SalvagedRow] = []
    for rid in sorted(found):
        _, epoch, seq, readings, nbytes, crc, payload = found[rid]
        if (isinstance(payload, bytes) and len(payload) == nbytes
                and payload_crc(payload) == crc and all(isinstance(v, int)
                                                        for v in (epoch, seq, readings))):
            good.append((epoch, seq, readings, crc, payload))
    return good


def quarantine(path: Path, problem: str) -> Salvage:
    """Move the damaged spool's files aside (kept for forensics) and read what can be read."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    qdir = path.parent / f"spool-corrupt-{stamp}"
    n = 1
    while qdir.exists():
        n += 1
        qdir = path.parent / f"spool-corrupt-{stamp}-{n}"
    # 0700 like the state dir it sits in (the moved files keep their 0600); umask aside.
    qdir.mkdir(mode=0o700, parents=True)
    os.chmod(qdir, 0o700)
    names = [path.name + s for s in ("", "-wal", "-shm")]
    for name in names:
        if (path.parent / name).exists():
            os.replace(path.parent / name, qdir / name)
    # Salvage from a copy: opening the quarantined file would replay its WAL into it and
    # change the evidence.
    work = qdir / "salvage-work"
    work.mkdir(mode=0o700)
    rows: list[SalvagedRow] = []
    meta: dict[str, int] = {}
    try:
        for name in names[:2]:
            if (qdir / name).exists():
                shutil.copyfile(qdir / name, work / name)
        conn = sqlite3.connect(str(work / path.name), isolation_level=None)
        try:
            rows = _salvage(conn)
            try:
                meta = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            except (sqlite3.DatabaseError, TypeError, ValueError):
                meta = {}
        finally:
            conn.close()
    except (sqlite3.DatabaseError, OSError) as exc:
        log.warning("spool salvage from %s stopped: %s", qdir, exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    event = IntegrityEvent(problem, str(qdir), len(rows), int(time.time() * 1000))
    log.error("spool %s failed its check (%s): moved to %s, %d batches salvaged",
              path, problem, qdir, len(rows))
    return Salvage(event, rows, meta)
