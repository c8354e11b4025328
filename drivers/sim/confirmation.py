"""A simulated slave that reads the line as libmodbus's RTU server does (pure, time passed in).

libmodbus's ``modbus_receive`` in an RTU server loop: a request addressed to another unit is
dropped, and the slave then expects that unit's reply (a "confirmation to ignore"). It waits
up to its response timeout (0.5 s by default) for the next frame on the line and discards
it unread, whatever it is and whoever it is for. If the other unit never answered, the frame
it discards is the master's next request, which the slave misses even when it is the one
addressed. A pymodbus server has no such state, so the simulator keeps it here, per device
in this mode, from every frame it can see on its line: requests from the master and the
replies other simulated devices send.
"""

from __future__ import annotations

from dataclasses import dataclass

# libmodbus's default response timeout: how long it waits for another unit's reply.
LIBMODBUS_RESPONSE_TIMEOUT_S = 0.5
BROADCAST = 0


@dataclass(slots=True)
class ConfirmationWait:
    """The line state of one libmodbus-style slave at ``unit_id``."""

    unit_id: int
    wait_s: float = LIBMODBUS_RESPONSE_TIMEOUT_S
    waiting_since: float | None = None
    ignored: int = 0  # frames taken for another unit's reply ("Confirmation to ignore")

    def hears(self, addressed_to: int, at: float) -> bool:
        """A frame for ``addressed_to`` ended at ``at``; False if this slave discards it.

        A request for this slave that it does not discard is one it answers; a frame for
        another unit that it does not discard makes it wait for that unit's reply.
        """
        if self.waiting_since is not None and at - self.waiting_since <= self.wait_s:
            self.waiting_since = None
            self.ignored += 1
            return False
        # A broadcast (unit 0) is a request for every slave, answered by none: no wait.
        mine = addressed_to in (self.unit_id, BROADCAST)
        self.waiting_since = None if mine else at
        return True
