"""Stop benchmark: how long SIGTERM takes to stop a polling gateway, and whether it always does.

Everything is the real thing as subprocesses: a private mosquitto, one ``edge-agent simulate``
serving every device on a TCP port of its own, and a fresh ``edge-agent run`` per try. Each try
lets the agent poll for about a second, sends SIGTERM a few milliseconds after a poll mark
(when the replies of every bus arrive together) and checks the exit: within the agent's stop
budget, status 0, no step forced, and every batch the agent built acknowledged by the broker or
in its spool. Prints one line per try and the summary: stops in time / tries and the time per
stop (median, 90th percentile, max). Benchmarks print figures; this one never fails. Usage:

    .venv/bin/python bench/stop_bench.py [--tries 100] [--devices 40] [--poll-s 0.2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, not the repository root where the
# tests' support package lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.runtime.agent import stop_budget_s
from edge_agent.tools.devbroker import Mosquitto
from tests.support.brokers import free_ports
from tests.support.stopkit import Batches, Try, sigterm_try, tcp_simulator, tcp_site


def main() -> int:
    """Run the tries and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--tries", type=int, default=100)
    ap.add_argument("--devices", type=int, default=40)
    ap.add_argument("--poll-s", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    deadline_s = stop_budget_s(durable=True) + 2.0
    rng = random.Random(args.seed)
    tries: list[Try] = []
    with tempfile.TemporaryDirectory(prefix="edge-stop-bench-") as work:
        tmp = Path(work)
        ports = free_ports(args.devices)
        sim_site = tcp_site(tmp, args.devices, poll_s=args.poll_s, ports=ports, name="sim.toml")
        broker = Mosquitto()
        broker.start()
        data = Batches(broker.port)
        try:
            with tcp_simulator(sim_site, tmp / "sim.log"):
                for i in range(args.tries):
                    t = sigterm_try(i, tmp, ports, broker.url, data, rng, poll_s=args.poll_s,
                                    deadline_s=deadline_s)
                    tries.append(t)
                    took = f"{t.took_s:.2f} s" if t.took_s is not None else "KILLED"
                    print(f"try {i + 1:3d}: stop {took}, last window {t.last_window} readings"
                          f"{'' if not t.problems else ': ' + t.problems[0]}", flush=True)
        finally:
            data.close()
            broker.stop()
    times = sorted(t.took_s for t in tries if t.took_s is not None)
    good = sum(1 for t in tries if t.took_s is not None and not t.problems)
    print(f"\n{args.devices} devices polled every {args.poll_s:g} s: {good}/{len(tries)} stops "
          f"within the {deadline_s:g} s deadline with every batch kept")
    if times:
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        print(f"time per stop: median {statistics.median(times):.2f} s, p90 {p90:.2f} s, "
              f"max {times[-1]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
