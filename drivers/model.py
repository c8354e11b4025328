"""The value types shared by profiles, planner, decoder and scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Poll intervals, of a device or a point: above 50 ms (a Modbus exchange takes longer) and at
# most a week (slow points such as a firmware version); outside, the grid arithmetic breaks.
MIN_POLL_S = 0.05
MAX_POLL_S = 7 * 86_400.0
POLL_TEXT = f"a number of seconds from {MIN_POLL_S} to {MAX_POLL_S:.0f}"


def poll_interval_ok(seconds: float) -> bool:
    """True for a poll interval the scheduler can keep."""
    return MIN_POLL_S <= seconds <= MAX_POLL_S


class Table(StrEnum):
    """The four Modbus data tables (Modbus application protocol V1.1b3, 4.3)."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"

    @property
    def is_bit(self) -> bool:
        """True for the single-bit tables (coils, discrete inputs)."""
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def max_read(self) -> int:
        """Most items one read may ask for (spec 6.1-6.4: 2000 bits or 125 registers)."""
        return 2000 if self.is_bit else 125

    @property
    def writable(self) -> bool:
        """Coils and holding registers can be written."""
        return self in (Table.COIL, Table.HOLDING_REGISTER)


class DataType(StrEnum):
    """How a point's registers are interpreted."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


# data type -> (registers it occupies, struct format of its big-endian bytes).
# STRING has no fixed size: its register count comes from the point's `length`.
TYPE_LAYOUT: dict[DataType, tuple[int, str]] = {
    DataType.BOOL: (1, ">H"),
    DataType.INT16: (1, ">h"),
    DataType.UINT16: (1, ">H"),
    DataType.INT32: (2, ">i"),
    DataType.UINT32: (2, ">I"),
    DataType.INT64: (4, ">q"),
    DataType.UINT64: (4, ">Q"),
    DataType.FLOAT32: (2, ">f"),
    DataType.FLOAT64: (4, ">d"),
    DataType.STRING: (0, ""),
}


class WordOrder(StrEnum):
    """Byte and word order of a multi-register value; A is the most significant byte.

    ABCD is big-endian (the Modbus default), DCBA little-endian, BADC swaps the bytes in
    each word, CDAB swaps the words ("word-swapped", common on meters).
    """

    ABCD = "ABCD"
    BADC = "BADC"
    CDAB = "CDAB"
    DCBA = "DCBA"


class Access(StrEnum):
    """Whether the gateway may write a point."""

    READ = "read"
    READ_WRITE = "read-write"


@dataclass(frozen=True, slots=True)
class Point:
    """One named value of a device: where it lives and how to decode it.

    ``count`` is the number of registers (or bits, for coils and discrete inputs) it
    occupies. ``bit`` and ``bits`` select a bit field inside a 16-bit register
    (offset from the least significant bit, width); a one-bit field of type bool
    decodes to a bool, a wider one to an unsigned int.
    """

    name: str
    table: Table
    address: int
    type: DataType
    count: int
    order: WordOrder = WordOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    access: Access = Access.READ
    interval_s: float | None = None
    deadband: float | None = None
    bit: int | None = None
    bits: int = 1
    description: str = ""
    min_value: float | None = None  # limits a write must respect, in engineering units
    max_value: float | None = None

    @property
    def end(self) -> int:
        """First address after this point."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: a contiguous span of one table that covers some points."""

    table: Table
    address: int
    count: int
    points: tuple[Point, ...]

    @property
    def end(self) -> int:
        """First address after the span."""
        return self.address + self.count
