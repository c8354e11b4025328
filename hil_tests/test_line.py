"""The line model on its own: pacing, reply timing, faults and their counters (pure, instant)."""

from __future__ import annotations

import pytest
from pymodbus.framer.rtu import FramerRTU

from hil_tests.line import MASTER, LineModel, char_time_s, crc_ok


def frame(body: bytes) -> bytes:
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


REQUEST = frame(bytes([17, 3, 0, 0, 0, 1]))   # read one holding register of unit 17
REPLY = frame(bytes([17, 3, 2, 0, 42]))


def line(**kw: object) -> LineModel:
    m = LineModel(baudrate=9600, parity="E", **kw)  # type: ignore[arg-type]
    m.add_drop("a", latency_s=0.005)
    m.add_drop("b")
    return m


def test_character_time_counts_start_data_parity_stop() -> None:
    assert char_time_s(9600, "E", 1) == pytest.approx(11 / 9600)
    assert char_time_s(19200, "N", 1) == pytest.approx(10 / 19200)
    assert LineModel(baudrate=38400).t35_s == 0.00175


def test_a_request_reaches_every_drop_whole_once_its_last_byte_has_crossed() -> None:
    m = line()
    out = m.from_master(REQUEST, now=1.0, master_baud=9600)
    assert {d.to for d in out} == {"a", "b"}
    end = 1.0 + len(REQUEST) * m.char_s
    assert all(d.due == [pytest.approx(end)] * len(REQUEST) and d.data == REQUEST for d in out)
    assert m.wire_free_at == pytest.approx(end)


def test_a_reply_waits_for_t35_and_turnaround_then_is_paced_byte_by_byte() -> None:
    m = line()
    m.from_master(REQUEST, now=1.0)
    heard = m.drops["a"].heard_end
    (d,) = m.from_drop("a", REPLY, now=heard + 0.0001)
    start = heard + m.t35_s + 0.005
    assert d.to == MASTER
    assert d.due == [pytest.approx(start + (i + 1) * m.char_s) for i in range(len(REPLY))]


def test_the_wire_carries_one_frame_at_a_time() -> None:
    m = line()
    m.from_master(REQUEST, now=1.0)
    busy_until = m.wire_free_at
    (d,) = m.noise(4, now=1.0)  # heard only by the master: receivers discard it
    assert d.to == MASTER and d.due[0] == pytest.approx(busy_until + m.char_s)
    assert m.stats.noise_bytes == 4 and m.stats.discarded_by_devices == 1


def test_unplugged_drops_hear_nothing_and_say_nothing() -> None:
    m = line()
    m.drops["a"].plugged = False
    assert [d.to for d in m.from_master(REQUEST, now=0.0)] == ["b"]
    assert m.from_drop("a", REPLY, now=0.1) == []
    assert m.drops["a"].lost_unplugged == 1


def test_crc_corruption_is_seeded_counted_and_kept_from_the_devices() -> None:
    def run(seed: int) -> tuple[int, int]:
        m = line(seed=seed, crc_rate=0.5)
        delivered = sum(bool(m.from_master(REQUEST, now=float(i))) for i in range(200))
        return m.stats.corrupted_requests, delivered

    corrupted, delivered = run(7)
    assert run(7) == (corrupted, delivered)          # same seed, same faults
    assert 60 < corrupted < 140
    assert delivered == 200 - corrupted              # corrupted requests reach nobody


def test_corrupted_replies_reach_the_master_with_a_bad_crc() -> None:
    m = line(seed=1, crc_rate=1.0)
    m.from_master(REQUEST, now=0.0)
    m.crc_rate = 1.0
    (d,) = m.from_drop("b", REPLY, now=0.1)
    assert not crc_ok(d.data) and d.data[:-1] == REPLY[:-1]
    assert m.stats.corrupted_replies == 1


def test_a_master_at_the_wrong_baud_is_garbled() -> None:
    m = line(seed=3)
    out = m.from_master(REQUEST, now=0.0, master_baud=19200)
    assert out == [] and m.stats.garbled_frames == 1


def test_local_echo_returns_the_masters_own_bytes_paced() -> None:
    m = line(echo=True)
    echo = [d for d in m.from_master(REQUEST, now=0.0) if d.to == MASTER]
    assert echo and echo[0].data == REQUEST and len(set(echo[0].due)) == len(REQUEST)


def test_dropped_bytes_are_counted() -> None:
    m = line(seed=5, drop_rate=0.25)
    for i in range(100):
        m.from_master(REQUEST, now=float(i))
    assert 100 < m.stats.dropped_bytes < 300
