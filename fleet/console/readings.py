"""Reading the ingest's database (fleet/ingest/schema.py) for the console: a point's series,
downsampled on the server, the rows added since a cursor, and the open gaps.

The console only reads this database; it opens it once through ``IngestStore`` so that a
console started before any ingest finds the tables it queries.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from edge_agent.fleet.ingest.store import IngestStore
from edge_agent.fleet.pgconnect import connect_postgresql, is_postgresql

MAX_BUCKETS = 2000


@dataclass(frozen=True, slots=True)
class Bucket:
    """One point of a chart: a time bucket's start and its values' min, mean, max and count."""

    ts_ms: int
    low: float | None
    mean: float | None
    high: float | None
    count: int
    bad: int  # readings without good quality in the bucket


SERIES = ("SELECT (ts_ms - ?) / ? AS b, MIN(v), AVG(v), MAX(v), COUNT(*), "
          "SUM(CASE WHEN quality = 'good' THEN 0 ELSE 1 END) FROM (SELECT ts_ms, quality, "
          "COALESCE(value_real, value_int) AS v FROM readings WHERE gateway = ? AND device = ? "
          "AND point = ? AND ts_ms >= ? AND ts_ms < ?) AS t GROUP BY b ORDER BY b")
NEW_ROWS = ("SELECT id, gateway, device, point, ts_ms, quality, kind, value_int, value_real, "
            "value_text FROM readings WHERE id > ? ORDER BY id LIMIT ?")


class ReadingsDb:
    """A connection to the ingest's database, shared by the console's threads under a lock."""

    def __init__(self, url: str) -> None:
        IngestStore(url).close()  # creates the tables if no ingest ran yet
        self.pg = is_postgresql(url)
        self._lock = threading.Lock()
        if self.pg:
            self._conn: Any = connect_postgresql(url, autocommit=True, option="--ingest-db")
        else:
            path = url.removeprefix("sqlite:///")
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 5000")

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (``?`` placeholders in both dialects)."""
        with self._lock:
            cur = self._conn.execute(sql.replace("?", "%s") if self.pg else sql, params)
            return [tuple(r) for r in cur.fetchall()]

    def series(self, gateway: str, device: str, point: str, start_ms: int, end_ms: int,
               buckets: int) -> list[Bucket]:
        """The point's readings in [start_ms, end_ms) reduced to at most ``buckets`` buckets."""
        buckets = max(1, min(buckets, MAX_BUCKETS))
        width = max(1, math.ceil((end_ms - start_ms) / buckets))
        out = []
        for b, low, mean, high, n, bad in self.rows(SERIES, (start_ms, width, gateway, device,
                                                             point, start_ms, end_ms)):
            out.append(Bucket(start_ms + int(b) * width, _num(low), _num(mean), _num(high),
                              int(n), int(bad or 0)))
        return out

    def new_rows(self, after_id: int, limit: int) -> list[tuple[Any, ...]]:
        """Readings stored after ``after_id``, oldest first, at most ``limit``."""
        return self.rows(NEW_ROWS, (after_id, limit))

    def max_id(self) -> int:
        """The newest reading's id (0 when there is none)."""
        return int(self.rows("SELECT COALESCE(MAX(id), 0) FROM readings")[0][0])

    def open_gaps(self) -> dict[str, int]:
        """Open gaps per gateway."""
        return {str(g): int(n) for g, n in self.rows(
            "SELECT gateway, COUNT(*) FROM gaps WHERE closed_ms IS NULL GROUP BY gateway")}

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) else None
