"""A scripted field bus on a fake clock, for scheduler tests without simulators or PTYs.

In the spirit of pymodbus's null-modem test transport, but one level up: ``FakeBus`` is a
``ModbusTransport`` (``edge_agent.drivers.transport.FieldTransport`` for Modbus requests)
that answers from per-unit register images instead of framing bytes. A unit can be
silent (each attempt costs the bus its timeout in fake time), refuse address ranges with
any Modbus exception (an address missing from the image is refused with exception 2, as
a real device's datastore does), refuse reads crossing an internal block boundary, or
play a script of one-off outcomes first. Every attempt is logged, so tests count and
order requests instead of timing them.

``SteppedClock`` lets time pass only up to a horizon the test sets, and ``Polling`` runs a
poller on it: ``await polling.until(30)`` returns once the poller idles at 30 s, with the
whole run decided by the script and the clock, never by how fast the host is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from edge_agent.drivers.modbus.transport import WriteRequest
from edge_agent.drivers.model import ReadRequest, Table
from edge_agent.drivers.transport import BusStats, Reply
from edge_agent.protocol.clock import FakeClock

ILLEGAL_DATA_ADDRESS = 2
# Binary fractions, so sums of exchange times on a fake clock stay exact and grid
# comparisons in the scheduler never land a rounding error either side of a mark.
DEFAULT_REPLY_S = 2.0**-6      # ~16 ms for an answered exchange
DEFAULT_TIMEOUT_S = 0.5


class SteppedClock(FakeClock):
    """A FakeClock whose sleeps stop at a horizon (monotonic seconds) until it is moved."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        super().__init__(start)
        self.horizon = 0.0
        self._parked = asyncio.Event()
        self._released = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        """Advance by ``seconds``, waiting at the horizon while the target lies beyond it."""
        target = self.monotonic() + max(0.0, seconds)
        while target > self.horizon:
            if self.horizon > self.monotonic():
                self.advance(self.horizon - self.monotonic())
            self._released.clear()
            self._parked.set()
            await self._released.wait()
        self.advance(target - self.monotonic())
        await asyncio.sleep(0)

    async def hold(self) -> None:
        """Wait while the clock stands past its horizon; a bus calls this before each read.

        Without it a poller that is always late, so never sleeps, would run past any horizon.
        """
        while self.monotonic() > self.horizon:
            self._released.clear()
            self._parked.set()
            await self._released.wait()

    async def run_to(self, horizon: float, watch: asyncio.Task[None] | None = None) -> None:
        """Move the horizon; return once the poller waits at it (or ``watch`` ended).

        A poller waits at the horizon when it sleeps past it, or when a request would start
        after it: pick horizons between slots so no poll is left half done.
        """
        self.horizon = horizon
        self._parked.clear()
        self._released.set()
        parked = asyncio.ensure_future(self._parked.wait())
        waits: set[asyncio.Future[Any]] = {parked}
        if watch is not None:
            waits.add(watch)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            parked.cancel()
        if watch is not None and watch.done():
            watch.result()  # re-raise what ended the poller; a clean end is a bug too
            raise AssertionError("the poller returned instead of idling at the horizon")


class Polling:
    """Runs a poller (``BusScheduler.run``) as a task on a SteppedClock, for ``async with``."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]],
                 clock: SteppedClock) -> None:
        self._run = run
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Polling:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def until(self, seconds: float) -> None:
        """Let the poller run until it idles at ``seconds`` of fake monotonic time."""
        await self._clock.run_to(seconds, self._task)


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """A scripted attempt the unit does not answer: it costs the bus its whole timeout."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """A scripted Modbus exception reply with ``code``."""

    code: int


@dataclass(frozen=True, slots=True)
class Slow:
    """A scripted attempt answered from the image, but only after ``seconds``."""

    seconds: float


Scripted = NoAnswer | Refuse | Slow
Outcome = Literal["data", "exception", "no answer"]


@dataclass(frozen=True, slots=True)
class Exchange:
    """One attempt on the fake bus, as logged: what was asked, when, and how it ended."""

    unit_id: int
    kind: Literal["read", "write"]
    table: Table
    address: int
    count: int
    outcome: Outcome
    exception_code: int | None
    at_s: float       # fake monotonic time the request went out
    attempt: int      # 0 for the first attempt of a call, 1 for its first retry ...

    @property
    def end(self) -> int:
        """First address after the span."""
        return self.address + self.count

    def covers(self, table: Table, address: int) -> bool:
        """True if this request's span includes ``address`` of ``table``."""
        return self.table is table and self.address <= address < self.end


@dataclass(slots=True)
class FakeUnit:
    """One scripted device on the fake bus."""

    unit_id: int
    image: dict[Table, dict[int, int]] = field(default_factory=dict)
    refusals: list[tuple[Table, int, int, int]] = field(default_factory=list)
    walls: dict[Table, set[int]] = field(default_factory=dict)
    script: deque[Scripted] = field(default_factory=deque)
    silent: bool = False
    refuse_all: int | None = None  # e.g. 0x0B: a TCP gateway whose serial device is silent
    reply_s: float | None = None   # None: the bus's
    # libmodbus's RTU slave: after a frame for another unit it takes the next frame within
    # this many seconds as that unit's reply and ignores it (None: pymodbus-like, no wait).
    confirmation_wait_s: float | None = None
    waiting_since: float | None = None
    swallowed: int = 0   # frames it took for another unit's reply
    missed_own: int = 0  # ...of which requests addressed to it

    def hears(self, addressed_to: int, at: float) -> bool:
        """A frame for ``addressed_to`` ends at ``at``: False if this unit swallows it."""
        if self.confirmation_wait_s is None:
            return True
        if self.waiting_since is not None and at - self.waiting_since <= self.confirmation_wait_s:
            self.waiting_since = None
            self.swallowed += 1
            self.missed_own += addressed_to == self.unit_id
            return False
        self.waiting_since = None if addressed_to == self.unit_id else at
        return True

    def load(self, table: Table, address: int, values: Iterable[int | bool]) -> FakeUnit:
        """Put ``values`` into the image from ``address`` on."""
        cells = self.image.setdefault(table, {})
        for i, v in enumerate(values):
            cells[address + i] = int(v)
        return self

    def refuse(self, table: Table, start: int, end: int,
               code: int = ILLEGAL_DATA_ADDRESS) -> FakeUnit:
        """Answer exception ``code`` to any request touching [start, end) of ``table``."""
        self.refusals.append((table, start, end, code))
        return self

    def wall(self, table: Table, address: int) -> FakeUnit:
        """Refuse (exception 2) any read holding both ``address - 1`` and ``address``."""
        self.walls.setdefault(table, set()).add(address)
        return self

    def then(self, *outcomes: Scripted) -> FakeUnit:
        """Play ``outcomes``, one per attempt, before the image answers again."""
        self.script.extend(outcomes)
        return self

    def value(self, table: Table, address: int) -> int | None:
        """The image's value at ``address``, None where the unit has no such address."""
        return self.image.get(table, {}).get(address)

    def refusal(self, table: Table, address: int, count: int, *, read: bool) -> int | None:
        """The exception code this unit answers to the span, None if it serves it."""
        end = address + count
        for t, start, stop, code in self.refusals:
            if t is table and start < end and address < stop:
                return code
        if read and any(address < w < end for w in self.walls.get(table, ())):
            return ILLEGAL_DATA_ADDRESS
        cells = self.image.get(table, {})
        if any(a not in cells for a in range(address, end)):
            return ILLEGAL_DATA_ADDRESS
        return None


_Answer = list[int] | list[bool] | int | None  # data, an exception code, or no answer


class FakeBus:
    """A ``ModbusTransport`` answering from scripted units, consuming fake-clock time."""

    def __init__(self, clock: FakeClock, *, name: str = "A", retries: int = 1,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 reply_s: float = DEFAULT_REPLY_S, no_reply_guard_s: float = 0.0) -> None:
        self.clock = clock
        self.no_reply_guard_s = no_reply_guard_s
        self.quiet_until = 0.0
        self.guard_waits = 0
        self.name = name
        self.retries = retries
        self.timeout_s = timeout_s
        self.reply_s = reply_s
        self.units: dict[int, FakeUnit] = {}
        self.log: list[Exchange] = []
        self.on_exchange: Callable[[Exchange], None] | None = None
        self.closes = 0
        self._stats = BusStats()
        self._open = True
        self._lock = asyncio.Lock()

    def unit(self, unit_id: int) -> FakeUnit:
        """The scripted unit at ``unit_id``, created empty (it refuses everything) if new."""
        return self.units.setdefault(unit_id, FakeUnit(unit_id))

    def sent(self, unit_id: int | None = None, *, kind: Literal["read", "write"] | None = None,
             outcome: Outcome | None = None) -> list[Exchange]:
        """The logged attempts, optionally only those of one unit, kind or outcome."""
        return [e for e in self.log
                if (unit_id is None or e.unit_id == unit_id)
                and (kind is None or e.kind == kind)
                and (outcome is None or e.outcome == outcome)]

    @property
    def stats(self) -> BusStats:
        """The bus's counters, kept as ``BusTransport`` keeps them."""
        return self._stats

    @property
    def connected(self) -> bool:
        """False after ``close`` until the next request reopens the bus."""
        return self._open

    def describe(self) -> str:
        """Where the bus is, for messages."""
        return f"fake bus {self.name}"

    async def read_request(self, unit_id: int, request: ReadRequest, *,
                           attempts: int | None = None) -> Reply:
        """Answer a planned read from the unit's script and image."""
        tries = attempts if attempts is not None else 1 + self.retries
        return await self._call(unit_id, "read", request.table, request.address,
                                request.count, None, tries)

    async def write_request(self, unit_id: int, request: WriteRequest) -> Reply:
        """Store a write in the unit's image unless the script or a refusal says otherwise."""
        if not request.table.writable:
            raise ValueError(f"{request.table.value} is read-only")
        return await self._call(unit_id, "write", request.table, request.address,
                                len(request.values), [int(v) for v in request.values], 1)

    async def close(self) -> None:
        """Mark the bus closed (safe to call twice)."""
        if self._open:
            self.closes += 1
        self._open = False

    async def _call(self, unit_id: int, kind: Literal["read", "write"], table: Table,
                    address: int, count: int, values: list[int] | None, tries: int) -> Reply:
        st = self._stats
        async with self._lock:
            if not self._open:
                st.reconnects += 1
                self._open = True
            started = self.clock.monotonic()
            for attempt in range(tries):
                st.requests += 1
                if attempt:
                    st.retries += 1
                if kind == "read" and isinstance(self.clock, SteppedClock):
                    # Reads are the poller's: they stop at the horizon. Writes are what a
                    # test asks for while the poller waits there, so they always go out.
                    await self.clock.hold()
                if not attempt and self.clock.monotonic() < self.quiet_until:  # the guard
                    self.guard_waits += 1
                    st.guard_waits += 1
                    self.clock.advance(self.quiet_until - self.clock.monotonic())
                sent_at = self.clock.monotonic()
                heard = {u.unit_id: u.hears(unit_id, sent_at) for u in self.units.values()}
                answer: _Answer
                if heard.get(unit_id, True):
                    answer, cost = self._answer(unit_id, kind, table, address, count, values)
                else:
                    answer, cost = None, self.timeout_s  # it took our request for a reply
                if answer is not None:  # the reply is a frame every other unit hears too
                    for u in self.units.values():
                        if u.unit_id != unit_id:
                            u.hears(unit_id, sent_at + cost)
                    if attempt:  # as BusTransport: a retry's reply is followed by the guard
                        self.quiet_until = sent_at + cost + self.no_reply_guard_s
                else:
                    self.quiet_until = sent_at + self.no_reply_guard_s
                outcome: Outcome = ("no answer" if answer is None else
                                    "exception" if isinstance(answer, int) else "data")
                # The bus is busy for the whole exchange: time passes, nothing else is sent.
                self.clock.advance(cost)
                st.busy_s += cost
                entry = Exchange(unit_id, kind, table, address, count, outcome,
                                 answer if isinstance(answer, int) else None, sent_at, attempt)
                self.log.append(entry)
                if self.on_exchange is not None:
                    self.on_exchange(entry)
                await asyncio.sleep(0)
                if answer is None:
                    st.timeouts += 1
                    continue
                st.replies += 1
                latency = self.clock.monotonic() - started
                if isinstance(answer, int):
                    st.exceptions += 1
                    st.exception_codes[answer] = st.exception_codes.get(answer, 0) + 1
                    return Reply(exception_code=answer, latency_s=latency)
                return Reply(data=answer, latency_s=latency)
            st.last_error = f"no reply from unit {unit_id}"
            return Reply(error=st.last_error, latency_s=self.clock.monotonic() - started)

    def _answer(self, unit_id: int, kind: Literal["read", "write"], table: Table,
                address: int, count: int, values: list[int] | None) -> tuple[_Answer, float]:
        """What the unit answers to one attempt, and how long the exchange takes."""
        unit = self.units.get(unit_id)
        if unit is None:
            return None, self.timeout_s  # nobody at this address: a real line stays silent
        reply_s = unit.reply_s if unit.reply_s is not None else self.reply_s
        if unit.script:
            scripted = unit.script.popleft()
            if isinstance(scripted, NoAnswer):
                return None, self.timeout_s
            if isinstance(scripted, Refuse):
                return scripted.code, reply_s
            reply_s = scripted.seconds
        elif unit.silent:
            return None, self.timeout_s
        elif unit.refuse_all is not None:
            return unit.refuse_all, reply_s
        code = unit.refusal(table, address, count, read=kind == "read")
        if code is not None:
            return code, reply_s
        cells = unit.image.setdefault(table, {})
        if values is not None:
            for i, v in enumerate(values):
                cells[address + i] = v
            return [], reply_s  # a write's echo carries no data for the caller
        words = [cells[a] for a in range(address, address + count)]
        if table.is_bit:
            return [bool(w) for w in words], reply_s
        return words, reply_s
