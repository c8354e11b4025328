"""How fast the uplink is back after the broker returns, and how a fleet's return is spread.

The uplink retries with capped, fully jittered exponential back-off (``protocol.backoff``):
the n-th wait after a failure is uniform in ``[0, min(RECONNECT_CAP_S, base * 2**(n-1))]``.
Each attempt starts with a cheap TCP probe bounded by ``PROBE_TIMEOUT_S`` (a refused or
unanswered connect fails within it, so a broker that is away, or a network that swallows
packets, never holds an attempt for the MQTT timeout). So once the broker accepts connections
again, the agent's next attempt starts within ``RECONNECT_CAP_S`` and the probe plus the MQTT
handshake take one round trip each: **back within RECONNECT_CAP_S + PROBE_TIMEOUT_S** (5 s).
The full jitter spreads 10,000 gateways' returns evenly over the cap
(``bench/reconnect_storm.py`` measures the spread).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import MqttConfig

RECONNECT_BASE_S = 0.5
RECONNECT_CAP_S = 4.0
PROBE_TIMEOUT_S = 1.0


def reconnect_backoff(rng: random.Random | None = None) -> Backoff:
    """The uplink's back-off: base 0.5 s, cap RECONNECT_CAP_S, full jitter."""
    return Backoff(RECONNECT_BASE_S, RECONNECT_CAP_S, rng, jitter=1.0)


async def probe(mqtt: MqttConfig, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Open and close a connection to the broker's socket; OSError (or TimeoutError) if it
    does not accept one within ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        if mqtt.scheme == "unix":
            _, writer = await asyncio.open_unix_connection(mqtt.host)
        else:
            _, writer = await asyncio.open_connection(mqtt.host, mqtt.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
