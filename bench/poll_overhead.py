"""Poll-overhead benchmark: the agent's CPU per Modbus request and per reading, PTY bus rate,
and CPU share and peak memory while polling 500 simulated TCP devices of 30 points each second.

Everything is the real thing run as subprocesses: a private mosquitto, ``edge-agent simulate``
(several processes for big sites, each serving a slice of the devices) and ``edge-agent run``.
Figures are medians over runs (a fresh agent per run), each measured over a steady window after
a warm-up, with the 1-minute load average beside it (the machine is shared). Benchmarks print
figures and never fail on a timing. Usage:

    .venv/bin/python bench/poll_overhead.py [--quick] [--runs 3] [--only tcp,pty,site]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the repository root too: the port helper is the test harness's (tests.support.stopkit)
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from _pollproc import HealthWatch, Window, agent, cpu_s, measure, simulator
from _pollsite import (
    SiteOptions,
    profile_registers,
    pty_site_text,
    split,
    tcp_site_text,
    write_profile,
)

from edge_agent.config.loader import load_config
from edge_agent.drivers.bus import SerialBus
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.drivers.model import Table
from edge_agent.tools.devbroker import Mosquitto
from tests.support.brokers import free_ports

MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure."""

    runs: int
    warmup_s: float
    window_s: float
    devices: int
    sim_procs: int
    tmp: Path


def median_of(windows: list[Window], f: Callable[[Window], float]) -> float:
    """Median of ``f`` over the runs."""
    return statistics.median(f(w) for w in windows)


def loads(windows: list[Window]) -> str:
    """The 1-minute load averages seen at the end of each run."""
    return "load " + "/".join(f"{w.load1:.2f}" for w in windows)


@contextmanager
def tcp_site(s: Settings, broker: Mosquitto, name: str, n_devices: int, n_points: int,
             opts: SiteOptions, sim_procs: int) -> Iterator[tuple[Path, Bench]]:
    """Serve ``n_devices`` one-device TCP buses from ``sim_procs`` simulators; yield the site."""
    work = s.tmp / name
    work.mkdir()
    profile = write_profile(work, n_points)
    devices = [(f"d{i:03d}", port) for i, port in enumerate(free_ports(n_devices), 1)]
    site = work / "site.toml"
    site.write_text(tcp_site_text(devices, profile, opts))
    with ExitStack() as stack:
        b = Bench(broker, opts.poll_s, [], {"broker": broker.proc.pid} if broker.proc else {})
        for k, part in enumerate(split(devices, sim_procs)):
            part_site = work / f"sim{k}.toml"
            part_site.write_text(tcp_site_text(part, profile, opts))
            control = work / f"sim{k}.sock"
            proc = stack.enter_context(simulator(part_site, work / f"sim{k}.log", control))
            b.controls.append(control)
            b.others[f"sim{k}"] = proc.pid
        yield site, b


@dataclass
class Bench:
    """The processes around a measured agent: broker, simulators (control sockets), grid."""

    broker: Mosquitto
    grid_s: float
    controls: list[Path]
    others: dict[str, int]


def run_agent(s: Settings, b: Bench, site: Path, log: Path) -> Window:
    """One fresh agent on ``site``: warm up, measure one window, stop it."""
    with agent(site, b.broker.url, log) as proc:
        watch = HealthWatch(b.broker.port, proc.pid)
        try:
            w = measure(proc.pid, watch, b.controls, s.warmup_s, s.window_s, b.grid_s,
                        b.others)
        finally:
            watch.close()
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited early: {log.read_text()[-3000:]}")
    return w


def runs(s: Settings, b: Bench, site: Path, label: str) -> list[Window]:
    """``s.runs`` measured runs of a fresh agent each; prints one line per run."""
    out = []
    for i in range(s.runs):
        w = run_agent(s, b, site, site.parent / f"agent{i}.log")
        sims = sum(v for k, v in w.others_cpu.items() if k.startswith("sim"))
        print(f"  {label} run {i + 1}: {w.wall_s:.1f} s, agent cpu {w.cpu_share:.3f} core, "
              f"{w.requests / w.wall_s:.0f} req/s, {w.readings / w.wall_s:.0f} polled/s, "
              f"{w.sent_readings / w.wall_s:.0f} sent/s, {w.batches / w.health_s:.1f} batches/s "
              f"({w.batch_bytes / max(w.sent, 1):.2f} B/reading, {w.dropped_batches} dropped), "
              f"timeouts {w.timeouts}, missed slots "
              f"{w.missed_slots}, rss peak {w.rss_peak_bytes / MB:.1f} MB, "
              f"simulators {sims:.2f} core, broker {w.others_cpu.get('broker', 0):.2f} core, "
              f"load {w.load1:.2f}", flush=True)
        out.append(w)
    return out


def bench_tcp_costs(s: Settings, broker: Mosquitto, quick: bool) -> None:
    """CPU per request (1-point devices) and per reading (30-point devices) over Modbus TCP."""
    n_devices, poll_s = (10, 0.1) if quick else (20, 0.1)
    opts = SiteOptions(state_dir=s.tmp / "state", poll_s=poll_s, max_silence_s=poll_s / 2)
    print(f"\n[tcp] {n_devices} TCP devices (one bus each) polled every {poll_s} s, "
          f"2 simulator processes; every reading sent (max_silence_s < poll interval)")
    results: dict[int, list[Window]] = {}
    for n_points in (1, 30):
        with tcp_site(s, broker, f"tcp{n_points}", n_devices, n_points, opts, 2) as (site, b):
            results[n_points] = runs(s, b, site, f"{n_points}-point")
    one, thirty = results[1], results[30]
    us_req_1 = median_of(one, lambda w: 1e6 * w.cpu_s / w.requests)
    us_req_30 = median_of(thirty, lambda w: 1e6 * w.cpu_s / w.requests)
    us_reading_30 = median_of(thirty, lambda w: 1e6 * w.cpu_s / w.sent_readings)
    print(f"  agent CPU per request, 1-point device ({profile_registers(1)} registers, "
          f"1 reading): "
          f"{us_req_1:.0f} µs  ({loads(one)})")
    print(f"  agent CPU per request, 30-point device ({profile_registers(30)} registers, "
          f"30 readings): {us_req_30:.0f} µs  ({loads(thirty)})")
    print(f"  agent CPU per sent reading, 30-point device: {us_reading_30:.1f} µs; "
          f"marginal per extra reading: {(us_req_30 - us_req_1) / 29:.1f} µs")


async def _transport_loop(bus: SerialBus, duration_s: float) -> tuple[int, int, float]:
    """Read 1 register of unit 1 back to back for ``duration_s``: (ok, failed, cpu s)."""
    t = BusTransport(bus)
    ok = failed = 0
    me = psutil.Process()
    try:
        for _ in range(20):  # warm-up: open the port and settle
            await t.read(1, Table.HOLDING_REGISTER, 0, 1)
        cpu0, end = cpu_s(me), time.monotonic() + duration_s
        while time.monotonic() < end:
            reply = await t.read(1, Table.HOLDING_REGISTER, 0, 1)
            ok, failed = (ok + 1, failed) if reply.ok else (ok, failed + 1)
        return ok, failed, cpu_s(me) - cpu0
    finally:
        await t.close()


def bench_pty(s: Settings, broker: Mosquitto, quick: bool) -> None:
    """Requests/s on a zero-delay PTY: through the agent, and with BusTransport in a loop."""
    work = s.tmp / "pty"
    work.mkdir()
    profile = write_profile(work, 1)
    n_devices = 200
    opts = SiteOptions(state_dir=s.tmp / "state", poll_s=0.05, max_silence_s=0.025)
    site = work / "site.toml"
    site.write_text(pty_site_text(work / "bus", n_devices, profile, opts))
    print(f"\n[pty] socat PTY pair, inter_frame_gap_ms = 0, {n_devices} one-point devices "
          f"polled every 0.05 s (demand {n_devices / 0.05:.0f} req/s, more than the bus carries)")
    control = work / "sim.sock"
    with simulator(site, work / "sim.log", control) as sim:
        b = Bench(broker, opts.poll_s, [control],
                  {"sim": sim.pid, **({"broker": broker.proc.pid} if broker.proc else {})})
        through_agent = runs(s, b, site, "agent on PTY")
        direct = []
        bus = load_config(site).buses["pty"]
        assert isinstance(bus, SerialBus)
        sim_proc = psutil.Process(sim.pid)
        for i in range(s.runs):
            sim0, t0 = cpu_s(sim_proc), time.monotonic()
            ok, failed, cpu = asyncio.run(_transport_loop(bus, s.window_s))
            wall = time.monotonic() - t0
            load = os.getloadavg()[0]
            direct.append((ok / s.window_s, 1e6 * cpu / max(ok, 1), load))
            print(f"  BusTransport loop run {i + 1}: {ok / s.window_s:.0f} req/s, {failed} failed, "
                  f"bench-process CPU {1e6 * cpu / max(ok, 1):.0f} µs/request, simulator "
                  f"{(cpu_s(sim_proc) - sim0) / wall:.2f} core, load {load:.2f}", flush=True)
    rate = median_of(through_agent, lambda w: w.requests / w.wall_s)
    print(f"  requests/s through the agent (scheduler + transport): {rate:.0f}, agent CPU "
          f"{median_of(through_agent, lambda w: 1e6 * w.cpu_s / w.requests):.0f} µs/request  "
          f"({loads(through_agent)})")
    print(f"  requests/s with BusTransport alone in a tight loop: "
          f"{statistics.median(d[0] for d in direct):.0f}, "
          f"{statistics.median(d[1] for d in direct):.0f} µs CPU/request  "
          f"(load {'/'.join(f'{d[2]:.2f}' for d in direct)})")


def bench_site(s: Settings, broker: Mosquitto) -> None:
    """The goal: ``s.devices`` TCP devices x 30 points every second; CPU share and peak RSS."""
    # window_s and max_readings are the config defaults (5 s, 5000): batches of up to 5000.
    opts = SiteOptions(state_dir=s.tmp / "state", poll_s=1.0, max_silence_s=0.5, window_s=5.0)
    n = s.devices
    print(f"\n[site] {n} TCP devices (one bus and port each) x 30 points every 1 s = "
          f"{30 * n} readings/s, {s.sim_procs} simulator processes; every reading sent")
    with tcp_site(s, broker, "site", n, 30, opts, s.sim_procs) as (site, b):
        ws = runs(s, b, site, f"{n} devices")
    share = median_of(ws, lambda w: w.cpu_share)
    print(f"  agent CPU share: {share:.3f} of one core (goal <= 0.5)  ({loads(ws)})")
    print(f"  agent CPU per polled reading: "
          f"{median_of(ws, lambda w: 1e6 * w.cpu_s / max(w.readings, 1)):.1f} µs, per request "
          f"{median_of(ws, lambda w: 1e6 * w.cpu_s / max(w.requests, 1)):.0f} µs")
    print(f"  readings/s polled {median_of(ws, lambda w: w.readings / w.wall_s):.0f}, sent "
          f"{median_of(ws, lambda w: w.sent_readings / w.wall_s):.0f} (target {30 * n})")
    print(f"  peak RSS over the window: {median_of(ws, lambda w: w.rss_peak_bytes) / MB:.1f} MB, "
          f"VmHWM: {median_of(ws, lambda w: w.vm_hwm_bytes) / MB:.1f} MB (goal <= 60 MB)")


def _git_state() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "edge_agent", "drivers", "codecs", "fastpath"],
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the chosen parts, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one short run per figure (warm-up 5 s, window 10 s)")
    ap.add_argument("--runs", type=int, default=None, help="runs per figure (default 3)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    ap.add_argument("--window", type=float, default=None, help="seconds measured per run")
    ap.add_argument("--devices", type=int, default=500, help="devices of the site run")
    ap.add_argument("--sim-procs", type=int, default=4,
                    help="simulator processes serving the site run's devices")
    ap.add_argument("--only", default="tcp,pty,site", help="comma list of tcp, pty, site")
    a = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the broker, simulators and agent are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parts = set(a.only.split(","))
    unknown = parts - {"tcp", "pty", "site"}
    if unknown:
        ap.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="poll-bench-") as tmp:
        s = Settings(runs=a.runs or (1 if a.quick else 3),
                     warmup_s=a.warmup if a.warmup is not None else (5.0 if a.quick else 10.0),
                     window_s=a.window if a.window is not None else (10.0 if a.quick else 30.0),
                     devices=a.devices, sim_procs=a.sim_procs, tmp=Path(tmp))
        (s.tmp / "state").mkdir()
        print(f"poll_overhead: code {_git_state()}; python {sys.version.split()[0]}; "
              f"{os.cpu_count()} cpus; load {os.getloadavg()[0]:.2f}; {s.runs} run(s), "
              f"warm-up {s.warmup_s:.0f} s, window {s.window_s:.0f} s", flush=True)
        broker = Mosquitto()
        broker.start()
        try:
            if "tcp" in parts:
                bench_tcp_costs(s, broker, a.quick)
            if "pty" in parts:
                bench_pty(s, broker, a.quick)
            if "site" in parts:
                bench_site(s, broker)
        finally:
            broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
