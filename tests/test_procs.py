"""The one process-spawn helper of the demo, the harness and the benchmarks: ready by a marker in
its log or a predicate, and never left running when it does not get there."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from edge_agent.protocol.errors import EdgeError
from edge_agent.tools.procs import spawn_until_ready, stop_process


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_when_the_marker_is_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    proc = spawn_until_ready(python("import time; time.sleep(0.3); print('up'); "
                                    "time.sleep(60)"), log, "up", timeout_s=20)
    try:
        assert proc.poll() is None and "up" in log.read_text()
    finally:
        stop_process(proc)
    assert proc.returncode is not None


def test_an_earlier_runs_marker_in_an_appended_log_does_not_count(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    log.write_text("up\n")  # the previous run of the same process
    started = time.monotonic()
    proc = spawn_until_ready(python("import time; time.sleep(0.5); print('up'); "
                                    "time.sleep(60)"), log, "up", timeout_s=20)
    try:
        assert time.monotonic() - started >= 0.5
        assert log.read_text().count("up") == 2
    finally:
        stop_process(proc)


def test_ready_when_the_predicate_holds(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    proc = spawn_until_ready(python(f"import pathlib, time; time.sleep(0.2); "
                                    f"pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"),
                             tmp_path / "p.log", flag.exists, timeout_s=20)
    try:
        assert flag.exists()
    finally:
        stop_process(proc)


def test_an_early_exit_raises_with_the_end_of_the_log(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match=r"(?s)the child exited with status 3 before it was "
                                        r"ready.*cannot open the port"):
        spawn_until_ready(python("import sys; print('cannot open the port'); sys.exit(3)"),
                          tmp_path / "p.log", "up", timeout_s=20, what="the child")


def test_a_timeout_stops_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(EdgeError, match="not ready after 3 s"):
        spawn_until_ready(python(f"import os, pathlib, time; "
                                 f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); "
                                 "time.sleep(60)"), tmp_path / "p.log", "never", timeout_s=3)
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped, not a zombie


def test_without_a_readiness_test_it_returns_at_once(tmp_path: Path) -> None:
    proc = spawn_until_ready(python("import time; time.sleep(60)"), tmp_path / "p.log")
    try:
        assert proc.poll() is None
    finally:
        stop_process(proc)


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.tools import devbroker

    monkeypatch.setenv(devbroker.PORTS_ENV, "23000-23100")
    ports = devbroker.free_ports(40)
    assert len(set(ports)) == 40 and all(23000 <= p < 23100 for p in ports)
    monkeypatch.delenv(devbroker.PORTS_ENV)
    hi = devbroker.port_range()[1]
    assert hi <= 32768  # below Linux's ephemeral ports: no outgoing connection takes one
    for bad in ("100-200", "5000", "x-y", "30000-20000"):
        monkeypatch.setenv(devbroker.PORTS_ENV, bad)
        with pytest.raises(EdgeError, match="EDGE_FREE_PORTS"):
            devbroker.free_port()
