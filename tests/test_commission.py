"""read / write commissioning commands: profile checks, then real exchanges with a simulator."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import serial

from edge_agent.config.loader import load_config
from edge_agent.drivers.modbus.transport import Reply
from edge_agent.protocol.errors import ConfigError
from edge_agent.tools.commission import (
    _ask,
    check_write,
    describe_failure,
    find_target,
    parse_value,
    port_in_use,
    read_main,
    write_main,
)
from tests.support.sitekit import control, simulator, write_site


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return write_site(tmp_path, [("meter", "rs485", 1, "energy_meter"),
                                 ("lamp", "rs485", 3, "streetlight"),
                                 ("water", "rs485", 4, "water_meter")])


def test_targets_are_found_or_the_known_names_listed(site: Path) -> None:
    cfg = load_config(site)
    dev, pt = find_target(cfg, "lamp", "dim_command")
    assert (dev.unit_id, pt.address) == (3, 0)
    with pytest.raises(ConfigError, match="devices: meter, lamp, water"):
        find_target(cfg, "lamp-9", "dim_command")
    with pytest.raises(ConfigError, match="points: relay_on, dim_command"):
        find_target(cfg, "lamp", "dimm")


def test_values_are_parsed_by_type_and_checked_against_the_profile(site: Path) -> None:
    cfg = load_config(site)
    lamp_dim = find_target(cfg, "lamp", "dim_command")
    relay = find_target(cfg, "lamp", "relay_on")
    assert parse_value(relay[1], "on") is True and parse_value(relay[1], "0") is False
    with pytest.raises(ValueError, match="on/off"):
        parse_value(relay[1], "maybe")
    assert parse_value(lamp_dim[1], "40") == 40
    assert check_write(*lamp_dim, 40) == [40]
    assert check_write(*relay, True) == [True]
    with pytest.raises(ValueError, match=r"lamp\.dim_command: 101 is above the profile's "
                                         r"maximum 100"):
        check_write(*lamp_dim, 101)
    with pytest.raises(ValueError, match="read-only in profile 'streetlight'"):
        check_write(*find_target(cfg, "lamp", "dim_actual"), 10)
    with pytest.raises(ValueError, match="read-only"):
        check_write(*find_target(cfg, "meter", "voltage_l1"), 230.0)
    with pytest.raises(ValueError, match="cannot be represented exactly"):
        check_write(*lamp_dim, 40.5)


def test_failures_are_explained() -> None:
    assert "illegal data address" in describe_failure(Reply(exception_code=2), "x")
    assert "no reply (timeout)" in describe_failure(Reply(error="timeout"), "x")


@pytest.mark.integration
def test_read_and_write_against_a_simulated_device(site: Path, tmp_path: Path) -> None:
    with simulator(site, tmp_path) as sock:
        control(sock, {"cmd": "freeze", "on": True})
        out = io.StringIO()
        assert read_main(["-c", str(site), "water", "volume"], out) == 0, out.getvalue()
        regs = control(sock, {"cmd": "registers", "device": "water"})["registers"]
        lo, hi = int(regs["holding_register"]["0"]), int(regs["holding_register"]["1"])
        # Litres at scale 0.001: three decimals, never a float's binary noise.
        litres = (hi << 16) | lo
        assert f"= {litres // 1000}.{litres % 1000:03d} m³" in out.getvalue()

        before = control(sock, {"cmd": "registers", "device": "lamp"})["registers"]
        asked: list[str] = []
        out = io.StringIO()

        def say_no(question: str) -> bool:
            asked.append(question)
            return False

        rc = write_main(["-c", str(site), "lamp", "dim_command", "42"], out, confirm=say_no)
        assert rc == 1 and "nothing written" in out.getvalue()
        assert "write 42 % to lamp.dim_command" in asked[0] and "sending [42]" in asked[0]
        assert control(sock, {"cmd": "registers", "device": "lamp"})["registers"] == before

        out = io.StringIO()
        rc = write_main(["-c", str(site), "lamp", "dim_command", "42"], out,
                        confirm=lambda q: True)
        assert rc == 0, out.getvalue()
        assert "written: lamp.dim_command" in out.getvalue()
        doc = control(sock, {"cmd": "registers", "device": "lamp"})
        assert doc["registers"]["holding_register"]["0"] == 42
        assert control(sock, {"cmd": "stats", "device": "lamp"})["writes"] == 1

        # A device that refuses: its exception is explained, and reading says so too.
        control(sock, {"device": "lamp", "fault": "exception", "code": 3})
        out = io.StringIO()
        rc = write_main(["-c", str(site), "lamp", "dim_command", "7", "--yes"], out)
        assert rc == 1 and "exception 3: illegal data value" in out.getvalue(), out.getvalue()
        control(sock, {"device": "lamp", "fault": "silent"})
        out = io.StringIO()
        assert read_main(["-c", str(site), "lamp", "dim_command"], out) == 1
        assert "no reply" in out.getvalue()


@pytest.mark.integration
def test_commands_refuse_a_port_the_agent_holds(site: Path, tmp_path: Path) -> None:
    with simulator(site, tmp_path):
        port = str(tmp_path / "rs485")
        assert port_in_use(port) is None
        holder = serial.Serial(port, exclusive=True)
        try:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                assert read_main(["-c", str(site), "lamp", "dim_command"]) == 2
                assert write_main(["-c", str(site), "lamp", "dim_command", "1", "--yes"]) == 2
            assert err.getvalue().count("is in use") == 2
            assert "stop the agent first" in err.getvalue()
        finally:
            holder.close()


def test_a_read_only_point_is_refused_before_the_port_is_touched(site: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = write_main(["-c", str(site), "lamp", "dim_actual", "5"], io.StringIO())
    assert rc == 2 and "read-only" in err.getvalue()


def test_confirmation_without_a_terminal_refuses_and_names_yes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert _ask("write 1 to x?") is False
    assert "add --yes" in err.getvalue()
