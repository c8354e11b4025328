"""Reconnect benchmark: how soon gateways are back after the broker returns, and how spread.

Two parts (figures only; it never fails):

- **Simulated fleet**: 10,000 gateways (``--gateways``) lose the broker at t = 0; each retries
  with the uplink's own back-off (``edge_agent.runtime.reconnect``: base 0.5 s, cap 4 s, full
  jitter, each seeded differently) and a failed attempt costs the probe's refusal (~0 s). The
  broker is back at ``--outage-s`` (several values). Printed per outage: time from the return
  to each gateway's first attempt (median, p99, max) and the herd: the most connects in any
  100 ms, as a rate. The same for the old policy (cap 30 s) for comparison.
- **Live** (``--live N``): the real ``Uplink`` (probe, back-off, aiomqtt) against a private
  mosquitto, stopped for ``--live-outage-s`` and started again, N times: seconds from the
  broker accepting connections to the uplink connected (median, max).

    .venv/bin/python bench/reconnect_storm.py [--gateways 10000] [--live 5]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import parse_broker_url
from edge_agent.protocol.clock import SystemClock
from edge_agent.runtime.reconnect import RECONNECT_BASE_S, RECONNECT_CAP_S, reconnect_backoff
from edge_agent.runtime.store import MemoryStore
from edge_agent.runtime.uplink import Uplink
from edge_agent.tools.devbroker import Mosquitto

ATTEMPT_S = 0.002   # a refused probe: one local round trip


def first_attempt_after(outage_s: float, backoff: Backoff) -> float:
    """When one gateway's first attempt at or after ``outage_s`` starts (it then connects)."""
    t = 0.0
    while t < outage_s:
        t += ATTEMPT_S + backoff.next_delay()
    return t


def simulate(gateways: int, outage_s: float, cap_s: float, seed: int) -> dict[str, float]:
    """Latencies after the return and the peak connect rate for one outage."""
    starts = []
    for i in range(gateways):
        rng = random.Random(seed * 1_000_003 + i)
        b = reconnect_backoff(rng) if cap_s == RECONNECT_CAP_S else Backoff(
            RECONNECT_BASE_S, cap_s, rng, jitter=1.0)
        starts.append(first_attempt_after(outage_s, b))
    starts.sort()
    late = [s - outage_s for s in starts]
    peak = max(bisect.bisect_left(starts, s + 0.1) - k for k, s in enumerate(starts))
    return {"median_s": statistics.median(late), "p99_s": late[int(0.99 * (len(late) - 1))],
            "max_s": late[-1], "peak_per_s": peak * 10.0,
            "spread_s": late[-1] - late[0]}


async def live_once(b: Mosquitto, outage_s: float) -> float:
    """Stop the broker for ``outage_s``; seconds from its return to the uplink connected."""
    up = Uplink(parse_broker_url(b.url), "bench-gw", 1, "bench", SystemClock(),
                store=MemoryStore())
    task = asyncio.create_task(up.run())
    try:
        await asyncio.wait_for(up.connected.wait(), 10)
        await asyncio.to_thread(b.stop)
        while up.connected.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(b.start)   # returns once the broker accepts connections
        back = time.monotonic()
        await asyncio.wait_for(up.connected.wait(), 60)
        return time.monotonic() - back
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def main() -> int:
    """Print the simulated spread and, with --live, the measured reconnect times."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--gateways", type=int, default=10_000)
    ap.add_argument("--outage-s", type=float, nargs="+", default=[10.0, 45.0, 300.0])
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--live", type=int, default=0, help="live runs against mosquitto")
    ap.add_argument("--live-outage-s", type=float, default=10.0)
    args = ap.parse_args()
    print(f"simulated: {args.gateways} gateways, seed {args.seed}")
    for cap in (RECONNECT_CAP_S, 30.0):
        for outage in args.outage_s:
            f = simulate(args.gateways, outage, cap, args.seed)
            print(f"  cap {cap:4.0f} s, outage {outage:5.0f} s: back after the return in median "
                  f"{f['median_s']:.2f} s, p99 {f['p99_s']:.2f} s, max {f['max_s']:.2f} s; "
                  f"peak {f['peak_per_s']:.0f} connects/s (busiest 100 ms), spread "
                  f"{f['spread_s']:.2f} s")
    if args.live:
        b = Mosquitto()
        b.start()
        try:
            took = [asyncio.run(live_once(b, args.live_outage_s)) for _ in range(args.live)]
        finally:
            b.close()
        print(f"live: {args.live} outages of {args.live_outage_s:g} s: back "
              f"{', '.join(f'{t:.2f}' for t in took)} s after the broker; median "
              f"{statistics.median(took):.2f} s, max {max(took):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
