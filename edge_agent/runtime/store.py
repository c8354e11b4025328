"""Where encoded batches wait between the agent and the uplink: the store contract and its item.

The agent appends to a store and the uplink takes from it; neither hands a batch to the other.
The gateway's store is the durable spool (``edge_agent.runtime.spool``); ``MemoryStore`` here is
the bounded fallback of a gateway whose spool cannot be opened, and the store of a bare Uplink.
A store wakes its reader through its ``Readiness``, so the uplink needs no call from the agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

MEMORY_BATCHES = 1000   # batches a memory store holds before it drops the oldest


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """An encoded batch in a store, on its way to the broker."""

    id: int          # the store's own order (the spool's row id)
    epoch: int
    seq: int
    readings: int
    payload: bytes
    backlog: bool = False  # stored before this connection: published as a paced replay


class Readiness:
    """How a store wakes its reader: ``waiting`` once a batch is stored, ``empty`` when none is."""

    def __init__(self, pending: int = 0) -> None:
        self.waiting = asyncio.Event()
        self.empty = asyncio.Event()
        if pending:
            self.waiting.set()
        else:
            self.empty.set()

    def stored(self) -> None:
        """A batch was stored: the reader has work, and the store is not empty."""
        self.empty.clear()
        self.waiting.set()

    def idle(self, pending: int) -> None:
        """``take`` found nothing to hand out: the reader waits for the next store."""
        self.waiting.clear()
        if not pending:
            self.empty.set()

    def removed(self, pending: int) -> None:
        """A batch was acknowledged and removed: empty if it was the last one."""
        if not pending:
            self.empty.set()


class BatchStore(Protocol):
    """Where encoded batches wait for the broker: the durable Spool, or the MemoryStore."""

    @property
    def readiness(self) -> Readiness:
        """The events the reader waits on."""

    @property
    def durable(self) -> bool:
        """True when a stored batch survives a restart."""

    @property
    def pending(self) -> int:
        """Batches waiting, the one in flight included."""

    @property
    def in_flight(self) -> bool:
        """True while a batch is being published."""

    @property
    def dropped_in_memory(self) -> int:
        """Batches dropped for want of room in memory (the uplink reports them)."""

    async def put(self, payload: bytes, *, epoch: int = 0, seq: int = 0,
                  readings: int = 0) -> bool:
        """Store a batch; False when the store's policy did not keep it."""

    async def take(self) -> StoredBatch | None:
        """The oldest waiting batch, now in flight; None when nothing waits."""

    async def ack(self, item: StoredBatch) -> None:
        """The in-flight batch was acknowledged: remove it."""

    def release(self, item: StoredBatch) -> None:
        """The in-flight batch was not acknowledged: it stays first."""

    def mark_backlog(self) -> None:
        """A connection starts: what waits now is its backlog, and the reader looks again."""

    def stats_dict(self) -> dict[str, object]:
        """The store's part of the health document."""

    async def close(self) -> None:
        """Write out what is queued and let go of the store's resources."""


class MemoryStore:
    """A bounded FIFO of batches in memory; the first may be in flight.

    When full, ``put`` drops the oldest batch that is not in flight (counted and logged).
    """

    def __init__(self, max_batches: int = MEMORY_BATCHES, *, error: str | None = None) -> None:
        if max_batches < 2:
            raise ValueError(f"memory store needs room for at least 2 batches, got {max_batches}")
        self.max_batches = max_batches
        self.error = error   # why the durable spool is not used, for health
        self._readiness = Readiness()
        self._items: deque[StoredBatch] = deque()
        self._in_flight = False
        self._dropped = 0
        self._next_id = 1

    @property
    def readiness(self) -> Readiness:
        """The events the uplink waits on."""
        return self._readiness

    @property
    def durable(self) -> bool:
        """False: the batches are lost with the process."""
        return False

    @property
    def pending(self) -> int:
        """Batches held, the one in flight included."""
        return len(self._items)

    @property
    def in_flight(self) -> bool:
        """True while the first batch is being published."""
        return self._in_flight

    @property
    def dropped_in_memory(self) -> int:
        """Batches dropped because the store was full."""
        return self._dropped

    async def put(self, payload: bytes, *, epoch: int = 0, seq: int = 0,
                  readings: int = 0) -> bool:
        """Append; when full the oldest waiting batch is dropped, so the new one is always kept."""
        if len(self._items) >= self.max_batches:
            del self._items[1 if self._in_flight else 0]
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("uplink outbox full (%d batches): dropped the oldest, %d dropped "
                            "so far", self.max_batches, self._dropped)
        self._items.append(StoredBatch(self._next_id, epoch, seq, readings, payload))
        self._next_id += 1
        self._readiness.stored()
        return True

    async def take(self) -> StoredBatch | None:
        """The oldest batch, now in flight; None when empty."""
        if not self._items:
            self._readiness.idle(0)
            return None
        self._in_flight = True
        return self._items[0]

    async def ack(self, item: StoredBatch) -> None:
        """The in-flight batch was acknowledged: remove it."""
        if not self._in_flight or self._items[0].id != item.id:
            raise RuntimeError(f"memory store: ack of batch {item.id}, which is not in flight")
        self._items.popleft()
        self._in_flight = False
        self._readiness.removed(len(self._items))

    def release(self, item: StoredBatch) -> None:
        """The in-flight batch was not acknowledged: it stays first, to be sent again."""
        self._in_flight = False

    def mark_backlog(self) -> None:
        """Nothing is paced from memory: only wake the reader."""
        self._readiness.waiting.set()

    def stats_dict(self) -> dict[str, object]:
        """Why there is no spool, for the health document's ``spool`` section."""
        return {"error": self.error, "memory_only": True}

    async def close(self) -> None:
        """Nothing to write out: memory goes with the process."""
