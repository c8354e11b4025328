"""The spool's decisions without I/O: file layout from the cap, admission under the cap, pacing.

Everything here takes values and returns values, so the cap policy and the replay pacing are
tested without SQLite, a disk or an event loop. ``runtime.spool_db`` (the SQLite file) and
``runtime.spool`` (its asyncio face) act on these decisions.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from edge_agent.config.model import SpoolPolicy

# Bytes a stored batch costs beyond its payload: the b-tree cell (header, rowid, the integer
# columns), its cell pointer and the slack of a not-quite-full page (48, measured by
# bench/spool_bench.py, "disk bytes per reading"), plus its row and two index entries in
# ``sent`` while it waits for a receipt (about 80 with slack; spool_sent.py). The page-count
# limit is the hard backstop.
ROW_OVERHEAD = 128
PAGE_SIZE = 4096
# Pages SQLite needs besides the batches' leaves: schema, meta table, the sent table and its
# two indexes, b-tree interior pages.
FIXED_PAGES = 9
MAX_WAL_RESERVE = 4 * 1024 * 1024
SHM_BYTES = 32 * 1024   # the WAL index file (-shm) SQLite keeps beside the database
TXN_SLACK_PAGES = 8     # WAL frames one ordinary commit may add past the checkpoint threshold


def row_cost(payload_bytes: int) -> int:
    """What one stored batch of ``payload_bytes`` counts against the cap."""
    return payload_bytes + ROW_OVERHEAD


def payload_crc(payload: bytes) -> int:
    """The checksum stored beside a payload, so salvage can tell good rows from damaged ones."""
    return zlib.crc32(payload) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Layout:
    """How a byte cap on disk splits between the database file, its WAL and the WAL index."""

    max_bytes: int
    page_size: int
    wal_pages: int        # autocheckpoint threshold and journal_size_limit, in pages
    wal_bytes: int        # the most the WAL holds at rest: threshold plus one transaction
    max_page_count: int   # PRAGMA max_page_count: the database file never grows past this
    data_budget: int      # bytes of row costs admitted (the cap the policy enforces)


def layout(max_bytes: int, page_size: int = PAGE_SIZE) -> Layout:
    """Split ``max_bytes`` into WAL index, WAL, disk-full reserve, page limit and data budget."""
    # The WAL is checkpointed at wal_pages and truncated back to that size (journal_size_limit);
    # a commit adds its frames (page + 24-byte header each) before the checkpoint runs. An
    # eighth of the cap, at most 4 MiB, keeps checkpoints rare at the agent's commit rate.
    wal_pages = max(4, min(MAX_WAL_RESERVE, max_bytes // 8) // page_size)
    wal_bytes = 32 + (wal_pages + TXN_SLACK_PAGES) * (page_size + 24)
    # A reserve file as large as the WAL is freed on a full disk, so the WAL can always be
    # checkpointed into the database file (docs/spool.md, "A full disk").
    max_pages = (max_bytes - SHM_BYTES - 2 * wal_bytes) // page_size
    if max_pages <= 2 * FIXED_PAGES:
        raise ValueError(f"spool cap of {max_bytes} bytes leaves no room for data "
                         f"({max_pages} pages after the WAL and its index)")
    budget = (max_pages - FIXED_PAGES) * page_size
    return Layout(max_bytes, page_size, wal_pages, wal_bytes, max_pages, budget)


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A batch already in the spool, as the cap sees it."""

    id: int
    cost: int
    readings: int


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch asking to be stored."""

    cost: int
    readings: int


@dataclass(slots=True)
class Admission:
    """The cap's verdict on a group of new batches."""

    accepted: list[bool] = field(default_factory=list)   # one per new batch, in order
    evict: list[StoredRow] = field(default_factory=list)  # stored rows to delete, oldest first
    evict_new: list[int] = field(default_factory=list)    # indexes of new batches accepted,
    #                                                       then pushed out by later ones
    stored_after: int = 0                                # row costs held after applying it

    @property
    def dropped_batches(self) -> int:
        """Batches lost by this decision (evicted, rejected, or accepted then evicted)."""
        return len(self.evict) + self.accepted.count(False) + len(self.evict_new)


def admit(new: Sequence[NewBatch], stored: int, budget: int, policy: SpoolPolicy,
          oldest: Iterable[StoredRow]) -> Admission:
    """Decide which new batches are stored and which stored rows make room for them.

    ``oldest`` yields the stored rows that may be evicted (never the one in flight), oldest
    first; it is read lazily, only as far as room is needed. Under drop-oldest a new batch may
    also push out an older new batch of the same group. A batch bigger than the whole budget is
    never stored under either policy.
    """
    result = Admission(stored_after=stored)
    candidates: Iterator[StoredRow] = iter(oldest)
    kept_new: deque[int] = deque()   # indexes of accepted new batches, oldest first
    for i, batch in enumerate(new):
        fits = result.stored_after + batch.cost <= budget
        if batch.cost > budget or (not fits and policy is SpoolPolicy.REJECT_NEW):
            result.accepted.append(False)
            continue
        while result.stored_after + batch.cost > budget:
            row = next(candidates, None)
            if row is not None:
                result.evict.append(row)
                result.stored_after -= row.cost
            elif kept_new:
                j = kept_new.popleft()
                result.evict_new.append(j)
                result.stored_after -= new[j].cost
            else:  # only the batch in flight is left, and it leaves no room
                break
        if result.stored_after + batch.cost > budget:
            result.accepted.append(False)
            continue
        result.accepted.append(True)
        kept_new.append(i)
        result.stored_after += batch.cost
    return result


class RatePacer:
    """Paces replay at ``msgs_per_s`` and ``bytes_per_s`` (0 disables a limit), pure.

    A virtual schedule (GCRA): each send moves the next allowed time on by its cost in seconds;
    up to ``burst_s`` of unused allowance is kept after an idle period.
    """

    def __init__(self, msgs_per_s: float, bytes_per_s: float, burst_s: float = 1.0) -> None:
        if msgs_per_s < 0 or bytes_per_s < 0 or burst_s < 0:
            raise ValueError("pacing rates and burst must be >= 0")
        self.msgs_per_s = msgs_per_s
        self.bytes_per_s = bytes_per_s
        self.burst_s = burst_s
        self._next_msg = float("-inf")
        self._next_byte = float("-inf")

    def delay(self, now: float) -> float:
        """Seconds to wait before the next send is allowed (0.0 when it may go now)."""
        return max(0.0, self._next_msg - now, self._next_byte - now)

    def spend(self, now: float, nbytes: int) -> None:
        """Account for one message of ``nbytes`` sent at ``now``."""
        if self.msgs_per_s > 0:
            self._next_msg = max(self._next_msg, now - self.burst_s) + 1.0 / self.msgs_per_s
        if self.bytes_per_s > 0:
            self._next_byte = max(self._next_byte, now - self.burst_s) + nbytes / self.bytes_per_s


def integrity_ok(rows: Sequence[Sequence[object]]) -> bool:
    """True when ``PRAGMA integrity_check`` returned its single 'ok' row."""
    return len(rows) == 1 and rows[0][0] == "ok"

