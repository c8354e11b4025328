"""The agent's health report for the supervisor: ``STATE_DIR/health.json``, rewritten often.

The supervisor gates a new release on it: its own pid, its version, ``healthy`` true (what the
gateway's health gate checks: uplink up, every device answering, the config applied).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_agent import __version__
from edge_agent.protocol.fileio import atomic_write

HEALTH_FILE = "health.json"
INTERVAL_S = 1.0
REFRESH_S = 60.0


async def write_health(state_dir: Path, healthy: Callable[[], Awaitable[tuple[bool, str]]],
                       interval_s: float = INTERVAL_S, refresh_s: float = REFRESH_S) -> None:
    """Check health every ``interval_s``; write the file when it changes (and every
    ``refresh_s``), so an SD card sees a write a minute, not a second (no fsync: advisory)."""
    last: tuple[bool, str] | None = None
    written = 0.0
    while True:
        ok, reason = await healthy()
        now = time.monotonic()
        if (ok, reason) != last or now - written >= refresh_s:
            doc = {"pid": os.getpid(), "version": __version__, "healthy": ok, "reason": reason,
                   "time": time.time()}
            await asyncio.to_thread(atomic_write, state_dir / HEALTH_FILE,
                                    json.dumps(doc).encode(), 0o644, fsync=False)
            last, written = (ok, reason), now
        await asyncio.sleep(interval_s)
