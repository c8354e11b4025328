"""Test-run wiring shared by tests/ and hil_tests/: which tests must not share the machine.

``make test`` runs pytest with two workers (pytest-xdist, ``--dist loadgroup``): most tests
wait on brokers, PTYs and subprocesses rather than compute, so two run side by side in half
the time. Tests where real time is the thing measured (poll rates, stop deadlines, paced
serial lines, scans) are marked ``serial`` (the HIL bench is, whole): they all go to one
worker, one after another, so no two of them ever compete with each other for the cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.tools.devbroker import DEFAULT_PORTS, PORTS_ENV

HIL = Path(__file__).resolve().parent / "hil_tests"


def pytest_configure(config: pytest.Config) -> None:
    """Give each xdist worker its own share of the ports ``free_port`` hands out, so two
    workers' brokers, simulators and agents can never pick the same one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        lo, hi = DEFAULT_PORTS
        share = (hi - lo) // count
        start = lo + int(worker[2:]) * share
        os.environ[PORTS_ENV] = f"{start}-{start + share}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put every ``serial`` test, and every HIL bench test, in xdist's one "serial" group."""
    for item in items:
        if item.get_closest_marker("serial") or item.path.is_relative_to(HIL):
            item.add_marker(pytest.mark.xdist_group("serial"))
