"""Signed configs from the fleet are validated from their bytes, confined, and refused loudly.

Issue "nothing stops silently", items 4-7. An enrolled gateway (trust pinned in its state dir)
is built in-process on a fake clock; bundles signed with the pinned release key go through
its real control plane and its real ``validate`` step. The dry run and switch are replaced
by recorders: a hostile config must be refused before anything opens a port, and the report
the fleet gets must say why.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.loader import load_config_bytes
from edge_agent.config.model import SiteConfig
from edge_agent.control.gateway import Gateway
from edge_agent.control.truststore import TRUST_FILE, save_trust
from edge_agent.protocol.bundle import make_bundle, root_signed, sign_envelope
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.errors import ConfigError, DeviceError
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.trust import TrustedState

SEED = 4567
print(f"test_fleet_config_intake: key seed {SEED}")
NOW = 1_700_000_000
GW = "gw-intake"


def _key(name: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(f"{SEED}/{name}".encode()).digest())


ROOT_KEYS = [_key("r1"), _key("r2")]
RELEASE = _key("release")
ROOT = sign_envelope(root_signed(1, [k.public for k in ROOT_KEYS], 2, [RELEASE.public], 1,
                                 issued=NOW - 10, expires=NOW + 10**7), ROOT_KEYS)

DEVICE = """
[devices.meter]
bus = "rs485"
unit_id = 1
profile = "energy_meter"
poll_interval_s = 1
"""


def site_text(port: str = "/dev/ttyUSB0", mqtt: str = "", gateway: str = "") -> str:
    """A site config for GW with one serial bus; extra [mqtt] and [gateway] lines."""
    return (f'[gateway]\nid = "{GW}"\n{gateway}\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n{mqtt}\n'
            f'[buses.rs485]\ntype = "serial"\nport = "{port}"\n' + DEVICE)


class Enrolled:
    """A gateway built on a local config in ``etc/`` with its trust pinned in ``state/``."""

    def __init__(self, tmp: Path) -> None:
        self.etc = tmp / "etc"
        self.state = tmp / "state"
        self.etc.mkdir()
        self.state.mkdir()
        save_trust(self.state, TrustedState(GW, "north", (), ROOT), fsync=False)
        self.local = self.etc / "site.toml"
        self.local.write_text(site_text(gateway=f'state_dir = "{self.state}"'))
        self.gw = Gateway(self.local, clock=FakeClock(NOW))
        assert self.gw.control is not None
        self.control = self.gw.control
        self.dry_runs: list[SiteConfig] = []
        self.control.dry_run = self._dry_run
        self.version = 0

    async def _dry_run(self, cfg: SiteConfig) -> None:
        # Stands for the bus: reaching it means validation passed and a port would be opened.
        self.dry_runs.append(cfg)
        raise DeviceError("dry run stopped by the test")

    def offer(self, payload: bytes) -> dict[str, Any]:
        """Sign ``payload`` as the next version and run it through the control plane."""
        self.version += 1
        blob = make_bundle("config", self.version, payload, [RELEASE], issued=NOW - 5,
                           expires=NOW + 3600, gateways=[GW])
        return asyncio.run(self.control.offer(blob, self.gw.cfg))


@pytest.fixture
def enrolled(tmp_path: Path) -> Enrolled:
    return Enrolled(tmp_path)


# --- serial ports: only device paths, socket:// and rfc2217:// --------------------------

@pytest.mark.parametrize("port", [
    "spy:///dev/null?file={state}/trust.json",
    "loop://",
    "alt:///dev/null?class=PosixPollSerial",
    "hwgrep://.*",
    "cp2110://0001:0004:00",
    "{state}/trust.json",
])
def test_a_hostile_port_is_refused_at_validation_and_trust_json_is_untouched(
        enrolled: Enrolled, port: str) -> None:
    trust = (enrolled.state / TRUST_FILE).read_bytes()
    report = enrolled.offer(site_text(port=port.format(state=enrolled.state)).encode())
    assert report["result"] == "invalid", report
    assert "config bundle: buses.rs485.port = " in report["reason"], report
    assert "expected a device path" in report["reason"], report
    assert enrolled.dry_runs == []  # refused before anything opened the port
    assert (enrolled.state / TRUST_FILE).read_bytes() == trust
    assert report["committed"] == 0


def test_a_genuine_config_reaches_the_dry_run(enrolled: Enrolled) -> None:
    report = enrolled.offer(site_text(port="socket://127.0.0.1:4001").encode())
    assert report["result"] == "dry_run_failed", report
    assert [c.buses["rs485"].port for c in enrolled.dry_runs] == ["socket://127.0.0.1:4001"]


# --- files: only the local config's directory and the local state dir --------------------

def test_a_password_file_outside_cannot_reach_a_broker_of_the_signers_choosing(
        enrolled: Enrolled, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the-operators-secret\n")
    hops = "../" * len(enrolled.etc.parts)
    payload = site_text(mqtt=f'username = "x"\npassword_file = "{hops}{secret}"').replace(
        "mqtt://127.0.0.1:1", "mqtt://collector.example")
    report = enrolled.offer(payload.encode())
    assert report["result"] == "invalid", report
    assert "mqtt.password_file = " in report["reason"]
    assert "files elsewhere are not read" in report["reason"]
    assert "the-operators-secret" not in report["reason"]
    assert enrolled.dry_runs == []


def test_fleet_files_resolve_against_the_local_config_and_may_be_in_the_state_dir(
        enrolled: Enrolled, tmp_path: Path) -> None:
    (enrolled.etc / "pw").write_text("beside-the-config\n")
    (enrolled.state / "mqtt.password").write_text("from-enrolment\n")
    cfg = enrolled.gw.validate(site_text(mqtt='username = "x"\npassword_file = "pw"').encode())
    assert cfg.mqtt.password == "beside-the-config"
    cfg = enrolled.gw.validate(site_text(
        mqtt=f'username = "x"\npassword_file = "{enrolled.state}/mqtt.password"').encode())
    assert cfg.mqtt.password == "from-enrolment"
    # The fleet config's own state_dir does not widen the confinement: it cannot move at all.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pw").write_text("x\n")
    with pytest.raises(ConfigError) as info:
        enrolled.gw.validate(site_text(gateway=f'state_dir = "{elsewhere}"',
                                       mqtt=f'username = "x"\npassword_file = "{elsewhere}/pw"')
                             .encode())
    text = "\n".join(info.value.problems)
    assert f"gateway.state_dir = '{elsewhere}'"[:40] in text
    assert "a config from the fleet cannot move it" in text
    assert "mqtt.password_file = " in text and "files elsewhere are not read" in text


def test_a_fleet_config_without_state_dir_runs_with_the_local_one(enrolled: Enrolled) -> None:
    assert enrolled.gw.validate(site_text().encode()).state_dir == enrolled.state
    same = site_text(gateway=f'state_dir = "{enrolled.state}/."').encode()
    assert enrolled.gw.validate(same).state_dir == enrolled.state


# --- encoding, nesting, parser failures: refused and reported ----------------------------

def test_a_latin1_signed_config_is_refused_and_reported(enrolled: Enrolled) -> None:
    payload = (site_text() + "[devices.meter.points.voltage_l1]\n").encode() \
        + 'unit = "°C"\n'.encode("latin-1")
    offset = payload.index(b"\xb0")
    line = payload[:offset].count(b"\n") + 1
    report = enrolled.offer(payload)
    assert report["result"] == "invalid", report
    assert (f"config bundle: not UTF-8: byte 0xb0 at offset {offset} (line {line}, column 9)"
            in report["reason"]), report


@pytest.mark.parametrize("tail", ["x = " + "[" * 20000 + "]" * 20000,
                                  ".".join(["k"] * 2000) + " = 1",
                                  "x = " + "9" * 5000])
def test_a_deep_or_unparseable_signed_config_is_refused_and_reported(enrolled: Enrolled,
                                                                    tail: str) -> None:
    report = enrolled.offer(f"{site_text()}\n[planner]\n{tail}\n".encode())
    assert report["result"] == "invalid", report
    assert report["reason"].startswith("invalid config: config bundle: "), report
    assert enrolled.dry_runs == []


@pytest.mark.parametrize("interval", ["inf", "nan", "1e300"])
def test_a_signed_config_with_an_interval_no_scheduler_can_keep_is_refused(
        enrolled: Enrolled, interval: str) -> None:
    # It used to pass validation and the dry run and then raise OverflowError building the
    # new agent, mid-switch, with the old one already stopped.
    report = enrolled.offer(site_text().replace("poll_interval_s = 1",
                                                f"poll_interval_s = {interval}").encode())
    assert report["result"] == "invalid", report
    assert "devices.meter.poll_interval_s" in report["reason"], report
    assert enrolled.dry_runs == []


# --- validation needs no write access outside the state dir ------------------------------

def test_validation_in_a_read_only_config_directory_writes_nothing_outside_the_state_dir(
        enrolled: Enrolled, monkeypatch: pytest.MonkeyPatch) -> None:
    # As under ProtectSystem=strict: every write outside the state dir fails with EROFS.
    # (Tests run as root, where a 0555 directory would not stop a write.)
    state = os.path.realpath(enrolled.state)
    attempts: list[str] = []

    def writable(path: Any) -> bool:
        where: str = os.path.realpath(os.fsdecode(path))
        ok = where == state or where.startswith(state + os.sep)
        if not ok:
            attempts.append(where)
        return ok

    def read_only(path: Any) -> OSError:
        return OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    real_mkstemp, real_os_open, real_open = tempfile.mkstemp, os.open, builtins.open

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        folder = kwargs.get("dir", args[2] if len(args) > 2 else tempfile.gettempdir())
        if not writable(Path(folder) / "x"):
            raise read_only(folder)
        return real_mkstemp(*args, **kwargs)

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and not writable(path):
            raise read_only(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | bytes | os.PathLike) and set(mode) & set("wax+") \
                and not writable(file):
            raise read_only(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    etc_before = sorted(p.name for p in enrolled.etc.iterdir())
    report = enrolled.offer(site_text(port="socket://127.0.0.1:4001").encode())
    # Validation passed (the dry run was reached), the journal went to the state dir.
    assert report["result"] == "dry_run_failed", report
    assert len(enrolled.dry_runs) == 1
    assert attempts == []
    assert sorted(p.name for p in enrolled.etc.iterdir()) == etc_before


def test_load_config_bytes_names_the_source_and_reads_no_file_for_the_config(
        tmp_path: Path) -> None:
    cfg = load_config_bytes(site_text().encode(), source="config bundle", base_dir=tmp_path,
                            state_dir=tmp_path / "state")
    assert (cfg.source, cfg.state_dir, cfg.gateway_id) == (Path("config bundle"),
                                                           tmp_path / "state", GW)
    with pytest.raises(ConfigError) as info:
        load_config_bytes(b"\xff", source="config bundle", base_dir=tmp_path)
    assert info.value.problems == [
        "config bundle: not UTF-8: byte 0xff at offset 0 (line 1, column 1) is not valid UTF-8; "
        "expected a UTF-8 file (re-save it as UTF-8; Latin-1 and other 8-bit encodings are not "
        "read)"]
