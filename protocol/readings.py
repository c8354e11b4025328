"""A reading: one point's value at a moment with its quality, as both sides of the wire see it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Quality(StrEnum):
    """How much a reading can be trusted."""

    GOOD = "good"
    COMM_ERROR = "comm_error"
    DEVICE_EXCEPTION = "device_exception"
    DECODE_ERROR = "decode_error"


Value = bool | int | float | str



@dataclass(frozen=True, slots=True)
class Reading:
    """A point's value at a moment, with its quality.

    ``value`` is None unless quality is GOOD; ``exception_code`` is set for
    DEVICE_EXCEPTION (the Modbus exception code, spec 7).
    """

    device: str
    point: str
    ts_ms: int
    value: Value | None
    quality: Quality = Quality.GOOD
    exception_code: int | None = None
