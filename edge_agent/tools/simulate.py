"""``edge-agent simulate SITE.toml [--control PATH] [--seed N]``: serve a site's devices."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from edge_agent.drivers.sim.runner import run_site
from edge_agent.drivers.sim.server import Served
from edge_agent.protocol.shell import cli_command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent simulate",
        description="Simulate every device of a site config on its buses (socat PTYs for "
                    "serial ports, TCP servers for TCP buses) until SIGINT or SIGTERM.")
    p.add_argument("site", type=Path, help="site config (TOML)")
    p.add_argument("--control", type=Path, default=None,
                   help="unix socket for fault control (JSON lines)")
    p.add_argument("--seed", type=int, default=0, help="seed of the value models (default 0)")
    return p


def _print_served(served: list[Served]) -> None:
    for s in served:
        print(f"bus {s.bus}: {s.where}: {', '.join(s.devices)}", flush=True)
    print("simulator ready", flush=True)


async def _main(args: argparse.Namespace) -> None:
    from edge_agent.config.loader import load_config  # written alongside; imported when needed

    cfg = load_config(args.site)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"seed {args.seed}", flush=True)
    await run_site(cfg, control_path=args.control, stop=stop, seed=args.seed,
                   on_ready=_print_served)


@cli_command("edge-agent simulate")
def simulate_main(argv: list[str]) -> int:
    """Parse ``argv`` (without the program name), run the simulator, return the exit status."""
    args = _parser().parse_args(argv)
    asyncio.run(_main(args))
    return 0
