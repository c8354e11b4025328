"""A decoded data batch and the wire codes every batch version shares (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.protocol.readings import Quality, Reading

# Wire codes of the qualities: fixed by the format, never by the enum's order.
QUALITY_CODE: dict[Quality, int] = {
    Quality.GOOD: 0,
    Quality.COMM_ERROR: 1,
    Quality.DEVICE_EXCEPTION: 2,
    Quality.DECODE_ERROR: 3,
}
CODE_QUALITY: dict[int, Quality] = {code: q for q, code in QUALITY_CODE.items()}

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class DataBatch:
    """A decoded data batch: who sent it, its (epoch, seq) identity, and its readings."""

    gateway: str
    epoch: int
    seq: int
    readings: list[Reading]
    version: int


def grouped(readings: Sequence[Reading]) -> list[Reading]:
    """The readings in the order a v1 batch returns them: by device, then point, first seen."""
    series: dict[str, dict[str, list[Reading]]] = {}
    for r in readings:
        series.setdefault(r.device, {}).setdefault(r.point, []).append(r)
    return [r for points in series.values() for rs in points.values() for r in rs]
