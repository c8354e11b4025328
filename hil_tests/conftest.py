"""Fixtures of the bench tests: the bench (simulated by default, ``HIL_BENCH=file`` for a real
one), a reset of the line's faults after every test, and a guard against leftover processes.

``HIL_LONG=1`` runs the long versions (more requests, more corrupted frames); CI runs the
short ones. ``HIL_SEED=N`` replaces the bench file's seed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hil_tests.rig import DEFAULT_BENCH, Bench, open_bench, parse_bench

LONG = os.environ.get("HIL_LONG") == "1"
BENCH_PIDS: set[int] = set()


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers the bench tests use."""
    config.addinivalue_line("markers", "hil: a bench test (simulated line or real hardware)")
    config.addinivalue_line("markers", "simulated_only: needs the line emulator and simulators")


def _children() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """The bench for the whole session; its processes are stopped at the end."""
    path = Path(os.environ.get("HIL_BENCH") or DEFAULT_BENCH)
    spec = parse_bench(path)
    if "HIL_SEED" in os.environ:
        from dataclasses import replace

        spec = replace(spec, seed=int(os.environ["HIL_SEED"]))
    before = _children()
    with open_bench(spec, tmp_path_factory.mktemp("bench")) as b:
        BENCH_PIDS.update(_children() - before)
        yield b
    BENCH_PIDS.clear()


@pytest.fixture
def sim_bench(bench: Bench) -> Iterator[Bench]:
    """The simulated bench, restored to a clean line after the test; skipped on real benches."""
    if not bench.simulated:
        pytest.skip("needs the line emulator and simulators (simulated bench)")
    yield bench
    bench.line({"cmd": "set", "baudrate": bench.spec.baudrate, "crc_rate": 0.0,
                "drop_rate": 0.0, "echo": False, "seed": bench.spec.seed})
    for d in bench.spec.devices:
        bench.line({"cmd": "drop", "drop": d.name, "plugged": True,
                    "latency_ms": bench.spec.turnaround_ms})
        bench.sim({"device": d.name, "fault": "none"})
    bench.sim({"cmd": "freeze", "on": False})


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail a test that leaves child processes or non-daemon threads running."""
    procs_before = _children()
    threads_before = set(threading.enumerate())
    yield
    leaked: set[int] = set()
    threads: list[threading.Thread] = []
    for _ in range(20):
        leaked = _children() - procs_before - BENCH_PIDS
        threads = [t for t in threading.enumerate()
                   if t not in threads_before and t.is_alive() and not t.daemon]
        if not leaked and not threads:
            return
        threading.Event().wait(0.1)
    for pid in leaked:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    pytest.fail(f"test left running: processes {sorted(leaked)}, threads "
                f"{[t.name for t in threads]}")
