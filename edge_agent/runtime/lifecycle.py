"""Bounded lifecycle: stops, drains and closes with deadlines, heartbeats, and dumps of what hung.

Nothing here may wait forever. ``bounded`` runs one step against a deadline; a step that
overruns is logged once with what it was waiting for and forced (``protocol.tasks``, which
stops tasks for sure and is shared with the operations centre).

``Heartbeat`` is a loop's promise to be heard from again by a time it names, and
``Operations`` are the long steps in progress (a stop, a switch) with their deadlines; the
gateway pings the systemd watchdog only while no heartbeat and no operation is overdue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from edge_agent.protocol.clock import Clock
from edge_agent.protocol.errors import EdgeError
from edge_agent.protocol.tasks import describe_tasks, stop_tasks

log = logging.getLogger(__name__)

T = TypeVar("T")


class Overrun(EdgeError):
    """A stop, switch or close did not finish within its deadline (it was forced)."""


async def bounded(coro: Coroutine[Any, Any, T], timeout_s: float,
                  what: str) -> tuple[bool, T | None]:
    """Run ``coro`` for at most ``timeout_s``: (True, its result), or (False, None) after
    logging where it was stuck and cancelling it. Its own exceptions propagate."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return True, task.result()
    log.error("stop: %s did not finish within %.1f s; forcing it. It was waiting in:\n%s",
              what, timeout_s, describe_tasks([task]))
    await stop_tasks([task], 1.0, what)
    return False, None


class Heartbeat:
    """A loop's promise to be heard from again: ``beat(within_s)`` each turn; overdue when late.

    ``grace_s`` is the lateness tolerated on top of the promise (a busy loop, a slow reply).
    A loop that ends on purpose calls ``rest`` and is watched no more.
    """

    __slots__ = ("_clock", "due", "grace_s", "last", "name")

    def __init__(self, name: str, clock: Clock, grace_s: float) -> None:
        self.name = name
        self._clock = clock
        self.grace_s = grace_s
        self.last = clock.monotonic()
        self.due = self.last + grace_s

    def beat(self, next_within_s: float) -> None:
        """Alive now, and will beat again within ``next_within_s``."""
        now = self._clock.monotonic()
        self.last = now
        self.due = now + next_within_s

    def rest(self) -> None:
        """Ended on purpose: never overdue."""
        self.due = math.inf

    def overdue_s(self) -> float:
        """Seconds past the promise and the grace (0 while on time)."""
        return max(0.0, self._clock.monotonic() - self.due - self.grace_s)

    def describe(self) -> str:
        """Why this heartbeat counts as stuck, for the log."""
        silent = self._clock.monotonic() - self.last
        return (f"{self.name} silent for {silent:.1f} s ({self.overdue_s():.1f} s past its "
                f"promise and {self.grace_s:g} s of grace)")


@dataclass(frozen=True, slots=True)
class Operation:
    """A long step in progress and when it must be over."""

    what: str
    started: float
    deadline: float


class Operations:
    """The steps in progress (stop, switch, health gate), each with a deadline."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._ids = itertools.count()
        self._running: dict[int, Operation] = {}

    @contextmanager
    def step(self, what: str, within_s: float) -> Iterator[Operation]:
        """Track ``what`` as in progress for the ``with`` block; overdue after ``within_s``."""
        now = self._clock.monotonic()
        op = Operation(what, now, now + within_s)
        key = next(self._ids)
        self._running[key] = op
        try:
            yield op
        finally:
            del self._running[key]

    @property
    def busy(self) -> bool:
        """True while any step is in progress."""
        return bool(self._running)

    def overdue(self) -> list[str]:
        """The steps past their deadline, described for the log."""
        now = self._clock.monotonic()
        return [f"{op.what} still running {now - op.started:.1f} s after it started (deadline "
                f"{op.deadline - op.started:g} s)"
                for op in self._running.values() if now > op.deadline]
