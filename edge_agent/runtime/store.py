"""Where data batches wait for the uplink: the store protocol and the in-memory store.

The agent's store is the durable spool (``edge_agent.runtime.spool``); ``MemoryStore`` serves a bare
Uplink and a gateway whose spool cannot be opened.
"""

from __future__ import annotations

import collections
import logging
from typing import Protocol

from edge_agent.runtime.spool_core import SpooledBatch

log = logging.getLogger("edge_agent.runtime.uplink")


class DropCounter(Protocol):
    """Where a store counts the batches it had to drop (the uplink's counters)."""

    dropped_batches: int


class Outbox:
    """A bounded FIFO of data batches; the first one may be in flight (pure, no I/O).

    When full, ``put`` drops the oldest batch that is not in flight and says so.
    """

    def __init__(self, max_batches: int) -> None:
        if max_batches < 2:
            raise ValueError(f"outbox needs room for at least 2 batches, got {max_batches}")
        self.max_batches = max_batches
        self._items: collections.deque[bytes] = collections.deque()
        self._in_flight = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def in_flight(self) -> bool:
        """True while the first batch is being published."""
        return self._in_flight

    def put(self, payload: bytes) -> bool:
        """Append a batch; True if an older one had to be dropped to make room."""
        dropped = False
        if len(self._items) >= self.max_batches:
            del self._items[1 if self._in_flight else 0]
            dropped = True
        self._items.append(payload)
        return dropped

    def take(self) -> bytes | None:
        """The oldest batch, now marked in flight; None if empty."""
        if not self._items:
            return None
        self._in_flight = True
        return self._items[0]

    def ack(self) -> None:
        """The in-flight batch was acknowledged: remove it."""
        if not self._in_flight:
            raise RuntimeError("outbox ack without a batch in flight")
        self._items.popleft()
        self._in_flight = False

    def release(self) -> None:
        """The in-flight batch was not acknowledged: it stays first, to be sent again."""
        self._in_flight = False


class BatchStore(Protocol):
    """Where data batches wait for the broker: the durable Spool, or the in-memory Outbox."""

    @property
    def pending(self) -> int:
        """Batches waiting, the one in flight included."""

    @property
    def in_flight(self) -> bool:
        """True while a batch is being published."""

    async def put(self, payload: bytes, *, epoch: int = 0, seq: int = 0,
                  readings: int = 0) -> bool:
        """Store a batch; False when the store's policy did not keep it."""

    async def take(self) -> SpooledBatch | None:
        """The oldest waiting batch, now in flight; None when empty."""

    async def ack(self, item: SpooledBatch) -> None:
        """The in-flight batch was acknowledged: remove it."""

    def release(self, item: SpooledBatch) -> None:
        """The in-flight batch was not acknowledged: it stays first."""

    def mark_backlog(self) -> None:
        """A connection starts: what waits now is its backlog."""


class MemoryStore:
    """The Outbox behind the BatchStore contract: for an Uplink without a state directory."""

    def __init__(self, max_batches: int, counters: DropCounter) -> None:
        self._box = Outbox(max_batches)
        self._counters = counters

    @property
    def pending(self) -> int:
        """Batches in the outbox."""
        return len(self._box)

    @property
    def in_flight(self) -> bool:
        """True while the first batch is being published."""
        return self._box.in_flight

    async def put(self, payload: bytes, *, epoch: int = 0, seq: int = 0,
                  readings: int = 0) -> bool:
        """Append; when full the oldest waiting batch is dropped (counted)."""
        if self._box.put(payload):
            self._counters.dropped_batches += 1
            if self._counters.dropped_batches == 1 or self._counters.dropped_batches % 1000 == 0:
                log.warning("uplink outbox full (%d batches): dropped the oldest, %d dropped "
                            "so far", self._box.max_batches, self._counters.dropped_batches)
        return True

    async def take(self) -> SpooledBatch | None:
        """The oldest batch, in flight."""
        payload = self._box.take()
        return None if payload is None else SpooledBatch(0, 0, 0, 0, payload)

    async def ack(self, item: SpooledBatch) -> None:
        """Remove the in-flight batch."""
        self._box.ack()

    def release(self, item: SpooledBatch) -> None:
        """Keep the in-flight batch first."""
        self._box.release()

    def mark_backlog(self) -> None:
        """Nothing to mark: the memory outbox is not paced."""
