"""What a bus poller knows about one device: its back-off, what its planner learned, and
its health counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.modbus.planner import BadRanges
from edge_agent.protocol.backoff import BackoffPolicy

# A dead device is retried after 2, 4, 8 ... s (each drawn in [delay/2, delay]), capped per
# device at two of its poll intervals so a replugged device is back within two cycles.
DEVICE_BACKOFF = BackoffPolicy(base_s=2.0, cap_s=60.0, jitter=0.5)

@dataclass(slots=True)
class DeviceState:
    """What the scheduler knows about one device, and its health counters.

    ``bad`` holds the Modbus address ranges a device refused; ``no_block`` the DL/T 645
    block identifiers a meter refused: what each protocol's planner learned.
    """

    cfg: DeviceConfig
    backoff: BackoffPolicy = DEVICE_BACKOFF
    bad: BadRanges = field(default_factory=BadRanges)
    no_block: set[int] = field(default_factory=set)
    status: str = "unknown"          # unknown | online | offline
    consecutive_failures: int = 0
    retry_at_monotonic: float = 0.0
    polls: int = 0
    good_polls: int = 0
    failed_polls: int = 0
    skipped_slots: int = 0           # slots not polled because the device was backed off
    missed_slots: int = 0            # slots dropped because the bus was a whole interval late
    probes: int = 0
    last_good_ms: int | None = None
    last_error: str = ""
    latency_ms_last: float = 0.0
    latency_ms_max: float = 0.0
    latency_ms_sum: float = 0.0
    # Refusals (Modbus exception 2) are re-checked: what was learned is forgotten at
    # ``recheck_at_monotonic`` and learned again by the next polls (scheduler.py).
    refused: frozenset[tuple[str, int, int]] = frozenset()  # (table, start, end) as logged
    recheck_at_monotonic: float = 0.0
    recheck_delay_s: float = 0.0
    rechecks: int = 0
    all_refused: bool = False

    def health(self) -> dict[str, object]:
        """The device's part of the health document."""
        doc: dict[str, object] = {
            "status": self.status, "unit_id": self.cfg.unit_id, "bus": self.cfg.bus,
            "polls": self.polls, "good_polls": self.good_polls,
            "failed_polls": self.failed_polls, "skipped_slots": self.skipped_slots,
            "missed_slots": self.missed_slots, "probes": self.probes,
            "consecutive_failures": self.consecutive_failures,
            "last_good_ms": self.last_good_ms, "last_error": self.last_error,
            "latency_ms": {
                "last": round(self.latency_ms_last, 1), "max": round(self.latency_ms_max, 1),
                "mean": (round(self.latency_ms_sum / self.good_polls, 1)
                         if self.good_polls else None),
            },
        }
        if self.cfg.address:
            doc["address"] = self.cfg.address
        if self.refused:
            doc["refused"] = [list(r) for r in sorted(self.refused)]
            doc["refusal_rechecks"] = self.rechecks
        if self.all_refused and self.status == "online":
            doc["status"] = "refusing"  # it answers, but refuses every point: not healthy
        return doc
