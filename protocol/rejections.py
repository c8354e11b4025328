"""Counted, rate-limited rejections: the one log limiter of every intake, on both sides.

A consumer of outside input (the fleet's MQTT intake, the ingest, the enrolment endpoint, the
gateway's control plane) refuses what it cannot take and goes on; a hostile sender can then
make it refuse thousands of messages a second. Each refusal must be counted (health shows the
counts) but must not each cost a log line, or one sender floods the journal and hides
everything else. So the first refusal of each reason is logged in full, later ones are counted
and summarised per reason every ``summary_s``.
"""

from __future__ import annotations

import logging

from edge_agent.protocol.clock import Clock, SystemClock

__all__ = ["Rejections"]


class Rejections:
    """Counts refused messages per reason and logs them without flooding the log.

    The first refusal of each reason is logged in full; later ones are counted and logged as
    one summary line per reason every ``summary_s`` (``maybe_summarise``, called on every
    refusal and from a periodic task so a count is never left unreported for long).
    """

    def __init__(self, what: str, logger: logging.Logger, *, summary_s: float = 60.0,
                 clock: Clock | None = None) -> None:
        self.what = what
        self.log = logger
        self.summary_s = summary_s
        self.clock = clock or SystemClock()
        self.counts: dict[str, int] = {}
        self._pending: dict[str, tuple[int, str]] = {}
        self._last_summary = self.clock.monotonic()

    @property
    def total(self) -> int:
        """Every refusal so far."""
        return sum(self.counts.values())

    def reject(self, reason: str, detail: str) -> None:
        """Count one refusal for ``reason``; ``detail`` names the topic, field and value."""
        n = self.counts.get(reason, 0) + 1
        self.counts[reason] = n
        if n == 1:
            self.log.warning("%s: rejected (%s): %s; further '%s' rejections are counted and "
                             "summarised every %.0f s", self.what, reason, detail, reason,
                             self.summary_s)
        else:
            count, _ = self._pending.get(reason, (0, ""))
            self._pending[reason] = (count + 1, detail)
        self.maybe_summarise()

    def maybe_summarise(self, *, force: bool = False) -> None:
        """Log the counts gathered since the last summary if ``summary_s`` has passed."""
        now = self.clock.monotonic()
        if not self._pending or (not force and now - self._last_summary < self.summary_s):
            return
        for reason, (count, detail) in sorted(self._pending.items()):
            self.log.warning("%s: %d more '%s' rejections in the last %.0f s (%d in all), the "
                             "latest: %s", self.what, count, reason, now - self._last_summary,
                             self.counts[reason], detail)
        self._pending.clear()
        self._last_summary = now
