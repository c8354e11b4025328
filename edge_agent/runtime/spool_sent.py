"""Sent and not yet confirmed: the spool's SQL for receipts (docs/spool.md, "Receipts").

With receipts on, a batch the broker acknowledged is not deleted but marked in table ``sent``
(state sent-unconfirmed; it keeps its place under the byte cap and is evicted oldest first like
any other). A receipt from the ingest (``protocol.receipts``) deletes the sent batches it
confirms, and names the ones to send again: those in a gap it reports, and those sent before a
batch it confirms (the broker delivers one client's messages in order, so a batch sent earlier
and still unconfirmed was lost on the way). ``retention_s`` after its first send a batch no
receipt confirmed is deleted and counted as dropped.

What a hostile receipt can do is bounded here: it confirms only batches the broker already
acknowledged (never one waiting to be sent), names at most ``MAX_RESEND`` batches to send
again, and a batch is sent again at most once per ``grace_s``.

Synchronous, called on the spool's worker thread by ``runtime.spool_db``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from edge_agent.protocol.receipts import Receipt
from edge_agent.runtime.spool_core import row_cost

MAX_RESEND = 1024   # batches one receipt may send again at most

MARK_SENT = ("INSERT INTO sent (id, epoch, seq, ord, sent_ms) SELECT id, epoch, seq, ?, ? "
             "FROM batches WHERE id = ? ON CONFLICT (id) DO UPDATE SET ord = excluded.ord")
UNSENT = " WHERE id > ? AND id NOT IN (SELECT id FROM sent) ORDER BY id LIMIT ?"


@dataclass(slots=True)
class Confirmed:
    """What one receipt did to the spool."""

    deleted: list[int] = field(default_factory=list)   # row ids confirmed and deleted
    readings: int = 0
    cost: int = 0
    resend: list[int] = field(default_factory=list)    # row ids to send again, oldest first
    last: tuple[int, int] | None = None                # highest (epoch, seq) confirmed


def mark_sent(cur: sqlite3.Cursor, ids: list[int], first_ord: int, now_ms: int) -> int:
    """Mark acknowledged rows sent, in order; the next send order."""
    for i, rid in enumerate(ids):
        cur.execute(MARK_SENT, (first_ord + i, now_ms, rid))
    return first_ord + len(ids)


def sent_count(conn: sqlite3.Connection) -> int:
    """Rows sent and not confirmed."""
    return int(conn.execute("SELECT count(*) FROM sent").fetchone()[0])


def confirm(cur: sqlite3.Cursor, receipt: Receipt, recent: set[int]) -> Confirmed:
    """Delete the sent rows ``receipt`` confirms; name the rows to send again (not ``recent``
    ones, sent within the grace). Runs inside the caller's transaction."""
    out = Confirmed()
    top_ord = -1
    for entry in receipt.epochs:
        rows = cur.execute(
            "SELECT s.id, s.seq, s.ord, b.nbytes, b.readings FROM sent AS s JOIN batches AS b "
            "ON b.id = s.id WHERE s.epoch = ? AND s.seq <= ?",
            (entry.epoch, entry.to)).fetchall()
        for rid, seq, ord_, nbytes, readings in rows:
            if entry.confirms(seq):
                out.deleted.append(rid)
                out.readings += readings
                out.cost += row_cost(nbytes)
                top_ord = max(top_ord, ord_)
                if out.last is None or (entry.epoch, seq) > out.last:
                    out.last = (entry.epoch, seq)
    cur.executemany("DELETE FROM batches WHERE id = ?", [(r,) for r in out.deleted])
    gone = set(out.deleted)
    lost: dict[int, None] = {}
    for entry in receipt.epochs:
        for a, b in entry.gaps:
            for (rid,) in cur.execute("SELECT id FROM sent WHERE epoch = ? AND seq BETWEEN ? "
                                      "AND ? ORDER BY ord LIMIT ?",
                                      (entry.epoch, a, b, MAX_RESEND)):
                lost[rid] = None
    if top_ord >= 0:
        for (rid,) in cur.execute("SELECT id FROM sent WHERE ord < ? ORDER BY ord LIMIT ?",
                                  (top_ord, MAX_RESEND)):
            lost[rid] = None
    out.resend = sorted(r for r in lost if r not in gone and r not in recent)[:MAX_RESEND]
    return out


def expire(cur: sqlite3.Cursor, before_ms: int) -> tuple[int, int, int]:
    """Delete sent rows first sent before ``before_ms``: (batches, readings, cost)."""
    rows = cur.execute("SELECT s.id, b.nbytes, b.readings FROM sent AS s JOIN batches AS b "
                       "ON b.id = s.id WHERE s.sent_ms < ?", (before_ms,)).fetchall()
    cur.executemany("DELETE FROM batches WHERE id = ?", [(r[0],) for r in rows])
    return len(rows), sum(r[2] for r in rows), sum(row_cost(r[1]) for r in rows)
