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
from collections.abc import Callable
from pathlib import Path

from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import SerialBus, TcpBus
from edge_agent.protocol.errors import CommandError
from edge_agent.protocol.shell import cli_command
from edge_agent.tools.demo_fleet import DEMO_USER, start_demo_fleet
from edge_agent.tools.devbroker import Mosquitto
from edge_agent.tools.procs import spawn_until_ready, stop_process


def _buses_up(cfg: SiteConfig) -> Callable[[], bool]:
    """A predicate: every simulated serial port exists and every TCP device accepts."""
    pending = {name: bus for name, bus in cfg.buses.items() if cfg.devices_on(name)}

    def up() -> bool:
        for name, bus in list(pending.items()):
            if isinstance(bus, SerialBus) and os.path.exists(bus.port):
                del pending[name]
            elif isinstance(bus, TcpBus):
                try:
                    with socket.create_connection((bus.host, bus.port), timeout=0.2):
                        del pending[name]
                except OSError:
                    pass
        return not pending

    return up


@cli_command("edge-agent demo")
def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C or for ``--duration`` seconds."""
    ap = argparse.ArgumentParser(prog="edge-agent demo")
    ap.add_argument("config", type=Path, nargs="?", default=Path("configs/demo.toml"))
    ap.add_argument("--duration", type=float, default=None,
                    help="stop after this many seconds (default: run until Ctrl-C)")
    ap.add_argument("--no-fleet", action="store_true",
                    help="no operations centre: the gateway runs unenrolled, takes no commands")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
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
        # its output stays on the terminal: the demo shows which devices it serves where
        sim = spawn_until_ready([*exe, "simulate", str(args.config), "--control", str(control)],
                                None, _buses_up(cfg), timeout_s=20.0, what="the simulator")
        procs.append(("simulator", sim))
        print(f"demo: simulated devices are up; to make one fail, e.g.\n"
              f"  echo '{{\"device\": \"lamp-102\", \"fault\": \"silent\"}}' | "
              f"socat - UNIX-CONNECT:{control}", flush=True)
        fleet = None
        if not args.no_fleet:  # its own operations centre, so signed commands work
            fleet = start_demo_fleet(cfg, broker.url, cfg.state_dir.parent.resolve() / "demo-fleet",
                                     with_console=True)
            procs += [("fleet service", fleet.serve), *fleet.others]
        agent = subprocess.Popen([*exe, "run", str(args.config), "--broker", broker.url])
        procs.append(("agent", agent))
        tail = subprocess.Popen([*exe, "tail", "--broker", broker.url,
                                 "--prefix", cfg.mqtt.topic_prefix])
        procs.append(("tail", tail))
        print("demo: agent and tail started; Ctrl-C stops everything", flush=True)
        if fleet is not None:
            print(f"demo: web console at {fleet.console_url}  user {DEMO_USER}  password "
                  f"{fleet.password}\n      (fleet logs in {Path(fleet.db[10:]).parent})\n"
                  f"demo: dim a lamp with a signed command, on the console's Commands page "
                  f"or (README, Commands):\n"
                  f"  {fleet.send_line(cfg, broker.url)}", flush=True)
        if cfg.sparkplug.enabled:
            print(f"demo: the gateway is also Sparkplug B edge node "
                  f"{cfg.sparkplug.group_id}/{cfg.sparkplug.edge_node_id}; watch it with\n"
                  f"  {sys.executable} -m edge_agent spb-tail --broker {broker.url}", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            for name, proc in procs:
                if proc.poll() is not None:
                    raise CommandError(f"the {name} exited with status {proc.returncode}",
                                       status=1)
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
