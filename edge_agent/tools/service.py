"""``edge-agent install-service``: the systemd unit that runs the agent (the watchdog it pings is
``edge_agent.runtime.systemd``).

The unit runs the agent as a dedicated system user in the ``dialout`` group (the group
that owns serial ports on Debian), restarts it whenever it exits, and has systemd kill
and restart it when it stops pinging the watchdog (``Type=notify`` + ``WatchdogSec``).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

UNIT_NAME = "edge-agent.service"
DEFAULT_USER = "edge-agent"
SERIAL_GROUP = "dialout"
DEFAULT_WATCHDOG_S = 30


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """What goes into the unit file."""

    exec_start: list[str]       # the edge-agent command, before its subcommand
    config: Path
    user: str = DEFAULT_USER
    watchdog_s: int = DEFAULT_WATCHDOG_S
    state_dir: Path = Path("/var/lib/edge-agent")


def render_unit(spec: UnitSpec) -> str:
    """The systemd unit text for ``spec`` (pure)."""
    cmd = " ".join(shlex.quote(a) for a in spec.exec_start)
    cfg = shlex.quote(str(spec.config))
    return f"""[Unit]
Description=edge-agent: field gateway polling Modbus devices and reporting over MQTT
Documentation=man:systemd.service(5)
Wants=network-online.target
After=network-online.target time-sync.target
# Give up after 10 failed starts in 5 minutes (a broken config), instead of looping forever.
StartLimitIntervalSec=300
StartLimitBurst=10

[Service]
Type=notify
NotifyAccess=main
# A config that does not validate fails the start with every problem in the journal.
ExecStartPre={cmd} check-config {cfg}
ExecStart={cmd} run {cfg}
User={spec.user}
Group={spec.user}
# Serial ports belong to the dialout group.
SupplementaryGroups={SERIAL_GROUP}
# The agent pings every WatchdogSec/2; a hung event loop is killed and restarted.
WatchdogSec={spec.watchdog_s}
Restart=always
RestartSec=5
TimeoutStartSec=60
TimeoutStopSec=20
StateDirectory={spec.state_dir.name}
StateDirectoryMode=0750
ReadWritePaths={spec.state_dir}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def user_commands(user: str, state_dir: Path) -> list[list[str]]:
    """Commands that create the service user in the dialout group, or add it to the group."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return [["useradd", "--system", "--user-group", "--home-dir", str(state_dir),
                 "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", SERIAL_GROUP,
                 user]]
    try:
        members = grp.getgrnam(SERIAL_GROUP).gr_mem
        gid = grp.getgrnam(SERIAL_GROUP).gr_gid
    except KeyError:
        return []
    if user in members or pw.pw_gid == gid:
        return []
    return [["usermod", "--append", "--groups", SERIAL_GROUP, user]]


def default_exec() -> list[str]:
    """The installed ``edge-agent`` script, or this interpreter running the package."""
    script = Path(sys.executable).with_name("edge-agent")
    if script.exists():
        return [str(script)]
    found = shutil.which("edge-agent")
    return [found] if found else [sys.executable, "-m", "edge_agent"]


def _state_dir(config: Path) -> Path:
    try:
        from edge_agent.config.loader import load_config

        return load_config(config).state_dir
    except Exception:  # a config that does not load yet still gets a unit
        return Path("/var/lib/edge-agent")


def install_service_main(argv: list[str], out: TextIO | None = None) -> int:
    """``edge-agent install-service``: write the unit, create the user, optionally enable it."""
    ap = argparse.ArgumentParser(
        prog="edge-agent install-service",
        description="Install the systemd unit that runs the agent (watchdog, restart policy, "
                    "a dedicated user in the dialout group).")
    ap.add_argument("--config", type=Path, default=Path("/etc/edge-agent/site.toml"))
    ap.add_argument("--user", default=DEFAULT_USER)
    ap.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"))
    ap.add_argument("--watchdog-s", type=int, default=DEFAULT_WATCHDOG_S)
    ap.add_argument("--no-user", action="store_true", help="do not create the service user")
    ap.add_argument("--enable", action="store_true",
                    help="systemctl daemon-reload, then enable and start the service")
    ap.add_argument("--dry-run", action="store_true", help="print what would be done")
    args = ap.parse_args(argv)
    out = out or sys.stdout
    if args.watchdog_s < 2:
        print("edge-agent install-service: --watchdog-s must be at least 2", file=sys.stderr)
        return 2
    spec = UnitSpec(exec_start=default_exec(), config=args.config.absolute(), user=args.user,
                    watchdog_s=args.watchdog_s, state_dir=_state_dir(args.config))
    unit = render_unit(spec)
    path = args.unit_dir / UNIT_NAME
    commands = [] if args.no_user else user_commands(args.user, spec.state_dir)
    if args.enable:
        commands += [["systemctl", "daemon-reload"],
                     ["systemctl", "enable", "--now", UNIT_NAME]]
    if args.dry_run:
        print(f"# would write {path}:\n{unit}", file=out)
        for c in commands:
            print("# would run: " + " ".join(shlex.quote(a) for a in c), file=out)
        return 0
    try:
        args.unit_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(unit)
    except OSError as exc:
        print(f"edge-agent install-service: cannot write {path}: {exc.strerror} "
              "(run as root, or pass --unit-dir)", file=sys.stderr)
        return 2
    print(f"wrote {path}", file=out)
    for c in commands:
        text = " ".join(shlex.quote(a) for a in c)
        if os.geteuid() != 0:
            print(f"not root: run `sudo {text}` yourself", file=out)
            continue
        done = subprocess.run(c, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"edge-agent install-service: `{text}` failed: {done.stderr.strip()}",
                  file=sys.stderr)
            return 1
        print(f"ran {text}", file=out)
    if not args.enable:
        print(f"next: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}", file=out)
    return 0
