"""Supervised long-running tasks of the fleet's consumers (the service's and the ingest's).

A consumer's loops are meant to run forever. Left to asyncio, one that raises simply ends: its
exception sits unread on a task nobody awaits, the process and its health endpoint stay up,
and nothing is logged. Under a ``Supervisor`` a task that ends (by raising, or by returning,
which a forever-loop must not do either) is logged at once (with its traceback the first time
of a run of failures), counted, shown in ``snapshot()`` (health) as ``restarting`` with its
last error, and started again after a back-off (``edge_agent.protocol.backoff.Backoff``).
One that fails ``max_failures`` times in a row, never staying up for ``healthy_s`` in between,
cannot be restarted: it is marked ``failed``, ``fatal`` is set, and the owner ends the process
with a non-zero status (``TaskFailedError`` carries it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import CommandError
from edge_agent.protocol.tasks import stop_tasks

log = logging.getLogger(__name__)

# The process's exit status when a supervised task cannot be restarted: an outcome, not a
# usage mistake (2), in the convention of CommandError.
EXIT_TASK_FAILED = 1
STOP_S = 5.0  # how long a stop waits for the supervised tasks to end after their cancel

RUNNING, RESTARTING, FAILED, STOPPED = "running", "restarting", "failed", "stopped"


class TaskFailedError(CommandError):
    """A supervised task failed too often in a row to be restarted; the process must end."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=EXIT_TASK_FAILED)


@dataclass
class TaskState:
    """What a supervisor knows of one task, as health shows it."""

    name: str
    state: str = RUNNING
    restarts: int = 0
    failures_in_a_row: int = 0
    last_error: str | None = None
    last_error_ms: int | None = None
    started_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The health form."""
        return {"state": self.state, "restarts": self.restarts,
                "failures_in_a_row": self.failures_in_a_row, "last_error": self.last_error,
                "last_error_ms": self.last_error_ms, "started_ms": self.started_ms}


def _error_text(exc: BaseException | None) -> str:
    if exc is None:
        return "the task returned (it must run until cancelled)"
    text = f"{type(exc).__name__}: {exc}"
    # A message built from untrusted input can be long; health and logs show a bounded one.
    return text if len(text) <= 500 else text[:500] + "..."


class Supervisor:
    """Runs named tasks forever, restarting each after a crash; see the module docstring."""

    def __init__(self, *, clock: Clock | None = None, base_s: float = 0.5, cap_s: float = 30.0,
                 max_failures: int = 10, healthy_s: float = 60.0) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        self.clock = clock or SystemClock()
        self.base_s = base_s
        self.cap_s = cap_s
        self.max_failures = max_failures
        self.healthy_s = healthy_s
        self.tasks: dict[str, TaskState] = {}
        self.fatal = asyncio.Event()
        self.failure: str | None = None
        self._running: dict[str, asyncio.Task[None]] = {}

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Start supervising ``factory()`` under ``name`` (unique per supervisor)."""
        if name in self._running:
            raise ValueError(f"a task named {name!r} is already supervised")
        self.tasks[name] = TaskState(name)
        task = asyncio.create_task(self._supervise(name, factory), name=name)
        self._running[name] = task
        return task

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        st = self.tasks[name]
        backoff = Backoff(self.base_s, self.cap_s, random.Random(name))
        while True:
            st.state = RUNNING
            st.started_ms = self._now_ms()
            began = self.clock.monotonic()
            error: BaseException | None = None
            try:
                await factory()
            except asyncio.CancelledError:
                st.state = STOPPED
                raise
            except Exception as exc:  # a supervisor is where a broad except belongs
                error = exc
            if self.clock.monotonic() - began >= self.healthy_s:
                # It ran well for a while: this is a new run of failures, not more of the last.
                st.failures_in_a_row = 0
                backoff.reset()
            st.failures_in_a_row += 1
            st.last_error = _error_text(error)
            st.last_error_ms = self._now_ms()
            if st.failures_in_a_row >= self.max_failures:
                st.state = FAILED
                self.failure = (f"task {name} failed {st.failures_in_a_row} times in a row "
                                f"and is not restarted again; last: {st.last_error}")
                log.critical("%s", self.failure, exc_info=error)
                self.fatal.set()
                return
            st.state = RESTARTING
            st.restarts += 1
            delay = backoff.next_delay()
            if st.failures_in_a_row == 1:
                log.error("task %s died; restarting in %.1f s (restart %d)", name, delay,
                          st.restarts, exc_info=error)
            else:  # the traceback was logged at the first failure of this run
                log.error("task %s died again (%d in a row): %s; restarting in %.1f s", name,
                          st.failures_in_a_row, st.last_error, delay)
            await self.clock.sleep(delay)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every task's state, for health."""
        return {name: st.as_dict() for name, st in sorted(self.tasks.items())}

    def all_running(self) -> bool:
        """Whether every supervised task is running (none restarting or failed)."""
        return bool(self.tasks) and all(st.state == RUNNING for st in self.tasks.values())

    async def stop(self, timeout_s: float = STOP_S) -> list[str]:
        """Cancel every task and wait up to ``timeout_s`` for them to end; the names of those
        that did not (logged with their stacks: the owner's exit goes on without them)."""
        left = await stop_tasks(list(self._running.values()), timeout_s, "supervised tasks")
        self._running.clear()
        return sorted(t.get_name() for t in left)
