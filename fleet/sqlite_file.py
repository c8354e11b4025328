"""SQLite files of the operations centre created owner-only (0600), side files included.

The registry holds the gateways' broker password hashes and the ingest the city's readings:
neither is for other local users to read.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress

from edge_agent.protocol.errors import ConfigError

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _private(path: str) -> None:
    # Owner-only; chmod fails only on someone else's file, which is theirs to fix.
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_IMODE(mode) & 0o077:
        with suppress(PermissionError):
            os.chmod(path, stat.S_IMODE(mode) & 0o700)


def create_private_sqlite(path: str) -> None:
    """Create the SQLite file ``path`` 0600 if missing; narrow it and its side files to 0600.

    sqlite3 itself would create it 0644 (less the umask), and gives its -wal and -shm files
    the database file's mode: creating the file first settles all three.
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open: {exc.strerror}") from exc
    os.close(fd)
    for name in (path, *(path + side for side in SQLITE_SIDE_FILES)):
        _private(name)
