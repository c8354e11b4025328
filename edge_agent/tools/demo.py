"""``make demo``: a private broker, simulators for a site, the agent, and a live tail.

Everything runs as child processes of this one; Ctrl-C (or ``--duration``) stops them
all, in reverse order, and waits for each, so nothing is left running.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import SerialBus, TcpBus
from edge_agent.protocol.errors import ConfigError
from edge_agent.tools.devbroker import Mosquitto
from edge_agent.tools.procs import stop_process


def _wait_ready(cfg: SiteConfig, sim: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Wait until every simulated serial port exists and every TCP device accepts."""
    deadline = time.monotonic() + timeout_s
    pending = {name: bus for name, bus in cfg.buses.items() if cfg.devices_on(name)}
    while pending and time.monotonic() < deadline:
        if sim.poll() is not None:
            raise RuntimeError(f"the simulator exited with status {sim.returncode}")
        for name, bus in list(pending.items()):
            if isinstance(bus, SerialBus) and os.path.exists(bus.port):
                del pending[name]
            elif isinstance(bus, TcpBus):
                try:
                    with socket.create_connection((bus.host, bus.port), timeout=0.2):
                        del pending[name]
                except OSError:
                    pass
        time.sleep(0.1)
    if pending:
        raise RuntimeError(f"simulated buses not ready after {timeout_s:.0f} s: {sorted(pending)}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C or for ``--duration`` seconds."""
    ap = argparse.ArgumentParser(prog="edge-agent demo")
    ap.add_argument("config", type=Path, nargs="?", default=Path("configs/demo.toml"))
    ap.add_argument("--duration", type=float, default=None,
                    help="stop after this many seconds (default: run until Ctrl-C)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(f"error: {p}" for p in exc.problems), file=sys.stderr)
        return 2
    for bus in cfg.buses.values():
        if isinstance(bus, SerialBus):
            Path(bus.port).parent.mkdir(parents=True, exist_ok=True)

    exe = [sys.executable, "-m", "edge_agent"]
    broker = Mosquitto()
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    # Ctrl-C reaches every process of the terminal's group: each child stops itself
    # gracefully and this process waits for them; SIGTERM is treated like Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        broker.start()
        print(f"demo: private mosquitto at {broker.url}", flush=True)
        control = broker.dir / "sim.sock"
        sim = subprocess.Popen([*exe, "simulate", str(args.config), "--control", str(control)])
        procs.append(("simulator", sim))
        _wait_ready(cfg, sim)
        print(f"demo: simulated devices are up; to make one fail, e.g.\n"
              f"  echo '{{\"device\": \"lamp-102\", \"fault\": \"silent\"}}' | "
              f"socat - UNIX-CONNECT:{control}", flush=True)
        agent = subprocess.Popen([*exe, "run", str(args.config), "--broker", broker.url])
        procs.append(("agent", agent))
        tail = subprocess.Popen([*exe, "tail", "--broker", broker.url,
                                 "--prefix", cfg.mqtt.topic_prefix])
        procs.append(("tail", tail))
        print("demo: agent and tail started; Ctrl-C stops everything", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"demo: {name} exited with status {proc.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _name, proc in reversed(procs):
            stop_process(proc, 10.0)
        broker.close()
        print("demo: stopped everything", flush=True)


if __name__ == "__main__":
    sys.exit(main())
