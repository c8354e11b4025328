"""doctor: each verdict from its facts, then a whole run against a real PTY, broker and spool."""

from __future__ import annotations

import datetime as dt
import io
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.drivers.bus import Parity, SerialBus
from edge_agent.drivers.modbus.timing import serial_budget
from edge_agent.drivers.model import DataType, Point, Table
from edge_agent.tools.doctor import (
    Level,
    _cert_check,
    check_budget,
    check_certificate,
    check_clock,
    check_disk,
    check_port,
    check_stable_path,
    doctor_main,
    gather,
    render,
)
from tests.support.brokers import Mosquitto

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def test_port_verdicts_name_the_group_to_join() -> None:
    assert check_port("/dev/ttyUSB0", False, False, None, False).level is Level.FAIL
    denied = check_port("/dev/ttyUSB0", True, False, "dialout", False)
    assert denied.level is Level.FAIL and "usermod -aG dialout" in denied.remedy
    assert check_port("/dev/ttyUSB0", True, True, "dialout", True).level is Level.PASS


def test_stable_path_suggests_the_by_id_link() -> None:
    by_id = "/dev/serial/by-id/usb-FTDI_X-if00-port0"
    warn = check_stable_path("/dev/ttyUSB0", [by_id])
    assert warn.level is Level.WARN and by_id in warn.remedy
    assert check_stable_path(by_id, [by_id]).level is Level.PASS
    assert check_stable_path("/dev/ttyUSB3", []).level is Level.WARN
    assert check_stable_path("/dev/ttyAMA0", []).level is Level.PASS


def test_certificate_verdicts() -> None:
    start = NOW - dt.timedelta(days=100)
    assert check_certificate("c", start, NOW + dt.timedelta(days=200), NOW).level is Level.PASS
    soon = check_certificate("c", start, NOW + dt.timedelta(days=10), NOW)
    assert soon.level is Level.WARN and "10 days" in soon.detail
    assert check_certificate("c", start, NOW - dt.timedelta(days=1), NOW).level is Level.FAIL
    early = check_certificate("c", NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=9), NOW)
    assert early.level is Level.FAIL and "clock" in early.remedy


def test_clock_and_disk_verdicts() -> None:
    assert check_clock(dt.datetime(1970, 1, 1, tzinfo=dt.UTC), True).level is Level.FAIL
    assert check_clock(NOW, False).level is Level.WARN
    assert check_clock(NOW, True).level is Level.PASS
    assert check_disk(Path("/"), 10 * 2**20, 2**35).level is Level.FAIL
    assert check_disk(Path("/"), 300 * 2**20, 2**35).level is Level.WARN
    assert check_disk(Path("/"), 2**33, 2**34).level is Level.PASS
    assert check_disk(Path("/"), 2**33, 2**34, spool_cap=2**34).level is Level.WARN


def test_budget_verdict_fails_an_overloaded_line() -> None:
    bus = SerialBus(name="slow", port="/dev/null", baudrate=1200, parity=Parity.EVEN)
    points = [Point(name=f"p{i}", table=Table.HOLDING_REGISTER, address=i * 300,
                    type=DataType.UINT16, count=1) for i in range(20)]
    check = check_budget(serial_budget(bus, [("d", 1.0, points)], max_gap=16))
    assert check.level is Level.FAIL and "poll no faster than every" in check.remedy


def _self_signed(path: Path, days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_a_certificate_file_is_read_and_judged(tmp_path: Path) -> None:
    _self_signed(tmp_path / "soon.pem", 12)
    check = _cert_check("client", tmp_path / "soon.pem", dt.datetime.now(dt.UTC))
    assert check.level is Level.WARN and "(12 days)" in check.detail
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert _cert_check("client", tmp_path / "junk.pem", NOW).level is Level.FAIL


@pytest.fixture
def pty_port(tmp_path: Path) -> Iterator[Path]:
    master, slave = os.openpty()
    link = tmp_path / "ttyRS485"
    link.symlink_to(os.ttyname(slave))
    yield link
    os.close(master)
    os.close(slave)


def _site(tmp: Path, port: Path, broker_url: str, state: Path) -> Path:
    path = tmp / "site.toml"
    path.write_text(f"""
[gateway]
id = "gw-doc"
state_dir = "{state}"
[mqtt]
url = "{broker_url}"
[buses.rs485]
type = "serial"
port = "{port}"
baudrate = 9600
[devices.lamp]
bus = "rs485"
unit_id = 3
profile = "streetlight"
poll_interval_s = 5
""")
    return path


@pytest.mark.integration
def test_a_healthy_gateway_passes(tmp_path: Path, pty_port: Path, broker: Mosquitto) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "spool.db") as con:
        con.execute("create table t (x)")
    checks = gather(_site(tmp_path, pty_port, broker.url, state))
    by_name = {c.name.split(" ")[0]: c for c in checks}
    report = render(checks)
    print(report)
    for name in ("config", "serial", "bus", "broker", "disk", "spool"):
        assert by_name[name].level is Level.PASS, report
    assert "1 database(s) pass quick_check" in by_name["spool"].detail


@pytest.mark.integration
def test_a_broken_gateway_fails_with_remedies(tmp_path: Path, pty_port: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "spool.db").write_bytes(b"this is not a database" * 100)
    os.unlink(pty_port)
    site = _site(tmp_path, pty_port, "mqtt://127.0.0.1:1", state)
    out = io.StringIO()
    assert doctor_main(["-c", str(site)], out) == 1
    text = out.getvalue()
    print(text)
    assert f"FAIL  serial {pty_port}: no such device" in text
    assert "FAIL  broker mqtt://127.0.0.1:1: unreachable" in text
    assert "FAIL  spool" in text and "damaged" in text
    assert text.count("      -> ") >= 3  # every failure carries a remedy


def test_an_invalid_config_is_one_failing_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nid = 'no spaces allowed'\n")
    checks = gather(bad, broker=False)
    config = next(c for c in checks if c.name.startswith("config"))
    assert config.level is Level.FAIL and "check-config" in config.remedy
