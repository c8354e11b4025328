"""install-service's unit file and the sd_notify watchdog, against a real datagram socket."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.runtime.systemd import Watchdog
from edge_agent.tools.service import (
    UNIT_NAME,
    UnitSpec,
    install_service_main,
    render_unit,
    state_directory,
    unit_word,
    user_commands,
)

# The highest `systemd-analyze security` exposure the unit may have (it rates 1.5 on systemd
# 252; the unit before the sandbox rated 8.5, "EXPOSED").
MAX_EXPOSURE = 2.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(2)
    yield s
    s.close()


def test_watchdog_speaks_sd_notify_to_the_socket(tmp_path: Path,
                                                 notify_socket: socket.socket) -> None:
    wd = Watchdog({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "30000000",
                   "WATCHDOG_PID": str(os.getpid())})
    assert wd.enabled and wd.interval_s == 15.0
    assert wd.notify_ready("polling 3 buses")
    assert wd.ping()
    assert wd.notify_stopping()
    got = [notify_socket.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=polling 3 buses", "WATCHDOG=1", "STOPPING=1"]
    assert (wd.sent, wd.failed) == (3, 0)


def test_watchdog_uses_the_abstract_namespace_for_at_names() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        assert Watchdog({"NOTIFY_SOCKET": "@" + name}).ping()
        assert s.recv(100) == b"WATCHDOG=1"


def test_watchdog_outside_systemd_and_for_another_pid_is_off(tmp_path: Path) -> None:
    off = Watchdog({})
    assert not off.enabled and off.interval_s is None and not off.ping()
    other = Watchdog({"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000000",
                      "WATCHDOG_PID": "1"})
    assert other.interval_s is None
    # A socket that is gone is counted, never raised.
    assert not other.ping() and other.failed == 1


def test_unit_has_watchdog_restart_user_and_dialout() -> None:
    text = render_unit(UnitSpec(exec_start=["/opt/edge agent/bin/edge-agent"],
                                config=Path("/etc/edge-agent/site.toml"), watchdog_s=20))
    lines = set(text.splitlines())
    for expected in ("Type=notify", "WatchdogSec=20", "Restart=always", "User=edge-agent",
                     "SupplementaryGroups=dialout", "StateDirectory=edge-agent",
                     "ExecStart='/opt/edge agent/bin/edge-agent' run /etc/edge-agent/site.toml",
                     "WantedBy=multi-user.target"):
        assert expected in lines, expected


def test_user_commands_create_a_missing_user_in_dialout() -> None:
    cmds = user_commands("edge-agent-test-nobody-here", Path("/var/lib/edge-agent"))
    assert cmds[0][0] == "useradd" and cmds[0][-3:] == ["--groups", "dialout",
                                                       "edge-agent-test-nobody-here"]


def test_install_service_writes_the_unit(tmp_path: Path) -> None:
    out = io.StringIO()
    rc = install_service_main(["--unit-dir", str(tmp_path), "--no-user",
                               "--config", str(tmp_path / "site.toml")], out)
    assert rc == 0, out.getvalue()
    unit = (tmp_path / UNIT_NAME).read_text()
    assert f"run {tmp_path / 'site.toml'}" in unit
    verify = shutil.which("systemd-analyze")
    if verify:
        done = subprocess.run([verify, "verify", str(tmp_path / UNIT_NAME)],
                              capture_output=True, text=True, check=False)
        # Only complaints about our own keys matter; a container may lack the user or binary.
        bad = [ln for ln in done.stderr.splitlines() if "Unknown key" in ln
               or "Invalid" in ln or "Failed to parse" in ln]
        assert not bad, done.stderr


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    assert install_service_main(["--unit-dir", str(tmp_path), "--dry-run", "--enable",
                                 "--user", "edge-agent-test-nobody-here"], out) == 0
    assert not (tmp_path / UNIT_NAME).exists()
    assert "would run: systemctl enable --now edge-agent.service" in out.getvalue()
    assert "would run: useradd" in out.getvalue()


def service_section(text: str) -> dict[str, list[str]]:
    """[Service] directives of a unit: key -> values in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


HARDENING = {
    "CapabilityBoundingSet": [""], "AmbientCapabilities": [""], "NoNewPrivileges": ["yes"],
    "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallErrorNumber": ["EPERM"], "SystemCallArchitectures": ["native"],
    "ProtectKernelTunables": ["yes"], "ProtectKernelModules": ["yes"],
    "ProtectKernelLogs": ["yes"], "ProtectControlGroups": ["yes"], "ProtectClock": ["yes"],
    "ProtectHostname": ["yes"], "MemoryDenyWriteExecute": ["yes"], "LockPersonality": ["yes"],
    "RestrictRealtime": ["yes"], "RestrictSUIDSGID": ["yes"], "RestrictNamespaces": ["yes"],
    "PrivateTmp": ["yes"], "PrivateMounts": ["yes"], "ProtectHome": ["yes"],
    "ProtectSystem": ["strict"], "ReadWritePaths": ["/var/lib/edge-agent"],
    "StateDirectory": ["edge-agent"], "StateDirectoryMode": ["0700"], "UMask": ["0077"],
    "DevicePolicy": ["closed"], "ProtectProc": ["invisible"], "RemoveIPC": ["yes"],
    # kept from before the sandbox
    "Type": ["notify"], "NotifyAccess": ["main"], "WatchdogSec": ["30"], "Restart": ["always"],
    "SupplementaryGroups": ["dialout"], "User": ["edge-agent"], "Group": ["edge-agent"],
}


def test_unit_is_sandboxed() -> None:
    unit = service_section(render_unit(UnitSpec(exec_start=["/usr/local/bin/edge-agent"],
                                                config=Path("/etc/edge-agent/site.toml"))))
    for key, values in HARDENING.items():
        assert unit.get(key) == values, (key, unit.get(key))
    # pyserial opens these; /dev/null, urandom... are in DevicePolicy=closed's base set.
    for group in ("ttyUSB", "ttyACM", "ttyS", "ttyAMA"):
        assert f"char-{group} rw" in unit["DeviceAllow"], group
    # Nothing that would hide the serial ports or the network from the agent.
    for key in ("PrivateDevices", "PrivateNetwork", "IPAddressDeny", "PrivateUsers"):
        assert key not in unit, key


def test_security_score(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / UNIT_NAME
    path.write_text(render_unit(UnitSpec(exec_start=["/usr/local/bin/edge-agent"],
                                         config=Path("/etc/edge-agent/site.toml"))))
    done = subprocess.run([exe, "security", "--offline=yes", "--no-pager", str(path)],
                          capture_output=True, text=True, check=False)
    out = done.stdout + done.stderr
    if "--offline" in out and ("unrecognized" in out or "Unknown" in out):
        pytest.skip("systemd-analyze security has no --offline mode here (systemd < 250)")
    found = re.search(rf"Overall exposure level for {re.escape(UNIT_NAME)}: ([0-9.]+)", out)
    assert found, out
    print(f"systemd-analyze security: {found.group(1)}")
    assert float(found.group(1)) <= MAX_EXPOSURE, out


def test_state_directory_only_under_var_lib() -> None:
    assert state_directory(Path("/var/lib/edge-agent")) == "edge-agent"
    assert state_directory(Path("/var/lib/city/edge")) == "city/edge"
    assert state_directory(Path("/data/edge")) is None
    unit = service_section(render_unit(UnitSpec(exec_start=["/usr/bin/edge-agent"],
                                                config=Path("/etc/e.toml"),
                                                state_dir=Path("/data/edge agent"))))
    # StateDirectory= would create /var/lib/edge agent, not the configured directory.
    assert "StateDirectory" not in unit and unit["ReadWritePaths"] == ["'/data/edge agent'"]


def test_paths_under_home_keep_homes_readable() -> None:
    unit = service_section(render_unit(UnitSpec(exec_start=["/home/pi/venv/bin/edge-agent"],
                                                config=Path("/etc/e.toml"))))
    assert unit["ProtectHome"] == ["read-only"]


def test_values_that_would_break_the_unit_are_refused() -> None:
    assert unit_word("/opt/50%/edge-agent", exec_line=True) == "/opt/50%%/edge-agent"
    assert unit_word("/opt/$HOME/x", exec_line=True) == "'/opt/$$HOME/x'"
    for bad in ("/etc/site.toml\nExecStartPost=/bin/sh", "/a\\b", "/a'b", ""):
        with pytest.raises(ValueError, match="systemd unit"):
            unit_word(bad)
    with pytest.raises(ValueError, match="systemd unit"):
        render_unit(UnitSpec(exec_start=["/usr/bin/edge-agent"],
                             config=Path("/etc/site.toml\n[Install]")))
    with pytest.raises(ValueError, match="user"):
        render_unit(UnitSpec(exec_start=["/usr/bin/edge-agent"], config=Path("/etc/s.toml"),
                             user="edge\nExecStartPre=/bin/sh"))
