"""A private mosquitto for the demo and tests: own config, free loopback port, no persistence."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from edge_agent.protocol.errors import EdgeError
from edge_agent.tools.procs import spawn_until_ready, stop_process

# Ports handed out come from below Linux's ephemeral range (32768-60999): a port the kernel
# picked with bind(0) can be given to someone's outgoing connection between our closing it and
# a server binding it, which made two test workers' brokers and simulators collide.
# EDGE_FREE_PORTS=LO-HI narrows the range (the test run gives each worker its own).
PORTS_ENV = "EDGE_FREE_PORTS"
DEFAULT_PORTS = (20000, 32000)
_handed_out: set[int] = set()


def port_range() -> tuple[int, int]:
    """[lo, hi) of the ports ``free_port`` hands out: $EDGE_FREE_PORTS, else the default."""
    text = os.environ.get(PORTS_ENV, "")
    if not text:
        return DEFAULT_PORTS
    lo_text, _, hi_text = text.partition("-")
    if not (lo_text.isdigit() and hi_text.isdigit()
            and 1024 <= int(lo_text) < int(hi_text) <= 65536):
        raise EdgeError(f"{PORTS_ENV}={text!r}: expected LO-HI, ports from 1024 to 65536")
    return int(lo_text), int(hi_text)


def free_port() -> int:
    """A loopback TCP port free right now and not handed out before by this process."""
    lo, hi = port_range()
    if len(_handed_out) > (hi - lo) // 2:
        _handed_out.clear()  # long since closed again: start over rather than run dry
    for _ in range(1000):
        port = random.randrange(lo, hi)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise EdgeError(f"no free loopback TCP port in {lo}-{hi}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback TCP ports, each free right now."""
    return [free_port() for _ in range(n)]


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
                 "max_queued_messages 100000", "set_tcp_nodelay true"]
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
