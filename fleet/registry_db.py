"""The registry's database connection: SQLite or PostgreSQL through the same SQL.

Only '?' placeholders are rewritten to '%s' for PostgreSQL. Statements are serialised by a lock
(the enrolment endpoint may run in another thread); a transaction holds it from BEGIN to
COMMIT, and nested transactions join the outermost one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from edge_agent.fleet.pgconnect import connect_postgresql, is_postgresql
from edge_agent.fleet.registry_schema import COLUMNS, INDEXES, SCHEMA
from edge_agent.fleet.sqlite_file import create_private_sqlite
from edge_agent.protocol.errors import ConfigError


class Database:
    """One database connection, SQLite or PostgreSQL, with the registry's schema."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._depth = 0  # transaction nesting: only the outermost one begins and commits
        if is_postgresql(url):
            self._conn: Any = connect_postgresql(url, autocommit=True)
            self.pg = True
        else:
            # sqlite:///relative.db and sqlite:////absolute/path.db (SQLAlchemy's spelling)
            path = url.removeprefix("sqlite:///")
            if path.startswith(("sqlite:", "postgres")) or not path:
                raise ConfigError(f"registry URL {url!r}: expected sqlite:///PATH, a file path "
                                  "or postgresql://...")
            create_private_sqlite(path)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self.pg = False
        with self.transaction():
            for stmt in SCHEMA:
                self.execute(stmt)
        self._add_columns()
        with self.transaction():
            for stmt in INDEXES:
                self.execute(stmt)

    def _add_columns(self) -> None:
        """Add the columns a database created by an older version lacks."""
        for table, column, decl in COLUMNS:
            try:
                self.fetchall(f"SELECT {column} FROM {table} LIMIT 0")
            except Exception:  # the column is missing (each driver has its own error class)
                self.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    # ------------------------------------------------------------------ SQL plumbing

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._lock:
            cur = self._conn.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row of parameters (one round trip per batch)."""
        if not rows:
            return
        with self._lock:
            if self.pg:
                with self._conn.cursor() as cur:
                    cur.executemany(self._sql(sql), [tuple(r) for r in rows])
            else:
                self._conn.executemany(sql, [tuple(r) for r in rows])

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query; every row."""
        with self._lock:
            return [tuple(r) for r in self._conn.execute(self._sql(sql), tuple(params))]

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """Run a query; the first row or None."""
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction around several statements (BEGIN ... COMMIT, ROLLBACK on error).

        Nested ones join the outermost, so a batch of records commits once (one commit, one
        WAL flush, for many messages) while each record stays atomic on its own.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.execute("BEGIN")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self.execute("ROLLBACK")
                raise
            self._depth = 0
            self.execute("COMMIT")
