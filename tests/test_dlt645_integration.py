"""DL/T 645 end to end with real processes: simulated meters on a socat PTY, the agent, mosquitto,
the ingest storing decoded readings in SQLite; and the scan finding five meters it was not told.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from edge_agent.config.loader import load_config
from edge_agent.drivers.dlt645.identifiers import IDENTIFIERS
from edge_agent.fleet.ingest.store import IngestStore
from edge_agent.tools.devbroker import Mosquitto
from edge_agent.tools.scan import scan_main
from tests.support.sitekit import agent, control, ingest_process, simulator

pytestmark = [pytest.mark.integration, pytest.mark.serial]

FLATS = {"flat-101": "000000000101", "flat-102": "000000000102", "flat-201": "000000000201"}


def _site(tmp: Path, addresses: dict[str, str], poll_s: float = 1.0) -> Path:
    lines = ['[gateway]', 'id = "gw-meters"', f'state_dir = "{tmp / "state"}"',
             "health_interval_s = 1", '[mqtt]', 'url = "mqtt://127.0.0.1:1"',
             'topic_prefix = "edge"', "[batch]", "window_s = 0.5", "max_silence_s = 3600",
             # The simulator harness waits for tmp/rs485: the meter line lives there.
             "[buses.residential]", 'type = "serial"', 'protocol = "dlt645"',
             f'port = "{tmp / "rs485"}"', "baudrate = 2400", 'parity = "N"']
    for name, address in addresses.items():
        lines += [f"[devices.{name}]", 'bus = "residential"', f'address = "{address}"',
                  'profile = "dlt645_meter"', f"poll_interval_s = {poll_s}"]
    path = tmp / "site.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(store: IngestStore) -> list[tuple[str, str, str, int | None, float | None, str | None]]:
    return [(str(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5]) for r in store.query(
        "SELECT device, point, quality, exception_code, value_real, value_text FROM readings "
        "ORDER BY id")]


def test_simulated_meters_reach_the_ingest_decoded(tmp_path: Path, broker: Mosquitto) -> None:
    site = _site(tmp_path, FLATS)
    cfg = load_config(site)
    db = tmp_path / "ingest.db"
    with simulator(site, tmp_path) as sock, \
            ingest_process(broker.url, f"sqlite:///{db}", tmp_path, "--client-id", "m"):
        control(sock, {"cmd": "freeze", "on": True})
        served = {name: control(sock, {"cmd": "registers", "device": name})["registers"]
                  ["dlt645"] for name in FLATS}
        control(sock, {"device": "flat-201", "fault": "exception", "code": 2})
        store = IngestStore(f"sqlite:///{db}")
        try:
            with agent(site, broker.url, tmp_path):
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    rows = _rows(store)
                    seen = {(d, p) for d, p, q, *_ in rows if q == "good"}
                    refused = {d for d, _, q, code, *_ in rows
                               if q == "device_exception" and code == 2}
                    if len(seen) == 2 * 21 and refused == {"flat-201"}:
                        break
                    time.sleep(0.3)
            rows = _rows(store)
        finally:
            store.close()
    log = (tmp_path / "agent.log").read_text()
    good = {(d, p): (real, text) for d, p, q, _, real, text in rows if q == "good"}
    assert len(good) == 2 * 21, (sorted(good)[:5], log[-2000:])
    # Each stored value is what the frozen simulated meter serves, decoded from its BCD.
    for name in ("flat-101", "flat-102"):
        device = next(d for d in cfg.devices if d.name == name)
        for p in device.meter_points:
            real, text = good[(name, p.name)]
            if p.fmt.kind.value == "number":
                expected = served[name][f"{p.di:08X}"] / 10 ** IDENTIFIERS[p.di].fmt.decimals
                assert real == pytest.approx(expected), (name, p.name)
            else:
                assert text is not None and len(text) in (8, 10), (name, p.name, text)
    # The meter answering every read with error byte 02 ("no requested data"): each point a
    # device exception carrying that byte, never a value.
    assert not any(d == "flat-201" for d, *_ in good)
    refused = {p for d, p, q, code, *_ in rows
               if d == "flat-201" and q == "device_exception" and code == 2}
    assert refused == {p.name for p in cfg.devices[2].meter_points}


def test_scan_finds_five_meters_at_unknown_addresses(tmp_path: Path) -> None:
    # Five meters differing in their lowest byte: the broadcast collides, then one round of
    # 100 patterns finds each (the deeper narrowing is tested pure, and on the paced line in
    # hil_tests). The scan's default reply wait, so a loaded machine cannot make it miss one.
    five = {"a": "230401000017", "b": "230401000023", "c": "230401000112",
            "d": "230402000018", "e": "190000005566"}
    site = _site(tmp_path, five)
    out = io.StringIO()
    draft = tmp_path / "draft.toml"
    with simulator(site, tmp_path):
        status = scan_main([str(tmp_path / "rs485"), "--protocol", "dlt645", "--bauds", "2400",
                            "--out", str(draft)], out=out)
    text = out.getvalue()
    print(text)
    assert status == 0, text
    assert "2400 8E1: skipped" in text  # a PTY refuses even parity; 8N1 is tried next
    for address in five.values():
        assert f"meter {address}: forward active energy" in text
    assert "5 meter(s) in" in text and "101 probes (1 collisions" in text
    # The draft loads once its gateway is named, with every meter on a DL/T 645 bus.
    draft.write_text(draft.read_text().replace('id = "CHANGE-ME"', 'id = "gw-1"'))
    cfg = load_config(draft)
    assert sorted(d.address for d in cfg.devices) == sorted(five.values())
