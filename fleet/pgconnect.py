"""One way the operations centre opens PostgreSQL: the driver imported on demand, and no wait
without an end.

A database that stops answering must become an error the supervisor sees and restarts, not a
consumer frozen on a socket: connecting gives up after 10 s, TCP keepalives
find a peer that vanished, and a statement that runs longer than ``STATEMENT_TIMEOUT`` (far
beyond any the registry or the ingest issues, so only one stuck behind a lock) is cancelled.
"""

from __future__ import annotations

from typing import Any

from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.shell import shown_url

SCHEMES = ("postgresql://", "postgres://")
STATEMENT_TIMEOUT = "120s"
DEFAULTS: dict[str, Any] = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                            "keepalives_interval": 10, "keepalives_count": 3}


def is_postgresql(url: str) -> bool:
    """True for a PostgreSQL connection URL."""
    return url.startswith(SCHEMES)


def connect_postgresql(url: str, *, autocommit: bool, option: str = "--db") -> Any:
    """A psycopg connection with the timeouts above (the driver's errors propagate: callers
    open through ``protocol.shell.opened``, which names the option and hides the password)."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise ConfigError(f"{option} {shown_url(url)}: PostgreSQL needs psycopg "
                          "(pip install 'edge-agent[postgresql]')") from exc
    given = conninfo_to_dict(url)
    # What the URL says wins; the rest are our defaults.
    params: dict[str, Any] = {k: v for k, v in DEFAULTS.items() if k not in given}
    params["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT} " \
                        f"{given.get('options') or ''}".strip()  # later -c settings win
    return psycopg.connect(url, autocommit=autocommit, **params)
