"""The bench: a TOML description of a line and its devices, brought up simulated or found real.

A bench file::

    [bench]
    name = "simulated"
    kind = "simulated"          # or "real"
    seed = 20261128             # simulated: value models and line faults

    [line]
    port = "/dev/serial/by-id/usb-FTDI_...-port0"   # real benches only
    baudrate = 19200
    parity = "N"                # simulated benches: N (PTYs refuse parity; pacing honours it)
    stopbits = 1
    turnaround_ms = 5           # simulated: every device's reply delay after t3.5

    [devices.meter]
    unit_id = 17
    profile = "energy_meter"
    # real benches: points whose value is known and fixed, to check what is read
    expect = { serial_number = 1234567 }

A simulated bench runs ``edge-agent simulate`` with every device on its own PTY pair (its
"drop cable") and the line emulator (``linemu.py``) joining the drops onto one paced line;
tests open ``bench.port`` like a USB RS-485 adapter. A real bench only names the port: tests
that need the emulator's fault injection or the simulator's registers are skipped there.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.drivers.bus import Parity, SerialBus
from edge_agent.drivers.profile import DeviceProfile, load_profile
from edge_agent.drivers.sim import sim_control_sync
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.tomlcheck import Checker, load_toml
from edge_agent.tools.procs import spawn_until_ready, stop_process

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_BENCH = HERE / "benches" / "simulated.toml"
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


@dataclass(frozen=True, slots=True)
class BenchDevice:
    """A device on the bench line."""

    name: str
    unit_id: int
    profile: DeviceProfile
    profile_ref: str
    expect: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """A parsed bench file."""

    source: Path
    name: str
    kind: str
    seed: int
    port: str | None
    baudrate: int
    parity: Parity
    stopbits: int
    turnaround_ms: float
    devices: tuple[BenchDevice, ...]

    @property
    def simulated(self) -> bool:
        """True for the emulator-and-simulator bench."""
        return self.kind == "simulated"


def parse_bench(path: Path) -> BenchSpec:
    """Read a bench file; ConfigError names every problem."""
    raw = load_toml(path)
    chk = Checker(str(path))
    chk.keys(raw, "", ("bench", "line", "devices"))
    head = chk.get(raw, "", "bench", dict, {})
    chk.keys(head, "bench", ("name", "kind", "seed"))
    kind = chk.get(head, "bench", "kind", str, "simulated",
                   check=lambda v: v in ("simulated", "real"), expected="'simulated' or 'real'")
    line = chk.get(raw, "", "line", dict, {})
    chk.keys(line, "line", ("port", "baudrate", "parity", "stopbits", "turnaround_ms"))
    port = chk.get(line, "line", "port", str, None)
    if kind == "real" and not port:
        chk.note("line.port", "missing; a real bench needs the serial port of its line")
    parity = chk.choice(line, "line", "parity", Parity, ["N", "E", "O"], default=Parity.NONE)
    if kind == "simulated" and parity is not Parity.NONE:
        chk.problem("line.parity", parity.value, "'N' on a simulated bench (Linux PTYs refuse "
                    "even and odd parity)")
    devices: list[BenchDevice] = []
    for name, d in chk.get(raw, "", "devices", dict, {}).items():
        p = f"devices.{name}"
        if not isinstance(d, dict):
            chk.problem(p, d, "a table with unit_id and profile")
            continue
        chk.keys(d, p, ("unit_id", "profile", "expect"))
        unit = chk.get(d, p, "unit_id", int, check=lambda v: 1 <= v <= 247,
                       expected="a unit id from 1 to 247")
        ref = chk.get(d, p, "profile", str)
        expect = chk.get(d, p, "expect", dict, {})
        if unit is None or ref is None:
            continue
        try:
            profile = load_profile(ref, path.parent)
        except ConfigError as exc:
            for problem in exc.problems:
                chk.note(f"{p}.profile", problem)
            continue
        devices.append(BenchDevice(name, unit, profile, ref, dict(expect)))
    if not devices:
        chk.note("devices", "no devices; expected at least one [devices.NAME] table")
    spec = BenchSpec(
        source=path, name=chk.get(head, "bench", "name", str, path.stem), kind=kind,
        seed=chk.get(head, "bench", "seed", int, 0), port=port,
        baudrate=chk.get(line, "line", "baudrate", int, 9600, check=lambda v: v in BAUDS,
                         expected="one of " + ", ".join(map(str, BAUDS))),
        parity=parity,
        stopbits=chk.get(line, "line", "stopbits", int, 1, check=lambda v: v in (1, 2),
                         expected="1 or 2"),
        turnaround_ms=chk.get(line, "line", "turnaround_ms", float, 5.0,
                              check=lambda v: 0 <= v <= 1000, expected="0 to 1000 ms"),
        devices=tuple(devices))
    chk.raise_if_any()
    return spec


def _control(path: Path, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    reply = sim_control_sync(path, msg, timeout)
    if not reply.get("ok"):
        raise RuntimeError(f"{path}: {msg} refused: {reply.get('error')}")
    return reply


@dataclass
class Bench:
    """A running bench: the line's port, its devices, and (simulated) the controls."""

    spec: BenchSpec
    port: str
    workdir: Path
    line_sock: Path | None = None
    sim_sock: Path | None = None

    @property
    def simulated(self) -> bool:
        """True when the line emulator and simulators can be controlled."""
        return self.line_sock is not None

    def serial_bus(self, baudrate: int | None = None, **kw: Any) -> SerialBus:
        """The line as a client sees it (PTY benches open it with parity N)."""
        return SerialBus(name="bench", port=self.port, baudrate=baudrate or self.spec.baudrate,
                         parity=self.spec.parity, stopbits=self.spec.stopbits, **kw)

    def line(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One request to the line emulator's control socket."""
        assert self.line_sock is not None, "a real bench has no line emulator"
        return _control(self.line_sock, msg)

    def sim(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One request to the simulator's control socket."""
        assert self.sim_sock is not None, "a real bench has no simulator"
        return _control(self.sim_sock, msg)

    def set_baud(self, baudrate: int) -> None:
        """Re-pace the emulated line (the simulators' PTYs carry any speed)."""
        self.line({"cmd": "set", "baudrate": baudrate})

    def device(self, name: str) -> BenchDevice:
        """The bench device called ``name``."""
        return next(d for d in self.spec.devices if d.name == name)

    def site_toml(self, *, poll_s: float = 1.0, broker: str = "mqtt://127.0.0.1:1",
                  baudrate: int | None = None, extra: str = "") -> str:
        """A site config polling every bench device through the line (for the agent, scan...)."""
        lines = ["[gateway]", 'id = "gw-bench"', f'state_dir = "{self.workdir / "state"}"',
                 "[mqtt]", f'url = "{broker}"',
                 "[buses.line]", 'type = "serial"', f'port = "{self.port}"',
                 f"baudrate = {baudrate or self.spec.baudrate}",
                 f'parity = "{self.spec.parity.value}"', f"stopbits = {self.spec.stopbits}"]
        for d in self.spec.devices:
            lines += [f"[devices.{d.name}]", 'bus = "line"', f"unit_id = {d.unit_id}",
                      f'profile = "{_profile_path(self.spec, d)}"', f"poll_interval_s = {poll_s}"]
        return "\n".join(lines) + "\n" + extra


def _profile_path(spec: BenchSpec, d: BenchDevice) -> str:
    ref = d.profile_ref
    return ref if ref.isidentifier() else str((spec.source.parent / ref).resolve())


def _sim_site(spec: BenchSpec, workdir: Path) -> Path:
    """A site config for ``edge-agent simulate``: every device on its own PTY pair."""
    lines = ["[gateway]", 'id = "bench-sim"', f'state_dir = "{workdir / "sim-state"}"',
             "[mqtt]", 'url = "mqtt://127.0.0.1:1"']
    for d in spec.devices:
        lines += [f"[buses.drop_{d.name}]", 'type = "serial"',
                  f'port = "{workdir / ("drop-" + d.name)}"', f"baudrate = {spec.baudrate}",
                  'parity = "N"', f"stopbits = {spec.stopbits}",
                  f"[devices.{d.name}]", f'bus = "drop_{d.name}"', f"unit_id = {d.unit_id}",
                  f'profile = "{_profile_path(spec, d)}"', "poll_interval_s = 1"]
    path = workdir / "bench-sim.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        stop_process(p)


@contextlib.contextmanager
def simulated_bench(spec: BenchSpec, workdir: Path, seed: int | None = None) -> Iterator[Bench]:
    """Run the simulators and the line emulator for ``spec`` until the context exits."""
    seed = spec.seed if seed is None else seed
    print(f"bench {spec.name}: seed {seed} (simulators and line faults)", flush=True)
    site = _sim_site(spec, workdir)
    sim_sock, line_sock, port = workdir / "sim.sock", workdir / "line.sock", workdir / "line"
    # the line emulator is a module of hil_tests, found from the repository root
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_stop_all, procs)
        procs.append(spawn_until_ready(
            [sys.executable, "-m", "edge_agent", "simulate", str(site), "--control",
             str(sim_sock), "--seed", str(seed)], workdir / "sim.log", sim_sock.exists,
            env=env, what="simulator"))
        drops = [f"--drop={d.name}={workdir / ('drop-' + d.name)}" for d in spec.devices]
        procs.append(spawn_until_ready(
            [sys.executable, "-m", "hil_tests.linemu", "--line", str(port), *drops,
             "--control", str(line_sock), "--baud", str(spec.baudrate),
             "--parity", spec.parity.value, "--stopbits", str(spec.stopbits),
             "--seed", str(seed), "--latency-ms", str(spec.turnaround_ms)],
            workdir / "line.log", lambda: line_sock.exists() and port.exists(), env=env,
            cwd=REPO, what="line emulator"))
        yield Bench(spec, str(port), workdir, line_sock=line_sock, sim_sock=sim_sock)


@contextlib.contextmanager
def open_bench(spec: BenchSpec, workdir: Path) -> Iterator[Bench]:
    """The bench of ``spec``: simulated (brought up here) or real (its port)."""
    if spec.simulated:
        with simulated_bench(spec, workdir) as bench:
            yield bench
        return
    assert spec.port is not None
    print(f"bench {spec.name}: real line {spec.port} {spec.baudrate} "
          f"8{spec.parity.value}{spec.stopbits}", flush=True)
    yield Bench(spec, spec.port, workdir)
