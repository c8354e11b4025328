"""What a poller needs of a field bus, whatever protocol runs on it.

A field bus is a half-duplex line with one master: one request is on it at a time, and
every request ends in one of three ways, each returned as a value rather than raised,
because all three are ordinary events on a field bus:

* the device answered with data (registers, bits, or a protocol's data bytes);
* the device answered that it will not do it (a Modbus exception reply, a DL/T 645
  abnormal reply with its error byte): ``Reply.exception_code``;
* nothing usable came back (timeout, bad checksum, port gone): ``Reply.error``.

``FieldTransport`` is generic in the request vocabulary, because that is where field
protocols differ: Modbus reads a span of one of four tables, DL/T 645 reads a data
identifier of one meter. Addressing a device, the outcomes, the counters and the
one-at-a-time discipline are the same for both. No I/O here: types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeVar

ReadT_contra = TypeVar("ReadT_contra", contravariant=True)
WriteT_contra = TypeVar("WriteT_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class Reply:
    """Outcome of one request: data, the device's refusal code, or a communication error."""

    data: list[int] | list[bool] | None = None
    exception_code: int | None = None
    error: str | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the device answered with data."""
        return self.data is not None


@dataclass(slots=True)
class BusStats:
    """Counters for one bus, reported in health.

    ``requests`` counts frames sent (every attempt), ``replies`` frames answered (data or
    refusal), ``exceptions`` the refusals among them by code in ``exception_codes``.
    """

    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    exceptions: int = 0
    retries: int = 0
    reconnects: int = 0
    busy_s: float = 0.0
    guard_waits: int = 0     # requests held back by the no-reply guard (Modbus serial lines)
    last_error: str = ""
    exception_codes: dict[int, int] = field(default_factory=dict)


class FieldTransport(Protocol[ReadT_contra, WriteT_contra]):
    """One field bus, strictly one request at a time, every outcome a ``Reply``.

    ``unit_id`` is the device's address on the bus: a Modbus unit id, or a DL/T 645 meter
    address as the number its twelve BCD digits spell. Implementations serialise callers
    themselves, so a command-line probe may share a transport with a running poller.
    """

    @property
    def stats(self) -> BusStats:
        """The bus's counters (live: the transport updates them in place)."""
        ...

    @property
    def connected(self) -> bool:
        """True while the underlying connection is open."""
        ...

    def describe(self) -> str:
        """Where the bus is, for messages."""
        ...

    async def read_request(self, unit_id: int, request: ReadT_contra, *,
                           attempts: int | None = None) -> Reply:
        """Send one planned read; ``attempts`` None means the bus's configured retries."""
        ...

    async def write_request(self, unit_id: int, request: WriteT_contra) -> Reply:
        """Send one write, once: a write is never repeated behind the caller's back."""
        ...

    async def close(self) -> None:
        """Close the connection (safe to call twice)."""
        ...
