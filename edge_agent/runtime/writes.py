"""Writes between polls: the job a bus's scheduler runs, its guard, and its result.

A write is queued on its bus's poller (``poller.BusPoller.write``) and carried out between two
polls, so it never races a poll on the same wire. Commands (``control.commands``) add two
steps around it, run in the same turn on the bus: a ``Guard`` reads points of the device fresh
(not from the last poll) and may refuse the write (a signal cabinet's interlocks), and after
the write the point is read back, so the result carries the value the device really holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge_agent.protocol.readings import Value


@dataclass(frozen=True, slots=True)
class Guard:
    """Points to read fresh from the device before a write, and the check of what they read:
    a refusal (naming the interlock and the value seen) or None to go ahead."""

    points: tuple[str, ...]
    check: Callable[[Mapping[str, Value]], str | None]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of a write: ok, or why not (the device's refusal code, an error, a guard)."""

    ok: bool
    error: str = ""
    exception_code: int | None = None
    readback: Value | None = None   # the point read back after the write (verify=True)
    refused: str = ""               # the guard's refusal: nothing was written


@dataclass(slots=True)
class WriteJob:
    """A queued write command."""

    device: str
    point: str
    value: Value
    done: asyncio.Future[WriteResult]
    guard: Guard | None = None
    verify: bool = False   # read the point back after writing it
