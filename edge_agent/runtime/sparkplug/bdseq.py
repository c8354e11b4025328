"""The bdSeq counter, kept across restarts in one small file of the state directory.

Sparkplug 3.0 (6.4.19, [tck-id-topics-nbirth-bdseq-increment]): bdSeq starts at 0 and goes up
by one, 255 wrapping to 0, on every MQTT CONNECT; the NDEATH will and the NBIRTH of one session
carry the same value. Kept on disk so that after a kill -9 the broker's NDEATH for the old
session (bdSeq n) cannot be taken by a host for the death of the new one (n + 1).

The file is read as untrusted: anything but a decimal 0-255 is logged and counting starts
again at 0. A state directory that cannot be written costs only the persistence (logged once).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_agent.protocol.fileio import atomic_write

log = logging.getLogger(__name__)


class BdSeqStore:
    """Hands out the bdSeq of each new connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: int | None = self._read()
        self._write_failed = False

    def _read(self) -> int | None:
        try:
            raw = self.path.read_bytes()[:16]
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("sparkplug bdSeq file %s unreadable (%s): starting at 0", self.path, exc)
            return None
        text = raw.strip()
        if text.isdigit() and len(text) <= 3 and int(text) <= 255:
            return int(text)
        log.warning("sparkplug bdSeq file %s holds %r, not a number 0-255: starting at 0",
                    self.path, raw)
        return None

    def next(self) -> int:
        """The bdSeq for the next CONNECT, recorded before it is used."""
        value = 0 if self._last is None else (self._last + 1) % 256
        self._last = value
        try:
            atomic_write(self.path, f"{value}\n".encode(), 0o644, fsync=False)
        except OSError as exc:
            if not self._write_failed:
                self._write_failed = True
                log.warning("sparkplug bdSeq not kept in %s (%s): a restart starts at 0 again",
                            self.path, exc)
        return value
