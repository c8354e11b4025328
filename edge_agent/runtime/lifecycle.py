"""Bounded lifecycle: stops, drains and closes with deadlines, heartbeats, and dumps of what hung.

Nothing here may wait forever. ``stop_tasks`` cancels tasks and cancels them again until they
end, because a cancel can be lost (Python 3.11's ``asyncio.wait_for`` drops one that lands in
the same loop turn as the result it waits for). ``bounded`` runs one step against a deadline.
A step that overruns is logged once with what it was waiting for: each task's name, how many
cancels it was asked for, and its stack along the chain of awaits (``Task.get_stack`` shows
only the outermost frame of a suspended coroutine).

``Heartbeat`` is a loop's promise to be heard from again by a time it names, and
``Operations`` are the long steps in progress (a stop, a switch) with their deadlines; the
gateway pings the systemd watchdog only while no heartbeat and no operation is overdue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
from collections.abc import Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from edge_agent.protocol.clock import Clock
from edge_agent.protocol.errors import EdgeError

log = logging.getLogger(__name__)

T = TypeVar("T")
RECANCEL_EVERY_S = 0.25   # how often a task that outlives its cancel is cancelled again
STACK_DEPTH = 16          # frames shown per task in a dump
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Overrun(EdgeError):
    """A stop, switch or close did not finish within its deadline (it was forced)."""


def _where(filename: str) -> str:
    # Paths relative to the checkout or to site-packages: a dump is read in a journal line.
    if filename.startswith(_ROOT):
        return os.path.relpath(filename, _ROOT)
    return filename.rpartition("site-packages/")[2] or filename


def task_stack(task: asyncio.Task[Any]) -> list[str]:
    """Where ``task`` is suspended, outermost frame first, as ``file:line in function``."""
    frames: list[str] = []
    obj: object = task.get_coro()
    while obj is not None and len(frames) < STACK_DEPTH:
        frame = (getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None)
                 or getattr(obj, "gi_frame", None))
        if frame is None:
            break
        frames.append(f"{_where(frame.f_code.co_filename)}:{frame.f_lineno} in "
                      f"{frame.f_code.co_name}")
        obj = (getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None)
               or getattr(obj, "gi_yieldfrom", None))
    if not frames:  # not a coroutine we can walk: what asyncio itself knows
        frames = [f"{_where(f.f_code.co_filename)}:{f.f_lineno} in {f.f_code.co_name}"
                  for f in task.get_stack(limit=STACK_DEPTH)]
    return frames


def describe_tasks(tasks: Iterable[asyncio.Task[Any]]) -> str:
    """One block per unfinished task: name, cancels asked for, and its stack (innermost last)."""
    lines = []
    for task in sorted((t for t in tasks if not t.done()), key=lambda t: t.get_name()):
        asked = task.cancelling()
        state = f", cancel asked {asked}x" if asked else ""
        lines.append(f"  task {task.get_name()}{state}:")
        lines += [f"    {frame}" for frame in task_stack(task)]
    return "\n".join(lines) or "  (no unfinished tasks)"


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], timeout_s: float, what: str, *,
                     recancel_after_s: float = RECANCEL_EVERY_S) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait up to ``timeout_s`` for them to end, cancelling again those
    still running after ``recancel_after_s`` and then every RECANCEL_EVERY_S. Returns the tasks
    still running at the deadline, after logging them with their stacks."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout_s
    recancel_at = start + recancel_after_s
    recancelled = 0
    while pending:
        now = loop.time()
        if now >= deadline:
            break
        _, pending = await asyncio.wait(pending, timeout=min(deadline, recancel_at) - now)
        if pending and loop.time() >= recancel_at:
            # A lost cancel leaves a task running as if nothing was asked: ask again.
            for task in pending:
                task.cancel()
            recancelled += 1
            recancel_at = loop.time() + RECANCEL_EVERY_S
    if pending:
        log.error("stop: %s still running %.1f s after the cancel (asked again %d times); "
                  "waiting in:\n%s", what, loop.time() - start, recancelled,
                  describe_tasks(pending))
    elif recancelled and loop.time() - start > recancel_after_s + RECANCEL_EVERY_S:
        log.warning("stop: %s needed %d more cancels and %.1f s to end", what, recancelled,
                    loop.time() - start)
    return pending


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
