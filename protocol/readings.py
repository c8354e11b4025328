"""A reading: one point's value at a moment with its quality, as both sides of the wire see it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# Point names and units travel in data batches and schema messages (codecs/FORMAT.md 7, 9):
# text of bounded length without control characters (they would let a name rewrite a log
# line or a terminal) or lone surrogates (no UTF-8 encoder can write them).
MAX_POINT_NAME = 64
MAX_UNIT = 32
NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def point_text_problem(point: str, unit: str = "") -> str | None:
    """Why a point of this name and unit cannot travel in a batch or a schema, or None."""
    if not 1 <= len(point) <= MAX_POINT_NAME or NOT_TEXT.search(point):
        return f"a point name of 1-{MAX_POINT_NAME} characters, none a control character"
    if len(unit) > MAX_UNIT or NOT_TEXT.search(unit):
        return f"a unit of at most {MAX_UNIT} characters, none a control character"
    return None


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
