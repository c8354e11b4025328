"""A fake clock for many tasks at once: sleepers wake in the order of their deadlines.

``FakeClock`` advances time for everyone whenever anyone sleeps, so with several tasks (the
bus pollers, the health loop, the uplink's back-off, the lighting schedule) one task's long
sleep jumps time past another's deadline. ``OrderedClock`` is a small discrete-event
scheduler instead: ``sleep`` only registers a deadline, and ``run_to`` moves time from one
deadline to the next, waking the sleepers due and letting the loop run them until they sleep
again, up to a horizon. Time also moves where code advances it itself (a fake bus's exchange).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from edge_agent.protocol.clock import FakeClock

YIELDS = 12          # loop turns always given to the woken tasks before time moves on
MAX_TURNS = 100_000  # ... and at most this many while tasks are still ready to run


class OrderedClock(FakeClock):
    """Time moves only in ``run_to``, from deadline to deadline."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        super().__init__(start)
        self._due: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def sleep(self, seconds: float) -> None:
        """Wait until ``run_to`` has moved the clock ``seconds`` on."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._due, (self.monotonic() + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def _settle(self) -> None:
        """Let the loop run until nothing is ready to run: every woken task waits again.

        A write crosses several tasks (the schedule, the bus poller, the fake bus) and takes
        a loop turn per hop, so a fixed number of turns is a race; the loop's ready queue is
        the measure (CPython's event loop keeps it as ``_ready``).
        """
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        for turn in range(MAX_TURNS):
            await asyncio.sleep(0)
            if turn >= YIELDS and not ready:
                return

    async def run_to(self, horizon: float) -> None:
        """Wake every sleeper due up to ``horizon`` (monotonic seconds), in deadline order."""
        await self._settle()
        while True:
            while self._due and self._due[0][2].done():   # cancelled sleeps
                heapq.heappop(self._due)
            if not self._due or self._due[0][0] > horizon:
                break
            target = self._due[0][0]
            if target > self.monotonic():
                self.advance(target - self.monotonic())
            while self._due and self._due[0][0] <= self.monotonic():
                fut = heapq.heappop(self._due)[2]
                if not fut.done():
                    fut.set_result(None)
            await self._settle()
        if horizon > self.monotonic():
            self.advance(horizon - self.monotonic())
        await self._settle()
