"""``edge-agent install-service``: the systemd unit that runs the agent (the watchdog it pings is
``edge_agent.runtime.systemd``).

The unit runs the agent as a dedicated system user in the ``dialout`` group (the group
that owns serial ports on Debian), restarts it whenever it exits, and has systemd kill
and restart it when it stops pinging the watchdog (``Type=notify`` + ``WatchdogSec``).

It is sandboxed to what the agent uses: the state directory as the only writable path,
serial ports and the standard pseudo devices as the only devices, AF_UNIX (sd_notify,
``unix://`` brokers) and AF_INET/AF_INET6 (MQTT, Modbus TCP) as the only socket families,
no capabilities, and a system service's system calls. ``systemd-analyze security
edge-agent.service`` rates it 1.5 ("OK"); the unit before these settings rated 8.5
("EXPOSED").
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from edge_agent.protocol.errors import CommandError
from edge_agent.protocol.shell import cli_command

UNIT_NAME = "edge-agent.service"
DEFAULT_USER = "edge-agent"
SERIAL_GROUP = "dialout"
DEFAULT_WATCHDOG_S = 30
# Serial drivers by their /proc/devices group names (DeviceAllow=char-NAME): USB adapters
# (FTDI, CP210x, CH340: ttyUSB; CDC-ACM: ttyACM), on-board UARTs (8250: ttyS; Raspberry Pi
# PL011: ttyAMA; i.MX: ttymxc) and SC16IS7xx SPI/I2C UARTs on RS-485 HATs (ttySC). Another
# driver: a drop-in with DeviceAllow=char-NAME rw (systemctl edit edge-agent).
SERIAL_DEVICE_GROUPS = ("ttyUSB", "ttyACM", "ttyS", "ttyAMA", "ttymxc", "ttySC")
STATE_ROOT = PurePosixPath("/var/lib")  # where StateDirectory= puts its directories
HOME_ROOTS = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # Debian's adduser NAME_REGEX, 32 at most


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """What goes into the unit file."""

    exec_start: list[str]       # the edge-agent command, before its subcommand
    config: Path
    user: str = DEFAULT_USER
    watchdog_s: int = DEFAULT_WATCHDOG_S
    state_dir: Path = Path("/var/lib/edge-agent")
    serial_device_groups: tuple[str, ...] = SERIAL_DEVICE_GROUPS
    update_root: Path | None = None  # releases side by side: `edge-agent supervise` runs them
    release_args: tuple[str, ...] = ()  # supervise's --release-url URL --release-ca FILE


def unit_word(value: str, *, exec_line: bool = False) -> str:
    """``value`` as one word of a unit file line: quoted, specifiers escaped; ValueError if it
    holds what no unit line can carry (a newline would start a new directive)."""
    if not value or any(ord(c) < 32 or c in "\\\"'\x7f" for c in value):
        raise ValueError(f"{value!r}: a word of a systemd unit must be non-empty and free of "
                         "control characters, quotes and backslashes")
    word = shlex.quote(value).replace("%", "%%")  # %n, %h... are unit specifiers
    return word.replace("$", "$$") if exec_line else word  # $VAR is expanded in Exec lines


def state_directory(state_dir: Path) -> str | None:
    """StateDirectory= for ``state_dir`` if it lies under /var/lib (systemd creates it there,
    owned by the service user), else None: the directory must then exist already."""
    path = PurePosixPath(state_dir)
    if path.is_relative_to(STATE_ROOT) and path != STATE_ROOT:
        return str(path.relative_to(STATE_ROOT))
    return None


def protect_home(spec: UnitSpec) -> str:
    """ProtectHome=: ``yes`` (homes invisible), or ``read-only`` when the agent's program,
    config or state lives under a home directory (``yes`` would hide it and fail the start)."""
    paths = [PurePosixPath(p) for p in [*spec.exec_start[:1], str(spec.config),
                                        str(spec.state_dir)]]
    under_home = any(p.is_relative_to(h) for p in paths for h in HOME_ROOTS)
    return "read-only" if under_home else "yes"


def render_unit(spec: UnitSpec) -> str:
    """The systemd unit text for ``spec`` (pure; ValueError if a value cannot go in a unit)."""
    if not spec.exec_start:
        raise ValueError("the unit needs the edge-agent command to run")
    if not USER_RE.fullmatch(spec.user):
        raise ValueError(f"user {spec.user!r}: expected a system user name "
                         f"({USER_RE.pattern})")
    for group in spec.serial_device_groups:
        if not re.fullmatch(r"[A-Za-z0-9_*?/-]+", group):
            raise ValueError(f"serial device group {group!r}: expected a /proc/devices name")
    cmd = " ".join(unit_word(a, exec_line=True) for a in spec.exec_start)
    cfg = unit_word(str(spec.config), exec_line=True)
    state = unit_word(str(spec.state_dir))
    state_name = state_directory(spec.state_dir)
    state_lines = (f"StateDirectory={unit_word(state_name)}\nStateDirectoryMode=0700\n"
                   if state_name else "")
    devices = "".join(f"DeviceAllow=char-{g} rw\n" for g in spec.serial_device_groups)
    run_line, notify = f"{cmd} run {cfg}", "main"
    if spec.update_root is not None:
        # The supervisor (docs/updates.md) runs `current` and pings nothing itself: the agent
        # it starts does (NotifyAccess=all); the releases live under the update root.
        root = unit_word(str(spec.update_root), exec_line=True)
        cmd = f"{root}/current/venv/bin/python -m edge_agent"
        rel = "".join(f" {unit_word(a, exec_line=True)}" for a in spec.release_args)
        run_line = (f"{cmd} supervise --root {root} --state-dir "
                    f"{unit_word(str(spec.state_dir), exec_line=True)}{rel} -- run {cfg}")
        notify, state = "all", f"{state} {unit_word(str(spec.update_root))}"
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
NotifyAccess={notify}
# A config that does not validate fails the start with every problem in the journal.
ExecStartPre={cmd} check-config {cfg}
ExecStart={run_line}
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

# Sandbox (systemd.exec(5)); `systemd-analyze security edge-agent.service` rates it.
# Files: the OS read-only, homes hidden, only the state directory writable, new files 0600.
{state_lines}ReadWritePaths={state}
ProtectSystem=strict
ProtectHome={protect_home(spec)}
PrivateTmp=yes
PrivateMounts=yes
UMask=0077
# Devices: /dev/null, zero, full, random, urandom, tty, ptmx, and serial ports (pyserial).
DevicePolicy=closed
{devices}# Privileges: none held, none to gain (the agent runs unprivileged throughout).
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictNamespaces=yes
# CPython and its compiled extensions never need memory both writable and executable.
MemoryDenyWriteExecute=yes
RemoveIPC=yes
ProtectProc=invisible
# The kernel, its logs, cgroups, the clock and the host name are the host's business.
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# AF_UNIX: sd_notify and unix:// brokers; AF_INET, AF_INET6: MQTT and Modbus TCP.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
# A service's system calls, without privileged or scheduling ones. A refused call fails
# with EPERM, which the agent reports, rather than killing it with SIGSYS.
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

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


@cli_command("edge-agent install-service")
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
    ap.add_argument("--update-root", type=Path,
                    help="run `edge-agent supervise` over the releases in this directory "
                         "(e.g. /opt/edge-agent; docs/updates.md)")
    ap.add_argument("--release-url", help="with --update-root: where releases are downloaded "
                    "(https://FLEET/releases); the agent then takes desired/software")
    ap.add_argument("--release-ca", type=Path, help="CA file of the release URL's certificate")
    ap.add_argument("--enable", action="store_true",
                    help="systemctl daemon-reload, then enable and start the service")
    ap.add_argument("--dry-run", action="store_true", help="print what would be done")
    args = ap.parse_args(argv)
    out = out or sys.stdout
    if args.watchdog_s < 2:
        raise CommandError("--watchdog-s must be at least 2")
    spec = UnitSpec(exec_start=default_exec(), config=args.config.absolute(), user=args.user,
                    watchdog_s=args.watchdog_s, state_dir=_state_dir(args.config),
                    update_root=args.update_root.absolute() if args.update_root else None,
                    release_args=(*(("--release-url", args.release_url) if args.release_url
                                    else ()),
                                  *(("--release-ca", str(args.release_ca.absolute()))
                                    if args.release_ca else ())))
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
        raise CommandError(f"cannot write {path}: {exc.strerror} (run as root, or pass "
                           "--unit-dir)") from exc
    print(f"wrote {path}", file=out)
    for c in commands:
        text = " ".join(shlex.quote(a) for a in c)
        if os.geteuid() != 0:
            print(f"not root: run `sudo {text}` yourself", file=out)
            continue
        done = subprocess.run(c, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise CommandError(f"`{text}` failed: {done.stderr.strip()}", status=1)
        print(f"ran {text}", file=out)
    if not args.enable:
        print(f"next: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}", file=out)
    return 0
