"""A private mosquitto for the demo and tests: own config, free loopback port, no persistence."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from edge_agent.protocol.errors import EdgeError
from edge_agent.tools.procs import spawn_until_ready, stop_process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One mosquitto process; ``stop``/``start`` keep the same port so clients can reconnect."""

    def __init__(self, extra_conf: str = "", port: int | None = None, *,
                 anonymous: bool = True) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise EdgeError("mosquitto is not installed: run 'apt-get install -y mosquitto'")
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="edge-mosq-"))
        self.port = port or free_port()
        self.extra_conf = extra_conf
        # False when extra_conf brings its own security settings per listener (the fragment
        # of `edge-fleet broker-config`): mosquitto refuses per_listener_settings after one.
        self.anonymous = anonymous
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """mqtt:// URL of the broker."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart) the broker and wait until it accepts connections."""
        conf = self.dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1",
                 *(["allow_anonymous true"] if self.anonymous else []),
                 "persistence false", "log_dest stderr", "log_type error", "log_type warning",
                 "max_queued_messages 100000"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf + "\n")
        # Its own session: a Ctrl-C at the terminal must not stop the broker before the
        # agent has said goodbye through it; its owner stops it last.
        self.proc = spawn_until_ready([self.exe, "-c", str(conf)], self.dir / "mosquitto.log",
                                      self._listening, timeout_s=10, what="mosquitto",
                                      new_session=True)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the broker (clients see the connection drop)."""
        if self.proc is not None:
            stop_process(self.proc, timeout_s=5)
        self.proc = None

    def close(self) -> None:
        """Stop and remove the broker's files."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
