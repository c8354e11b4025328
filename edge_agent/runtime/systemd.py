"""The sd_notify protocol (sd_notify(3)): readiness, watchdog pings, status and stopping.

Datagrams such as ``READY=1`` or ``WATCHDOG=1`` go to the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` is Linux's abstract namespace). ``$WATCHDOG_USEC`` is the
watchdog period; systemd advises pinging at half of it. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Watchdog:
    """sd_notify over ``$NOTIFY_SOCKET``: readiness, watchdog pings, status, stopping."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self.interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is for; another process must not ping.
        for_us = not pid or (pid.isdigit() and int(pid) == os.getpid())
        if usec.isdigit() and int(usec) > 0 and for_us:
            self.interval_s = int(usec) / 1_000_000 / 2
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        """True when systemd is listening (there is a notify socket)."""
        return self.socket_path is not None

    def _address(self) -> str:
        assert self.socket_path is not None
        if self.socket_path.startswith("@"):
            return "\0" + self.socket_path[1:]
        return self.socket_path

    def notify(self, message: str) -> bool:
        """Send one sd_notify datagram; False (and counted) if it could not be sent."""
        if not self.enabled:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self._address())
                s.sendall(message.encode())
        except OSError:
            self.failed += 1
            return False
        self.sent += 1
        return True

    def notify_ready(self, status: str = "polling") -> bool:
        """Tell systemd start-up is complete (Type=notify waits for this)."""
        return self.notify(f"READY=1\nSTATUS={status}")

    def ping(self) -> bool:
        """Reset the watchdog timer; call every ``interval_s`` seconds."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def notify_stopping(self) -> bool:
        """Tell systemd the agent is shutting down on purpose."""
        return self.notify("STOPPING=1")
