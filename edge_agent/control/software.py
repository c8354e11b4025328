"""Software bundles from the fleet: ``desired/software`` -> stage -> ``reported``.

Active when the agent runs under ``edge-agent supervise`` with a release URL: the supervisor
hands its child ``EDGE_UPDATE_ROOT``, ``EDGE_RELEASE_URL`` and optionally ``EDGE_RELEASE_CA``
(and ``EDGE_RELEASE_RATE_BPS`` to pace downloads). A retained software bundle is staged in a
thread (``edge_agent.update.stage``: verify, download, check, unpack, install, switch); the
supervisor then stops this agent and tries the new release. The outcome of a trial
(committed, rolled back with the reason and the failed release's last log lines, a staging
given up) is read from the update journal and reported by whichever agent runs next.

Reports go to ``reported`` (retained) with ``"kind": "software"``. Only final outcomes carry
``version`` (the release number, the bundle's version), so a fleet rollout counts exactly
those; progress reports (downloading, switched) name the release in ``release`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edge_agent.control.truststore import load_trust
from edge_agent.protocol.errors import EdgeError
from edge_agent.update.journal import UpdateJournal, load_journal
from edge_agent.update.releases import current_version

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], Awaitable[None]]
JOURNAL_POLL_S = 2.0


def outcome(j: UpdateJournal) -> dict[str, Any] | None:
    """The report of the journal's settled outcome (None while nothing is settled)."""
    if j.step == "commit" and j.committed and j.previous:  # a trial, not the bootstrap
        return {"kind": "software", "result": "applied", "step": "commit",
                "version": j.committed_number, "release": j.committed}
    if j.step in ("rolled_back", "refused") and j.target:
        return {"kind": "software", "result": j.step, "version": j.target_number,
                "release": j.target, "reason": j.reason[:2000],
                "log_tail": j.log_tail[-20:]}
    return None


class SoftwareChannel:
    """Takes software bundles for one gateway and reports what became of them."""

    def __init__(self, state_dir: Path, root: Path, url: str, cafile: str | None,
                 rate_bps: float | None) -> None:
        self.state_dir, self.root, self.url = state_dir, root, url
        self.context = ssl.create_default_context(cafile=cafile) if cafile else None
        self.rate_bps = rate_bps
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        self.reported: tuple[str, str] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    @classmethod
    def from_env(cls, state_dir: Path) -> SoftwareChannel | None:
        """The channel if the supervisor gave this agent an update root and a release URL."""
        root, url = os.environ.get("EDGE_UPDATE_ROOT"), os.environ.get("EDGE_RELEASE_URL")
        if not root or not url:
            return None
        rate = os.environ.get("EDGE_RELEASE_RATE_BPS")
        return cls(state_dir, Path(root), url, os.environ.get("EDGE_RELEASE_CA") or None,
                   float(rate) if rate else None)

    async def on_desired(self, message: Any) -> None:
        """The uplink's handler for ``desired/software``: queue the bundle (never blocks)."""
        payload = message.payload
        if isinstance(payload, bytes | bytearray) and payload:
            with contextlib.suppress(asyncio.QueueFull):  # the retained one comes back
                self.queue.put_nowait(bytes(payload))

    def status(self) -> dict[str, Any]:
        """What the health document shows of software."""
        j = load_journal(self.root)
        return {"current": current_version(self.root), "committed": j.committed,
                "step": j.step, "target": j.target, "reason": j.reason[:300]}

    def _spawn(self, report: Awaitable[None]) -> None:
        task = asyncio.ensure_future(report)
        self._tasks.add(task)  # kept until done: a task nobody references may be collected
        task.add_done_callback(self._tasks.discard)

    async def _report_journal(self, publish: Publish) -> None:
        doc = outcome(load_journal(self.root))
        key = (doc["result"], doc["release"]) if doc else None
        if doc is not None and key != self.reported:
            self.reported = key
            await publish(doc)

    async def _stage(self, blob: bytes, publish: Publish) -> None:
        from edge_agent.update.stage import stage_release  # the verifier: only when needed

        trust = load_trust(self.state_dir)
        loop = asyncio.get_running_loop()
        steps: set[int] = set()

        def progress(release: str, got: int, total: int) -> None:
            # from the staging thread: one report per quarter of the download
            quarter = got * 4 // max(total, 1)
            if quarter not in steps:
                steps.add(quarter)
                doc = {"kind": "software", "result": "downloading", "release": release,
                       "bytes": got, "total": total}
                loop.call_soon_threadsafe(self._spawn, publish(doc))

        report = await asyncio.to_thread(stage_release, blob, trust, self.root, self.url,
                                         time.time(), context=self.context,
                                         rate_bps=self.rate_bps, progress=progress)
        if report["result"] == "current":
            report["version"] = load_journal(self.root).committed_number
        elif report["result"] in ("switched", "failed"):
            # progress, or a staging to retry: no "version", so a rollout waits for the end
            report["release"] = report.pop("version", None)
        log.info("software bundle: %s", report)
        await publish(report)

    async def run(self, publish: Publish) -> None:
        """Stage what arrives; report settled outcomes from the journal as they happen."""
        while True:
            with contextlib.suppress(Exception):
                await self._report_journal(publish)
            try:
                blob = await asyncio.wait_for(self.queue.get(), JOURNAL_POLL_S)
            except TimeoutError:
                continue
            try:
                await self._stage(blob, publish)
            except (EdgeError, OSError) as exc:
                log.error("software bundle could not be staged: %s", exc)
                await publish({"kind": "software", "result": "failed", "reason": str(exc)})
