"""A decoded data batch, the wire codes every batch version shares, and the decoders' limits
and name rules (pure, no I/O; codecs/FORMAT.md, "Limits")."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import NOT_TEXT, Quality, Reading

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

# Names (codecs/FORMAT.md, "Limits"). Gateway and device names follow the site config's rule
# (edge_agent.config.model.SAFE_ID: gateway.id and [devices.NAME]), so every batch a valid
# config produces passes. Point names are profile keys, which the config does not restrict:
# any Unicode text of 1..64 characters without control characters (they would let a name
# rewrite a log line or a terminal), which every shipped profile meets.
MAX_NAME = 64
ID_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ID_RULE = "1-64 letters, digits, '-' or '_'"
POINT_RULE = "1-64 characters, none a control character"
# The longest series name, "device/point", in UTF-8 bytes (4 per character at most).
MAX_SERIES_NAME_BYTES = 4 * (2 * MAX_NAME + 1)


def name_problem(name: object, *, point: bool) -> str | None:
    """Why ``name`` is not a valid device (or gateway) or point name, or None if it is."""
    if not isinstance(name, str):
        return f"{type(name).__name__} is not a name"
    if point:
        if not 1 <= len(name) <= MAX_NAME or NOT_TEXT.search(name):
            return f"expected {POINT_RULE}"
    elif not ID_NAME.fullmatch(name):
        return f"expected {ID_RULE}"
    return None


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What a batch decoder accepts at most; each is checked before the work it bounds.

    The defaults (codecs/FORMAT.md, "Limits") are far above what the agent sends with its
    default config (batches of at most ``max_readings = 5000``): an ingest expecting bigger
    batches passes its own.
    """

    max_bytes: int = 16 * 1024 * 1024      # the whole batch
    max_readings: int = 100_000            # readings in one batch (codec series + extras)
    max_readings_per_byte: int = 32        # readings per byte of the whole batch
    max_series: int = 10_000               # codec series (v2) or device/point series (v1)
    max_header_bytes: int = 8 * 1024 * 1024  # the v2 JSON header
    max_text: int = 256                    # characters of a string value (Modbus: <= 250)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"BatchLimits.{f.name} = {value!r}: expected an integer >= 1")

    def readings_problem(self, count: int, nbytes: int) -> str | None:
        """Why ``count`` readings in a batch of ``nbytes`` bytes are too many, or None."""
        if count > self.max_readings:
            return f"{count} or more readings exceed the limit of {self.max_readings}"
        if count > self.max_readings_per_byte * nbytes:
            return (f"{count} or more readings in {nbytes} bytes exceed the limit of "
                    f"{self.max_readings_per_byte} per byte")
        return None

    def budget(self, nbytes: int) -> int:
        """The most readings a batch of ``nbytes`` bytes may hold."""
        return min(self.max_readings, self.max_readings_per_byte * nbytes)


DEFAULT_LIMITS = BatchLimits()


def check_readings(count: int, nbytes: int, limits: BatchLimits, where: str) -> None:
    """CodecError if ``count`` readings are too many for a batch of ``nbytes`` bytes."""
    problem = limits.readings_problem(count, nbytes)
    if problem is not None:
        raise CodecError(f"{where}: {problem}")


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
