"""The simulators answer as the Modbus specification says (application protocol V1.1b3, 6-7).

Raw request bytes go out on a plain socket or a PTY (no Modbus client in between) and the raw
reply bytes are compared: exception responses carry the request's function code with its high
bit set and exception code 01, 02 or 03. pymodbus 3.16's server answers most of these cases
otherwise (``drivers/sim/spec.py`` lists them); the simulator's checks come first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymodbus.framer import FramerRTU

from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import DeviceConfig, Parity, SerialBus, TcpBus, TcpFraming
from edge_agent.drivers.model import Table
from edge_agent.drivers.profile import load_profile
from edge_agent.drivers.sim import build_site, run_site
from edge_agent.drivers.sim.spec import (
    bits_exception,
    request_exception,
    rtu_frame_end,
    rtu_request_end,
)
from edge_agent.protocol.broker import MqttConfig
from edge_agent.protocol.clock import SystemClock
from tests.support.brokers import free_ports

UNIT = 1  # a streetlight: coil 0 is its only bit
# name -> (request PDU, reply PDU as the spec says)
CASES = {
    "FC3 quantity 0": (bytes.fromhex("03 0000 0000"), bytes.fromhex("83 03")),
    "FC3 quantity 126": (bytes.fromhex("03 0000 007E"), bytes.fromhex("83 03")),
    "FC1 quantity 2001": (bytes.fromhex("01 0000 07D1"), bytes.fromhex("81 03")),
    "FC4 quantity 0": (bytes.fromhex("04 0000 0000"), bytes.fromhex("84 03")),
    "FC16 byte count wrong": (bytes.fromhex("10 0000 0001 04 0001 0002"),
                              bytes.fromhex("90 03")),
    "FC5 value not 0/FF00": (bytes.fromhex("05 0000 1234"), bytes.fromhex("85 03")),
    "undefined function 0x41": (bytes.fromhex("41 0000"), bytes.fromhex("C1 01")),
    "coils 0-7, only coil 0 exists": (bytes.fromhex("01 0000 0008"), bytes.fromhex("81 02")),
    "coil 0 alone": (bytes.fromhex("01 0000 0001"), None),  # data: the spec's happy path
}


def _known(fc: int) -> bool:
    return fc in (7, 8, 11, 12, 17, 20, 21, 24, 43)


def test_request_checks_follow_the_spec_state_diagrams() -> None:
    assert request_exception(bytes.fromhex("03 0000 0001"), _known) is None
    assert request_exception(bytes.fromhex("03 0000 007D"), _known) is None
    assert request_exception(bytes.fromhex("03 FFFF 0002"), _known) == 2  # past 0xFFFF
    assert request_exception(bytes.fromhex("01 0000 07D0"), _known) is None
    assert request_exception(bytes.fromhex("0F 0000 0009 02 FF01"), _known) is None
    assert request_exception(bytes.fromhex("0F 0000 0009 01 FF"), _known) == 3
    assert request_exception(bytes.fromhex("17 0000 0001 0000 0001 02 0001"), _known) is None
    assert request_exception(bytes.fromhex("17 0000 007E 0000 0001 02 0001"), _known) == 3
    assert request_exception(bytes.fromhex("08 0000 0000"), _known) is None  # left to pymodbus
    assert request_exception(bytes.fromhex("64"), _known) == 1
    assert request_exception(bytes.fromhex("03 0000"), _known) == 3  # short PDU
    assert bits_exception(bytes.fromhex("01 0000 0008"), lambda t, a, n: n == 1) == 2
    assert bits_exception(bytes.fromhex("05 0000 FF00"), lambda t, a, n: t is Table.COIL) is None


def test_an_rtu_frame_is_delimited_by_its_crc() -> None:
    frame = _rtu(bytes.fromhex("41 0000"))
    assert rtu_frame_end(frame) == len(frame)
    assert rtu_frame_end(frame + _rtu(bytes.fromhex("03 0000 0001"))) == len(frame)
    assert rtu_frame_end(frame[:-1]) == 0
    read = _rtu(bytes.fromhex("03 0000 0001"))
    assert rtu_request_end(frame + read) == len(frame)
    assert rtu_request_end(read + frame) == len(read)
    assert all(rtu_request_end(read[:n]) == 0 for n in range(len(read)))  # never cut short
    write = _rtu(bytes.fromhex("10 0000 0002 04 0001 0002"))
    assert rtu_request_end(write) == len(write) and rtu_request_end(write[:-1]) == 0


def _rtu(pdu: bytes, unit: int = UNIT) -> bytes:
    adu = bytes([unit]) + pdu
    return adu + FramerRTU.compute_CRC(adu).to_bytes(2, "big")


def _device(bus: str) -> DeviceConfig:
    prof = load_profile("streetlight")
    return DeviceConfig(name=f"lamp-{bus}", bus=bus, unit_id=UNIT, profile=prof,
                        poll_interval_s=1.0, points=prof.points)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="spec-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(d: Path) -> AsyncIterator[tuple[int, int, Path]]:
    """A streetlight on Modbus TCP, one on RTU over TCP and one on a PTY."""
    mbap, rtu = free_ports(2)
    buses: list[SerialBus | TcpBus] = [
        TcpBus(name="eth", host="127.0.0.1", port=mbap),
        TcpBus(name="gw", host="127.0.0.1", port=rtu, framing=TcpFraming.RTU),
        SerialBus(name="rs485", port=str(d / "ttyA"), baudrate=9600, parity=Parity.NONE)]
    mqtt = MqttConfig(url="mqtt://127.0.0.1:1", scheme="mqtt", host="127.0.0.1", port=1)
    cfg = SiteConfig(source=Path("t.toml"), gateway_id="gw-test", site="t", mqtt=mqtt,
                     buses={b.name: b for b in buses},
                     devices=tuple(_device(b.name) for b in buses))
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_site(cfg, control_path=None, stop=stop, seed=1,
                                        site=build_site(cfg, SystemClock(), 1),
                                        on_ready=ready.set_result))
    done, _ = await asyncio.wait([task, ready], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready.done(), "simulator did not come up within 15 s"
    try:
        yield mbap, rtu, d / "ttyA"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, fd: int | None,
               request: bytes, reply_len: int) -> bytes:
    if writer is not None:
        writer.write(request)
        await writer.drain()
    else:
        assert fd is not None
        os.write(fd, request)
    return await asyncio.wait_for(reader.readexactly(reply_len), 5)


def test_simulators_answer_bad_requests_with_the_spec_s_exception_bytes(short_dir: Path) -> None:
    async def main() -> None:
        async with serving(short_dir) as (mbap, rtu, pty):
            r, w = await asyncio.open_connection("127.0.0.1", mbap)
            for tid, (name, (pdu, want)) in enumerate(CASES.items(), start=1):
                head = struct.pack(">HHHB", tid, 0, len(pdu) + 1, UNIT)
                expect = want or bytes.fromhex("01 01 01")  # FC1, 1 byte, coil 0 (off by day)
                got = await _ask(r, w, None, head + pdu, 7 + len(expect))
                assert got[:7] == struct.pack(">HHHB", tid, 0, len(expect) + 1, UNIT), name
                assert got[7:9] == expect[:2], f"Modbus TCP, {name}: {got.hex(' ')}"
            w.close()
            await w.wait_closed()
            # RTU over TCP and a real PTY: each bad frame is answered, and so is the next.
            r, w = await asyncio.open_connection("127.0.0.1", rtu)
            await _rtu_cases(r, w, None, "RTU over TCP")
            w.close()
            await w.wait_closed()
            fd = os.open(pty, os.O_RDWR | os.O_NOCTTY)
            try:
                reader = asyncio.StreamReader()
                loop = asyncio.get_running_loop()
                loop.add_reader(fd, lambda: reader.feed_data(os.read(fd, 512)))
                try:
                    await _rtu_cases(reader, None, fd, "RTU on a PTY")
                finally:
                    loop.remove_reader(fd)
            finally:
                os.close(fd)

    asyncio.run(main())


async def _rtu_cases(r: asyncio.StreamReader, w: asyncio.StreamWriter | None, fd: int | None,
                     where: str) -> None:
    valid = bytes.fromhex("03 0000 0001")
    for name, (pdu, want) in CASES.items():
        if want is None:
            continue
        got = await _ask(r, w, fd, _rtu(pdu), 5)
        assert got == _rtu(want), f"{where}, {name}: {got.hex(' ')}"
        # The next valid read is answered: function 3, 2 bytes, its CRC.
        got = await _ask(r, w, fd, _rtu(valid), 7)
        assert got[:3] == bytes.fromhex("01 03 02") and got == _rtu(got[1:5]), where
