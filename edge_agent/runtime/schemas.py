"""Where the gateway keeps its schema messages: the current one, and the last few on disk.

A version 3 batch decodes only with its schema, and a spool may hold batches of earlier boot
epochs when the agent starts. So every schema is written to ``state_dir/schemas/HASH.json``
(atomically, before the first batch that refers to it is stored) and kept for the last
``KEEP`` epochs: the uplink sends the current one retained on every connection, before the
backlog, and any kept one again when a consumer asks for it by hash (a consumer that got a
batch whose schema it lacks parks the batch and asks). Not in the data spool on purpose: its
cap policies may drop or refuse rows, and a schema must outlive every batch that needs it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from edge_agent.codecs.schema import HASH_BYTES, StreamSchema
from edge_agent.protocol.fileio import atomic_write

log = logging.getLogger(__name__)

KEEP = 16  # schemas kept on disk: a spool rarely spans more boot epochs than this
_NAME = re.compile(rf"[0-9a-f]{{{2 * HASH_BYTES}}}\.json")


class SchemaShelf:
    """The current schema and the kept ones (``directory`` None: the current one only)."""

    def __init__(self, current: StreamSchema, directory: Path | None) -> None:
        self.current = current
        self.directory = directory
        self.error: str | None = None

    def save(self) -> None:
        """Write the current schema to disk and forget all but the newest ``KEEP``."""
        if self.directory is None:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self.directory / f"{self.current.hash.hex()}.json", self.current.raw)
            kept = sorted((p for p in self.directory.iterdir() if _NAME.fullmatch(p.name)),
                          key=lambda p: p.stat().st_mtime, reverse=True)
            for old in kept[KEEP:]:
                old.unlink(missing_ok=True)
        except OSError as exc:  # the current schema is still sent; old ones cannot be
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("schemas cannot be kept in %s (%s): batches of earlier epochs still "
                      "spooled may not decode at the ingest", self.directory, self.error)

    def find(self, digest: bytes) -> bytes | None:
        """The schema message with this hash: the current one or a kept one, else None."""
        if digest == self.current.hash:
            return self.current.raw
        if self.directory is None or len(digest) != HASH_BYTES:
            return None
        try:
            return (self.directory / f"{digest.hex()}.json").read_bytes()
        except OSError:
            return None
