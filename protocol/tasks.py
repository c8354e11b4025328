"""Stopping asyncio tasks for sure, and saying where they hung: shared by the gateway and the
operations centre.

``stop_tasks`` cancels tasks and cancels them again until they end, because a cancel can be
lost (Python 3.11's ``asyncio.wait_for`` drops one that lands in the same loop turn as the
result it waits for), and gives up at a deadline, returning what is left. What did not end is
logged once with each task's name, how many cancels it was asked for, and its stack along the
chain of awaits (``Task.get_stack`` shows only the outermost frame of a suspended coroutine).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_EVERY_S = 0.25   # how often a task that outlives its cancel is cancelled again
STACK_DEPTH = 16          # frames shown per task in a dump
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout


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


async def sleep_or_event(sleep: Callable[[float], Awaitable[None]], seconds: float,
                         event: asyncio.Event) -> bool:
    """Sleep (on a passed-in clock's ``sleep``) unless ``event`` is set first; True if the
    whole sleep ran. The event is left as it is: its owner clears it."""
    sleeper = asyncio.ensure_future(sleep(seconds))
    waker = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
    return sleeper.done() and not sleeper.cancelled()
