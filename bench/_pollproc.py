"""Process shell of the poll-overhead benchmark: simulators, the agent, and what we sample.

The agent and the simulators are the real commands (``python -m edge_agent run|simulate``) as
subprocesses. The agent's counters come from its own health messages (one per second), and the
agent's CPU times are sampled by the MQTT callback at the moment each health message arrives,
so counters and CPU cover the same window (off by the broker's delivery latency only).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.tools.procs import spawn_until_ready, stop_process

PY = [sys.executable, "-m", "edge_agent"]


@contextlib.contextmanager
def simulator(site: Path, log_path: Path, control: Path | None = None,
              seed: int = 1) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``edge-agent simulate SITE`` and yield once it printed 'simulator ready'."""
    args = [*PY, "simulate", str(site), "--seed", str(seed)]
    if control is not None:
        args += ["--control", str(control)]
    # a big site takes a while to open hundreds of servers
    proc = spawn_until_ready(args, log_path, "simulator ready", timeout_s=120,
                             what=f"simulator {site}")
    try:
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def agent(site: Path, broker_url: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``edge-agent run SITE --broker URL`` with its output in ``log_path``."""
    proc = spawn_until_ready([*PY, "run", str(site), "--broker", broker_url], log_path)
    try:
        yield proc
    finally:
        stop_process(proc)


def cpu_s(p: psutil.Process) -> float:
    """User + system CPU seconds of ``p`` so far."""
    t = p.cpu_times()
    return float(t.user + t.system)


def vm_hwm_bytes(pid: int) -> int:
    """VmHWM (peak resident set over the process's life) from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sample:
    """One health message of the agent with the agent's CPU time taken when it arrived."""

    mono: float
    cpu_s: float
    health: dict[str, Any]

    @property
    def requests(self) -> int:
        """Modbus requests sent on all buses since the agent started."""
        buses = self.health.get("buses", {})
        return sum(int(b["requests"]) for b in buses.values())

    @property
    def timeouts(self) -> int:
        """Requests without a valid reply on all buses."""
        return sum(int(b["timeouts"]) for b in self.health.get("buses", {}).values())

    @property
    def missed_slots(self) -> int:
        """Poll slots dropped because a bus ran a whole interval late, over all devices."""
        return sum(int(d["missed_slots"]) for d in self.health.get("devices", {}).values())

    def uplink(self, key: str) -> int:
        """A counter of the health document's ``uplink`` part (published_batches, ...)."""
        return int(self.health["uplink"][key])

    def reading(self, key: str) -> int:
        """A counter of the health document's ``readings`` part (polled, sent, ...)."""
        return int(self.health["readings"][key])


@dataclass
class HealthWatch:
    """Subscribes to the agent's health topic; samples the agent's CPU at each message."""

    port: int
    pid: int
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)
        self._cond = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", self.port)
        self._client.subscribe("edge/gw-bench/health", qos=0)
        self._client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        mono, cpu = time.monotonic(), cpu_s(self._proc)
        sample = Sample(mono, cpu, json.loads(msg.payload))
        with self._cond:
            self.samples.append(sample)
            self._cond.notify_all()

    def next_sample(self, timeout_s: float = 30.0) -> Sample:
        """Wait for the next health message and return its sample."""
        with self._cond:
            n = len(self.samples)
            if not self._cond.wait_for(lambda: len(self.samples) > n, timeout_s):
                raise RuntimeError("no health message from the agent within "
                                   f"{timeout_s} s (is it running? see its log)")
            return self.samples[-1]

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.loop_stop()
        self._client.disconnect()


def sim_requests(control: Path) -> int:
    """Requests the simulator behind ``control`` has received, summed over its devices."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(control))
        sock.sendall(b'{"cmd": "stats"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return sum(int(d["requests"]) for d in json.loads(buf)["devices"])


@dataclass
class Window:
    """What one steady measuring window of the agent gave.

    ``wall_s``, ``cpu_s`` and ``requests`` cover the grid-aligned window (requests counted by
    the simulators); the other counts are over the health messages nearest to it and are
    used as rates and ratios (readings per request, sent per polled).
    """

    wall_s: float
    cpu_s: float
    requests: int
    health_s: float
    h_requests: int
    polled: int
    sent: int
    timeouts: int
    missed_slots: int
    batches: int                   # data batches PUBACKed by the broker
    batch_bytes: int
    dropped_batches: int
    rss_peak_bytes: int
    vm_hwm_bytes: int
    load1: float
    others_cpu: dict[str, float]   # CPU share of the other processes (simulators, broker)

    @property
    def cpu_share(self) -> float:
        """Agent CPU seconds per wall second (1.0 = one core)."""
        return self.cpu_s / self.wall_s

    @property
    def readings(self) -> float:
        """Readings polled in the aligned window (its requests x readings per request)."""
        return self.requests * self.polled / max(self.h_requests, 1)

    @property
    def sent_readings(self) -> float:
        """Readings sent in the aligned window (polled x the sent/polled ratio)."""
        return self.readings * self.sent / max(self.polled, 1)


def _sleep_to_phase(grid_s: float) -> float:
    """Sleep until half-way between two poll marks (the agent is idle there); return then."""
    now = time.time()
    target = (now // grid_s + 1) * grid_s + grid_s / 2
    time.sleep(target - now)
    return time.monotonic()


def measure(pid: int, watch: HealthWatch, controls: list[Path], warmup_s: float,
            window_s: float, grid_s: float, others: dict[str, int]) -> Window:
    """Wait ``warmup_s``, then measure the agent over a whole number of poll intervals.

    Both edges of the window lie half-way between two poll marks, so the window holds a whole
    number of poll bursts (edges on health messages would cut a burst at a random point). RSS
    is sampled every 0.2 s; ``others`` (name -> pid) get their CPU share over the window, to
    show whether the simulators or the broker were the bottleneck.
    """
    proc = psutil.Process(pid)
    other_procs = {name: psutil.Process(opid) for name, opid in others.items()}
    time.sleep(warmup_s)
    first = watch.next_sample()
    intervals = max(1, round(window_s / grid_s))
    t0 = _sleep_to_phase(grid_s)
    cpu0, req0 = cpu_s(proc), sum(sim_requests(c) for c in controls)
    other_cpu0 = {name: cpu_s(p) for name, p in other_procs.items()}
    rss_peak = 0
    end = t0 + intervals * grid_s - grid_s / 2
    while time.monotonic() < end:
        rss_peak = max(rss_peak, int(proc.memory_info().rss))
        time.sleep(0.2)
    t1 = _sleep_to_phase(grid_s)
    cpu1, req1 = cpu_s(proc), sum(sim_requests(c) for c in controls)
    wall = t1 - t0
    others_cpu = {name: (cpu_s(p) - other_cpu0[name]) / wall for name, p in other_procs.items()}
    last = watch.next_sample()
    return Window(
        wall_s=wall, cpu_s=cpu1 - cpu0, requests=req1 - req0,
        health_s=last.mono - first.mono, h_requests=last.requests - first.requests,
        polled=last.reading("polled") - first.reading("polled"),
        sent=last.reading("sent") - first.reading("sent"),
        timeouts=last.timeouts - first.timeouts,
        missed_slots=last.missed_slots - first.missed_slots,
        batches=last.uplink("published_batches") - first.uplink("published_batches"),
        batch_bytes=last.uplink("published_bytes") - first.uplink("published_bytes"),
        dropped_batches=last.uplink("dropped_batches") - first.uplink("dropped_batches"),
        rss_peak_bytes=max(rss_peak, int(proc.memory_info().rss)),
        vm_hwm_bytes=vm_hwm_bytes(pid), load1=os.getloadavg()[0], others_cpu=others_cpu,
    )
