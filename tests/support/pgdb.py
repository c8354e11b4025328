"""A throw-away PostgreSQL schema for tests and the benchmark (the registry's SQL in isolation)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

PG_BASE = os.environ.get("EDGE_FLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_available(base: str = PG_BASE) -> bool:
    """True if the test PostgreSQL server answers."""
    try:
        import psycopg

        with psycopg.connect(base, connect_timeout=3):
            return True
    except Exception:  # any failure means "not here"
        return False


@contextmanager
def pg_schema(base: str = PG_BASE) -> Iterator[str]:
    """A fresh schema; yields a registry URL whose search_path is that schema; dropped after."""
    import psycopg

    name = f"fleet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
