"""Test-run wiring shared by tests/ and hil_tests/: which tests must not share the machine.

``make test`` runs pytest with two workers (pytest-xdist, ``--dist loadgroup``): most tests
wait on brokers, PTYs and subprocesses rather than compute, so two run side by side in half
the time. Tests where real time is the thing measured (poll rates, stop deadlines, paced
serial lines, scans) are marked ``serial`` (the HIL bench is, whole): they all go to one
worker, one after another, so no two of them ever compete with each other for the cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HIL = Path(__file__).resolve().parent / "hil_tests"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put every ``serial`` test, and every HIL bench test, in xdist's one "serial" group."""
    for item in items:
        if item.get_closest_marker("serial") or item.path.is_relative_to(HIL):
            item.add_marker(pytest.mark.xdist_group("serial"))
