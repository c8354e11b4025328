"""Shared fixtures: a private broker per session, a guard against leaked processes and threads."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import psutil
import pytest

from tests.support.brokers import Mosquitto

# Processes that live for the whole session on purpose (the shared broker).
SESSION_PIDS: set[int] = set()
# Processes whose whole tree outlives a test on purpose (a test module's browser, whose
# renderers come and go between its tests); the module stops them itself.
OWNED_TREES: set[int] = set()


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    """A mosquitto broker shared by the session's tests (tests must not stop it)."""
    b = Mosquitto()
    b.start()
    assert b.proc is not None
    SESSION_PIDS.add(b.proc.pid)
    yield b
    b.close()


@pytest.fixture
def own_broker() -> Iterator[Mosquitto]:
    """A mosquitto broker for one test, which it may stop and restart."""
    b = Mosquitto()
    b.start()
    yield b
    b.close()


def _owned() -> set[int]:
    out = set(OWNED_TREES)
    for pid in OWNED_TREES:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.update(p.pid for p in psutil.Process(pid).children(recursive=True))
    return out


def _children() -> set[int]:
    out: set[int] = set()
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass  # it ended between the listing and the look (a browser's helper does)
    return out


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves child processes or non-daemon threads running."""
    procs_before = _children()
    threads_before = set(threading.enumerate())
    yield
    deadline_checks = 20
    leaked_procs: set[int] = set()
    leaked_threads: list[threading.Thread] = []
    for _ in range(deadline_checks):
        leaked_procs = _children() - procs_before - SESSION_PIDS - _owned()
        leaked_threads = [t for t in threading.enumerate()
                          if t not in threads_before and t.is_alive() and not t.daemon]
        if not leaked_procs and not leaked_threads:
            return
        threading.Event().wait(0.1)
    names = []
    for pid in leaked_procs:
        try:
            p = psutil.Process(pid)
            names.append(f"{pid} {' '.join(p.cmdline())[:80]}")
            p.kill()
        except psutil.Error:
            pass
    pytest.fail(f"test left running: processes {names}, threads "
                f"{[t.name for t in leaked_threads]}")
