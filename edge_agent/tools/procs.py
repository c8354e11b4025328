"""Child processes of the demo, the benchmarks and the tests: started until they are ready,
stopped politely, never left running."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edge_agent.protocol.errors import EdgeError

LOG_TAIL_CHARS = 3000
POLL_S = 0.05


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM, wait up to ``timeout_s`` for a graceful exit, then SIGKILL; always reaps it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn_until_ready(cmd: Sequence[str], log_path: Path | None,
                      ready: str | Callable[[], bool] | None = None, *, timeout_s: float = 30.0,
                      env: Mapping[str, str] | None = None, cwd: Path | None = None,
                      what: str | None = None, new_session: bool = False,
                      ) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its output appended to ``log_path`` and return it once it is ready.

    ``ready`` is a text the process writes to its log, a predicate, or None (do not wait). With
    ``log_path`` None the output goes where this process's goes. ``new_session`` keeps a
    Ctrl-C at the terminal from reaching it. If the process exits first or ``timeout_s``
    passes, it is stopped and EdgeError carries the end of its log.
    """
    name = what or shlex.join(cmd)[:200]
    # Readiness is read from the log: a Python child must not keep its lines in a buffer.
    child_env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    start = log_path.stat().st_size if log_path is not None and log_path.exists() else 0

    def new_output() -> bytes:
        if log_path is None:
            return b""
        with log_path.open("rb") as fh:
            fh.seek(start)  # an appended log may hold an earlier run's marker
            return fh.read()

    def is_ready() -> bool:
        if ready is None:
            return True
        if isinstance(ready, str):
            return ready.encode() in new_output()
        return ready()

    def tail() -> str:
        if log_path is None:
            return "; its output is above"
        text = new_output().decode(errors="replace")[-LOG_TAIL_CHARS:]
        return f"; the end of {log_path}:\n{text}"

    if log_path is None:
        proc = subprocess.Popen(list(cmd), env=child_env, cwd=cwd,
                                start_new_session=new_session)
    else:
        with log_path.open("ab") as log:  # the child holds its own descriptor of the file
            proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                    env=child_env, cwd=cwd, start_new_session=new_session)
    try:
        deadline = time.monotonic() + timeout_s
        while not is_ready():
            if proc.poll() is not None:
                raise EdgeError(f"{name} exited with status {proc.returncode} before it was "
                                f"ready{tail()}")
            if time.monotonic() > deadline:
                raise EdgeError(f"{name} not ready after {timeout_s:g} s{tail()}")
            time.sleep(POLL_S)
    except BaseException:
        stop_process(proc)
        raise
    return proc
