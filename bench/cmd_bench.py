"""Command benchmark on the demo site: latency from ``cmd send`` to ``cmd-result``, and how much
a command delays the bus's polls.

Everything is the real thing: a private mosquitto, ``edge-agent simulate`` on a copy of
configs/demo.toml (its TCP port and serial links moved into a temporary directory), the demo's
operations centre (``edge_agent.tools.demo_fleet``: keys, a root delegating an operator, ``edge-
fleet serve``, the gateway enrolled) and ``edge-agent run``.

1. Poll delay (``--poll-seconds``, before the agent starts, since a serial port has one owner):
   the demo's RS-485 bus (``rs485-1``: meter, two lamps, pipe sensor, environment monitor) is
   polled in this process by the product's own ``BusScheduler`` over the simulator's PTY, first
   with no command, then with a dim command (write + read-back, ``verify=True``) every
   ``--every-s``. Each poll's start is compared with its grid mark: the lateness of polls (median,
   p99, max) with and without commands, and the bus time each command took.
2. Latency (``--commands`` of them, sequential): each dim command of lamp-101 (alternately 30 and
   70 %) is signed with the operator key, published on ``cmd/{id}`` and timed until its
   ``accepted`` and its ``done`` answer arrive on ``cmd-result/{id}`` (what ``edge-fleet cmd send``
   does after it has started; its process start-up is not counted). Median and p99.
3. ``--cli`` whole ``edge-fleet cmd send`` runs, timed from the process start to its exit.

Benchmarks print figures; this one never fails on timing. Usage:

    .venv/bin/python bench/cmd_bench.py [--commands 100] [--poll-seconds 60] [--cli 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.protocol.broker import no_delay
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.command import command_signed, encode_command
from edge_agent.protocol.keys import load_private
from edge_agent.runtime.poller import DeviceState
from edge_agent.runtime.scheduler import BusScheduler
from edge_agent.runtime.writes import WriteJob, WriteResult
from edge_agent.tools.demo_fleet import start_demo_fleet
from edge_agent.tools.devbroker import Mosquitto
from edge_agent.tools.procs import spawn_until_ready, stop_process
from tests.support.brokers import free_port
from tests.support.sitekit import control

ROOT = Path(__file__).resolve().parents[1]
LAMP = "lamp-101"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def demo_copy(tmp: Path) -> Path:
    """configs/demo.toml with its TCP port, serial links and state dir in ``tmp``."""
    text = (ROOT / "configs" / "demo.toml").read_text()
    text = re.sub(r"port = 15020", f"port = {free_port()}", text)
    text = text.replace("/tmp/edge-agent-demo/", f"{tmp}/")
    text = text.replace('state_dir = "../run/demo-state"', f'state_dir = "{tmp}/state"')
    path = tmp / "demo.toml"
    path.write_text(text)
    return path


class TimedScheduler(BusScheduler):
    """The product's scheduler, noting how late each poll started after its grid mark."""

    lateness_ms: list[float]
    bus_ms: list[float]

    async def write_now(self, job: WriteJob) -> WriteResult:
        started = time.perf_counter()
        try:
            return await super().write_now(job)
        finally:
            self.bus_ms.append((time.perf_counter() - started) * 1000)

    async def poll_device(self, state: DeviceState, points: Any, ts_ms: int,
                          key: tuple[int, ...] | None = None) -> None:
        self.lateness_ms.append(self.clock.now() * 1000 - ts_ms)
        await super().poll_device(state, points, ts_ms, key)


async def poll_delay(cfg: SiteConfig, seconds: float, every_s: float) -> None:
    """Part 1: lateness of polls on rs485-1 without and with commands, and bus time per command."""
    bus = "rs485-1"
    for with_commands in (False, True):
        transport = BusTransport(cfg.buses[bus])
        sched = TimedScheduler(transport, cfg.devices_on(bus), lambda _r: None, SystemClock(),
                               max_gap=cfg.max_gap)
        sched.lateness_ms, sched.bus_ms = [], []
        task = asyncio.create_task(sched.run())
        command_s: list[float] = []
        deadline = time.monotonic() + seconds
        level = 30
        while time.monotonic() < deadline:
            await asyncio.sleep(every_s)
            if with_commands:
                level = 100 - level
                t0 = time.monotonic()
                result = await sched.write(LAMP, "dim_command", level, verify=True)
                command_s.append(time.monotonic() - t0)
                assert result.ok, result
        sched.stop()
        await task
        await transport.close()
        late = sched.lateness_ms
        label = f"with a dim command every {every_s:.1f} s" if with_commands else "no commands"
        print(f"polls on {bus} ({label}): {len(late)} polls started "
              f"median {statistics.median(late):.1f} ms, p99 {pct(late, 99):.1f} ms, max "
              f"{max(late):.1f} ms after their grid mark", flush=True)
        if command_s:
            ms = [s * 1000 for s in command_s]
            held = sched.bus_ms
            print(f"  each command held the bus (write, read-back) median "
                  f"{statistics.median(held):.1f} ms, p99 {pct(held, 99):.1f} ms, max "
                  f"{max(held):.1f} ms; from queued to done median {statistics.median(ms):.1f} "
                  f"ms, p99 {pct(ms, 99):.1f} ms ({len(ms)} commands)", flush=True)


async def latency(broker: Mosquitto, cfg: SiteConfig, key_path: Path, roots: list[Any],
                  n: int) -> None:
    """Part 2: time from signing to the accepted and the done answer, ``n`` commands."""
    key = load_private(key_path)
    prefix, gw = cfg.mqtt.topic_prefix, cfg.gateway_id
    accepted_ms: list[float] = []
    done_ms: list[float] = []
    bad: list[str] = []
    async with aiomqtt.Client("127.0.0.1", broker.port,
                              identifier=f"fleet-bench-{secrets.token_hex(3)}") as client:
        no_delay(client)
        await client.subscribe(f"{prefix}/{gw}/cmd-result/+", qos=1)
        messages = client.messages
        for i in range(n):
            cid = f"bench-{secrets.token_hex(4)}-{i}"
            t0 = time.perf_counter()
            now = int(time.time())
            signed = command_signed(cid, "dim", {"lamps": [LAMP], "level_pct": 30 + 40 * (i % 2)},
                                    issued=now, expires=now + 600, gateways=[gw])
            await client.publish(f"{prefix}/{gw}/cmd/{cid}", encode_command(signed, [key], roots),
                                 qos=1)
            while True:
                msg = await asyncio.wait_for(anext(messages), 30)
                doc = json.loads(bytes(msg.payload))
                if doc.get("id") != cid:
                    continue
                took = (time.perf_counter() - t0) * 1000
                if doc["status"] == "accepted":
                    accepted_ms.append(took)
                    continue
                done_ms.append(took)
                if doc["status"] != "done":
                    bad.append(f"{cid}: {doc['status']} {doc.get('reason')}")
                break
    print(f"latency of {n} dim commands of {LAMP} (sign, publish, answer on cmd-result):",
          flush=True)
    for name, values in (("accepted", accepted_ms), ("done (read back)", done_ms)):
        print(f"  {name}: median {statistics.median(values):.1f} ms, p99 {pct(values, 99):.1f} ms,"
              f" max {max(values):.1f} ms", flush=True)
    print(f"  {n - len(bad)} of {n} done" + (f"; first failure: {bad[0]}" if bad else ""))


def cli_runs(broker: Mosquitto, cfg: SiteConfig, db: str, key: Path, n: int) -> None:
    """Part 3: ``n`` whole ``edge-fleet cmd send`` runs, process start-up included."""
    took: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "edge_agent.fleet.cli", "cmd", "send", "--db", db,
             "--gateway", cfg.gateway_id, "dim", str(30 + 40 * (i % 2)), "--lamps", LAMP,
             "--key", str(key), "--broker", broker.url], capture_output=True, text=True,
            timeout=60)
        took.append((time.perf_counter() - t0) * 1000)
        if done.returncode != 0:
            print(f"  cmd send failed: {done.stdout} {done.stderr}")
    print(f"{n} whole `edge-fleet cmd send` runs (start-up, sign, publish, both answers): "
          f"median {statistics.median(took):.0f} ms, max {max(took):.0f} ms", flush=True)


def main() -> int:
    """Run both parts and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--commands", type=int, default=100)
    ap.add_argument("--poll-seconds", type=float, default=60.0)
    ap.add_argument("--every-s", type=float, default=1.0)
    ap.add_argument("--cli", type=int, default=10, help="whole `edge-fleet cmd send` runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-cmd-bench-") as work:
        tmp = Path(work)
        site = demo_copy(tmp)
        cfg = load_config(site)
        broker = Mosquitto()
        broker.start()
        exe = [sys.executable, "-m", "edge_agent"]
        procs = []
        try:
            sock = tmp / "sim.sock"

            def answers() -> bool:
                if not (sock.exists() and (tmp / "rs485-1").exists()):
                    return False
                try:
                    control(sock, {"cmd": "freeze", "on": False})
                except OSError:
                    return False  # the socket exists a moment before it is listened on
                return True

            procs.append(spawn_until_ready(
                [*exe, "simulate", str(site), "--control", str(sock)], tmp / "sim.log",
                answers, timeout_s=20, what="the simulator"))
            if args.poll_seconds > 0:
                asyncio.run(poll_delay(cfg, args.poll_seconds, args.every_s))
            fleet = start_demo_fleet(cfg, broker.url, tmp / "fleet")
            procs.append(fleet.serve)
            from edge_agent.fleet.registry import Registry

            registry = Registry(fleet.db)
            roots = registry.roots()
            registry.close()
            procs.append(spawn_until_ready([*exe, "run", str(site), "--broker", broker.url],
                                           tmp / "agent.log"))
            time.sleep(3.0)  # connected and subscribed: its first polls have gone out
            if args.commands > 0:
                asyncio.run(latency(broker, cfg, fleet.operator_key, roots, args.commands))
            if args.cli > 0:
                cli_runs(broker, cfg, fleet.db, fleet.operator_key, args.cli)
        finally:
            for proc in reversed(procs):
                stop_process(proc)
            broker.close()
    print("(machine shared with other work; figures vary from run to run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
