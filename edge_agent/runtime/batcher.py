"""Report-by-exception and batching of readings (pure: values in, values out).

A reading is sent when its value moved by more than the point's deadband since the last
value sent (any change when the point has no deadband), when its quality changed, or
when ``max_silence_s`` passed since the point was last sent, so a consumer can tell a
steady value from a dead gateway.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.config.model import BatchConfig
from edge_agent.drivers.bus import DeviceConfig
from edge_agent.protocol.readings import Quality, Reading


@dataclass(slots=True)
class _Last:
    value: object
    quality: Quality
    ts_ms: int


@dataclass(slots=True)
class FilterStats:
    """Counters of the report-by-exception filter."""

    seen: int = 0
    sent: int = 0
    suppressed: int = 0


def _moved(old: object, new: object, deadband: float | None) -> bool:
    """True when ``new`` differs from ``old`` by more than the deadband."""
    if isinstance(new, bool) or isinstance(old, bool) or deadband is None:
        return new != old and not (_is_nan(new) and _is_nan(old))
    if isinstance(new, int | float) and isinstance(old, int | float):
        if _is_nan(new) or _is_nan(old):
            return not (_is_nan(new) and _is_nan(old))
        return abs(new - old) > deadband
    return new != old


def _is_nan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


class ReportFilter:
    """Decides which readings are worth sending (report by exception with deadbands)."""

    def __init__(self, devices: Iterable[DeviceConfig], max_silence_s: float) -> None:
        self._deadband: dict[tuple[str, str], float | None] = {}
        for d in devices:
            self._deadband.update({(d.name, p.name): p.deadband for p in d.points})
            self._deadband.update({(d.name, m.name): m.deadband for m in d.meter_points})
        self._max_silence_ms = int(max_silence_s * 1000)
        self._last: dict[tuple[str, str], _Last] = {}
        self.stats = FilterStats()

    def accept(self, r: Reading) -> bool:
        """True if ``r`` must be sent; remembers it when it is."""
        self.stats.seen += 1
        key = (r.device, r.point)
        last = self._last.get(key)
        send = (
            last is None
            or r.quality is not last.quality
            or r.ts_ms - last.ts_ms >= self._max_silence_ms
            or (r.quality is Quality.GOOD
                and _moved(last.value, r.value, self._deadband.get(key)))
        )
        if send:
            self._last[key] = _Last(r.value, r.quality, r.ts_ms)
            self.stats.sent += 1
        else:
            self.stats.suppressed += 1
        return send


class Batcher:
    """Collects accepted readings until the window closes or the batch is full."""

    def __init__(self, cfg: BatchConfig, report_filter: ReportFilter) -> None:
        self.cfg = cfg
        self.filter = report_filter
        self._pending: list[Reading] = []

    def add(self, readings: Iterable[Reading]) -> bool:
        """Filter and queue readings; True when the batch is full and should go now."""
        accept = self.filter.accept
        self._pending.extend(r for r in readings if accept(r))
        return len(self._pending) >= self.cfg.max_readings

    def take(self) -> list[Reading]:
        """Remove and return everything pending."""
        out, self._pending = self._pending, []
        return out

    def __len__(self) -> int:
        return len(self._pending)
