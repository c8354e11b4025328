"""How far the fleet's intake has read: a probe that goes round the broker behind the reports.

A deadline judged by the clock alone fails a gateway whose report is waiting, unread, in the
broker's queue or the service's socket while the service was starved of CPU or stopped: the
gateway applied in time, the service was late to read it. So the service publishes a probe
(its send time) to a topic only it subscribes to, without a share group. The broker delivers to
one client in the order it took the messages in, so when the probe is back, every report the
broker took before the probe was sent has been read and recorded. Deadlines are judged at
``judged_ms``: the send time of this instance's latest probe back, and, with a share group
(where each instance reads part of the reports), no later than any other live instance's
(table ``intake_marks``). Until a first probe is back nothing is failed for lateness; if none
comes back at all (a broker refusing the topic), the clock is used after ``NO_PROBE_S``, with a
warning.
"""

from __future__ import annotations

import logging

from edge_agent.fleet.registry import Registry

log = logging.getLogger(__name__)

PROBE_EVERY_S = 0.5  # the judged time trails the clock by about this much, plus the backlog
LOST_S = 10.0        # a probe not back in this long is sent again
NO_PROBE_S = 30.0    # connected this long without a probe back: judge by the clock


class IntakeProbe:
    """One instance's probe: when to send, what came back, the time deadlines are judged at."""

    def __init__(self, registry: Registry, prefix: str, client_id: str, live_ms: int) -> None:
        self.registry = registry
        self.owner = client_id
        self.topic = f"{prefix}/_fleet/{client_id}/probe"  # "_fleet" is no gateway id
        self.live_ms = live_ms
        self.sent_ms: int | None = None
        self.back_ms: int | None = None      # when the latest probe came back
        self.caught_up_ms: int | None = None  # the send time of the latest probe back
        self.since_ms: int | None = None      # first asked, for the no-probe fallback
        self.warned = False

    def due(self, now_ms: int) -> bool:
        """True if a probe should be sent now."""
        if self.sent_ms is not None:
            return now_ms - self.sent_ms > LOST_S * 1000
        return self.back_ms is None or now_ms - self.back_ms >= PROBE_EVERY_S * 1000

    def payload(self, now_ms: int) -> bytes:
        """The probe to publish now."""
        self.sent_ms = now_ms
        return str(now_ms).encode()

    def received(self, payload: object, now_ms: int) -> None:
        """A probe came back: everything the broker took before it was sent has been read."""
        if not isinstance(payload, bytes | bytearray) or not payload.isdigit() \
                or len(payload) > 20 or int(payload) != self.sent_ms:
            return  # an older probe (sent again since) or not ours
        self.caught_up_ms, self.sent_ms, self.back_ms = int(payload), None, now_ms
        with self.registry.transaction():
            self.registry.execute("DELETE FROM intake_marks WHERE owner = ?", (self.owner,))
            self.registry.execute("INSERT INTO intake_marks (owner, caught_up_ms, seen_ms) "
                                  "VALUES (?, ?, ?)", (self.owner, self.caught_up_ms, now_ms))

    def judged_ms(self, now_ms: int) -> int:
        """The time deadlines may be judged at now (0, the epoch, judges none late yet)."""
        if self.since_ms is None:
            self.since_ms = now_ms
        mine = self.caught_up_ms
        if mine is None:
            if now_ms - self.since_ms < NO_PROBE_S * 1000:
                return 0
            if not self.warned:
                self.warned = True
                log.warning("no intake probe came back on %s in %.0f s (does the broker let "
                            "the fleet publish and subscribe there?): rollout deadlines are "
                            "judged by the clock", self.topic, NO_PROBE_S)
            return now_ms
        row = self.registry.fetchone(
            "SELECT MIN(caught_up_ms) FROM intake_marks WHERE owner <> ? AND seen_ms >= ?",
            (self.owner, now_ms - self.live_ms))
        others = None if row is None or row[0] is None else int(row[0])
        return mine if others is None else min(mine, others)
