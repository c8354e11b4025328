"""Sparkplug B end to end: the real agent, simulators and a private mosquitto, read by a host.

The host is a paho subscriber decoding with pysparkplug (not the agent's codec). Each test
names the statements of Sparkplug 3.0 it checks ([tck-id-...]).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pysparkplug as psp
import pytest

from edge_agent.protocol.readings import Quality, Reading
from edge_agent.tools.devbroker import Mosquitto
from tests.support.sitekit import Collector, agent, control, simulator, write_site
from tests.support.sparkplug_host import Seen, SparkplugHost, bdseq_of, seq_of

pytestmark = [pytest.mark.integration, pytest.mark.serial]

DEVICES = [("meter", "rs485", 1, "energy_meter"), ("lamp", "rs485", 3, "streetlight"),
           ("cabinet", "lan", 1, "signal_cabinet")]
NAMES = {d[0] for d in DEVICES}


def _site(tmp: Path, sparkplug: str) -> Path:
    site = write_site(tmp, DEVICES, poll_s=0.5, health_s=1.0, extra=sparkplug)
    # A short keepalive, so the broker sends the NDEATH will of a killed agent within seconds.
    site.write_text(site.read_text().replace('topic_prefix = "edge"',
                                             'topic_prefix = "edge"\nkeepalive_s = 2'))
    return site


def _log(tmp: Path) -> str:
    return (tmp / "agent.log").read_text()[-4000:]


def _births(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if s.kind == "NBIRTH"]


def _dbirths_after(seen: list[Seen], nbirth_index: int) -> set[str]:
    return {s.device for s in seen[nbirth_index:] if s.kind == "DBIRTH" and s.device}


def _check_seq(seen: list[Seen]) -> None:
    # [tck-id-payloads-sequence-num-zero-nbirth] [tck-id-payloads-sequence-num-incrementing]
    # [tck-id-payloads-sequence-num-always-included] [tck-id-payloads-ndeath-seq]
    expected: int | None = None
    for s in seen:
        if s.kind in ("NDEATH", "NCMD", "DCMD", "STATE"):
            continue
        seq = seq_of(s)
        if s.kind == "NBIRTH":
            assert seq == 0
        elif expected is not None:
            assert seq == expected, f"{s.topic}: seq {seq}, expected {expected}"
        expected = (seq + 1) % 256


def test_births_data_rebirth_device_loss_and_hostile_commands(
        tmp_path: Path, broker: Mosquitto) -> None:
    site = _site(tmp_path, '[sparkplug]\nenabled = true\ngroup_id = "city"\n')
    host = SparkplugHost(broker.port)
    ours = Collector(broker.port)
    try:
        with simulator(site, tmp_path) as sock, agent(site, broker.url, tmp_path):
            # [tck-id-payloads-dbirth-order]: NBIRTH first, then a DBIRTH per online device
            assert host.wait_for(lambda s: _births(s) and _dbirths_after(s, 0) == NAMES
                                 and sum(m.kind == "DDATA" for m in s) >= 6), _log(tmp_path)
            first = host.snapshot()
            assert first[0].kind == "NBIRTH"
            bdseq = bdseq_of(first[0])

            # A rebirth request: a new NBIRTH with the same bdSeq and seq 0, then DBIRTHs
            # [tck-id-operational-behavior-data-commands-rebirth-action-2]
            # [tck-id-operational-behavior-data-commands-rebirth-action-3]
            host.rebirth("city", "gw-test")
            assert host.wait_for(lambda s: len(_births(s)) == 2), _log(tmp_path)
            # Hostile commands: counted, logged, and the node goes on.
            host.publish("spBv1.0/city/NCMD/gw-test", b"\x0a\xff\xff\xff")
            host.publish("spBv1.0/city/DCMD/gw-test/lamp", psp.DCmd(
                timestamp=1, metrics=(psp.Metric(timestamp=None, name="dim_command",
                                                 datatype=psp.DataType.UINT16, value=10),)
            ).encode())
            host.publish("spBv1.0/city/DCMD/gw-test/lamp", b"\x12\x01")
            n2 = next(i for i, s in enumerate(host.snapshot()) if s.kind == "NBIRTH" and i > 0)
            assert host.wait_for(lambda s: _dbirths_after(s, n2) == NAMES)
            # Every point has been read by now: the rebirth's DBIRTHs carry values, no nulls
            # [tck-id-operational-behavior-data-publish-dbirth-values]
            for m in host.snapshot()[n2:]:
                if m.kind == "DBIRTH":
                    assert not [x.name for x in psp.DBirth.decode(m.payload).metrics
                                if x.is_null], m.topic

            # Device loss: DDEATH when the scheduler has it offline, DBIRTH when it is back.
            # [tck-id-operational-behavior-device-ddeath]
            control(sock, {"device": "lamp", "fault": "silent"})
            assert host.wait_for(lambda s: any(m.kind == "DDEATH" and m.device == "lamp"
                                               for m in s[n2:])), _log(tmp_path)
            control(sock, {"device": "lamp", "fault": "none"})
            assert host.wait_for(lambda s: _last_kind(s, "lamp") == "DBIRTH"), _log(tmp_path)
            assert ours.wait_for(lambda c: any(_spb(h).get("rejected") for h in c.health))
        seen = host.snapshot()
        readings = ours.snapshot()
        health = ours.health[-1]
    finally:
        host.close()
        ours.close()

    # QoS 0, not retained [tck-id-payloads-nbirth-qos] [tck-id-payloads-nbirth-retain]
    # [tck-id-payloads-dbirth-qos] [tck-id-payloads-ddata-qos] [tck-id-topics-ddeath-mqtt]
    for s in seen:
        if s.kind in ("NBIRTH", "DBIRTH", "DDATA", "DDEATH"):
            assert (s.qos, s.retain) == (0, False), s.topic
    _check_seq(seen)
    births = _births(seen)
    assert [bdseq_of(b) for b in births] == [bdseq, bdseq]
    # A stop publishes the NDEATH before disconnecting, with the session's bdSeq
    # [tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath]
    deaths = [s for s in seen if s.kind == "NDEATH"]
    assert [bdseq_of(d) for d in deaths] == [bdseq] and deaths[0].qos == 1

    _data_equals_our_readings(seen, readings)
    sp = _spb(health)
    assert sp["rejected"] == {"NCMD": 1, "DCMD": 1} and sp["dcmd_refused"] == 1, sp
    assert sp["rebirths"] == 1


def _spb(health: dict[str, object]) -> dict[str, object]:
    part = health.get("sparkplug", {})
    assert isinstance(part, dict)
    return part


def _last_kind(seen: list[Seen], device: str) -> str | None:
    kinds = [s.kind for s in seen if s.device == device and s.kind in ("DBIRTH", "DDEATH")]
    return kinds[-1] if kinds else None


def _data_equals_our_readings(seen: list[Seen], readings: list[Reading]) -> None:
    """Every DDATA metric, decoded through its DBIRTH by pysparkplug, is one of our readings
    with the same name, timestamp and value; its datatype is the one the DBIRTH declared."""
    ours = {(r.device, r.point, r.ts_ms): r for r in readings}
    births: dict[str, psp.DBirth] = {}
    checked = 0
    for s in seen:
        if s.kind == "DBIRTH" and s.device:
            births[s.device] = psp.DBirth.decode(s.payload)
            # [tck-id-topics-dbirth-metrics]: name, datatype and value (or is_null) each;
            # [tck-id-payloads-name-birth-data-requirement]: and a timestamp
            assert all(m.name and m.datatype is not psp.DataType.UNKNOWN
                       and m.timestamp is not None for m in births[s.device].metrics)
        elif s.kind == "DDATA" and s.device:
            birth = births[s.device]
            for m in psp.DData.decode(s.payload, birth=birth).metrics:
                # [tck-id-payloads-name-birth-data-requirement]
                assert m.name is not None and m.timestamp is not None
                r = ours[(s.device, m.name, m.timestamp)]
                assert m.datatype is birth.get_dtype(m.name)
                if r.quality is Quality.GOOD:
                    assert m.value == pytest.approx(r.value) if isinstance(r.value, float) \
                        else m.value == r.value, (s.device, m.name, m.value, r.value)
                else:
                    assert m.is_null
                checked += 1
    assert checked >= 20


def test_kill_9_leaves_the_ndeath_will_and_the_next_session_takes_the_next_bdseq(
        tmp_path: Path, broker: Mosquitto) -> None:
    # [tck-id-payloads-ndeath-will-message] [tck-id-payloads-ndeath-will-message-qos]
    # [tck-id-payloads-ndeath-will-message-retain] [tck-id-topics-nbirth-bdseq-increment]
    # [tck-id-payloads-ndeath-bdseq] [tck-id-principles-persistence-clean-session-311]
    site = _site(tmp_path, '[sparkplug]\nenabled = true\ngroup_id = "city"\n')
    host = SparkplugHost(broker.port)
    try:
        with simulator(site, tmp_path):
            with agent(site, broker.url, tmp_path) as proc:
                assert host.wait_for(lambda s: _births(s)), _log(tmp_path)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                assert host.wait_for(lambda s: any(m.kind == "NDEATH" for m in s)), \
                    "no NDEATH will after kill -9"
            with agent(site, broker.url, tmp_path):
                assert host.wait_for(lambda s: len(_births(s)) == 2), _log(tmp_path)
        seen = host.snapshot()
    finally:
        host.close()
    first, second = _births(seen)[:2]
    will = next(s for s in seen if s.kind == "NDEATH")
    assert (will.qos, will.retain) == (1, False)
    assert bdseq_of(will) == bdseq_of(first)
    assert bdseq_of(second) == (bdseq_of(first) + 1) % 256


def test_births_wait_for_the_primary_host_and_end_when_it_goes_offline(
        tmp_path: Path, broker: Mosquitto) -> None:
    # [tck-id-message-flow-edge-node-birth-publish-phid-wait]
    # [tck-id-operational-behavior-edge-node-birth-sequence-wait]
    # [tck-id-message-flow-edge-node-birth-publish-phid-wait-online]
    # [tck-id-message-flow-edge-node-birth-publish-phid-offline]
    # [tck-id-operational-behavior-edge-node-termination-host-offline]
    site = _site(tmp_path, '[sparkplug]\nenabled = true\ngroup_id = "city"\n'
                           'primary_host_id = "scada-1"\n')
    host = SparkplugHost(broker.port)
    ours = Collector(broker.port)
    state = "spBv1.0/STATE/scada-1"
    t0 = int(time.time() * 1000)
    try:
        # Another host's STATE online is not ours to follow.
        host.publish("spBv1.0/STATE/scada-2", json.dumps({"online": True, "timestamp": t0})
                     .encode(), qos=1, retain=True)
        with simulator(site, tmp_path), agent(site, broker.url, tmp_path):
            # Connected and polling, with readings going out on our own topic: still no birth.
            assert ours.wait_for(lambda c: any(_spb(h).get("connected") for h in c.health)
                                 and len(c.batches) >= 4)
            assert _births(host.snapshot()) == []
            host.publish(state, json.dumps({"online": True, "timestamp": t0}).encode(),
                         qos=1, retain=True)
            assert host.wait_for(lambda s: len(_births(s)) == 1), _log(tmp_path)
            host.publish(state, json.dumps({"online": False, "timestamp": t0 + 1}).encode(),
                         qos=1, retain=True)
            assert host.wait_for(lambda s: any(m.kind == "NDEATH" for m in s)), _log(tmp_path)
            # Reconnected, the retained STATE says offline: no birth until it is online again.
            batches = len(ours.batches)
            assert ours.wait_for(lambda c: len(c.batches) >= batches + 4)
            assert len(_births(host.snapshot())) == 1
            host.publish(state, json.dumps({"online": True, "timestamp": t0 + 2}).encode(),
                         qos=1, retain=True)
            assert host.wait_for(lambda s: len(_births(s)) == 2), _log(tmp_path)
        seen = host.snapshot()
    finally:
        for topic in (state, "spBv1.0/STATE/scada-2"):
            host.publish(topic, b"", qos=1, retain=True)  # clear the retained STATE
        host.close()
        ours.close()
    births = _births(seen)
    death = next(s for s in seen if s.kind == "NDEATH")
    assert bdseq_of(death) == bdseq_of(births[0])
    assert bdseq_of(births[1]) == (bdseq_of(births[0]) + 1) % 256
    _check_seq(seen)


def test_a_broker_restart_gives_a_new_session_with_the_next_bdseq(
        tmp_path: Path, own_broker: Mosquitto) -> None:
    # [tck-id-topics-nbirth-bdseq-increment] [tck-id-payloads-nbirth-bdseq-repeat]
    # [tck-id-message-flow-edge-node-birth-publish-nbirth-payload-bdSeq]
    site = _site(tmp_path, '[sparkplug]\nenabled = true\ngroup_id = "city"\n')
    host = SparkplugHost(own_broker.port)
    try:
        with simulator(site, tmp_path), agent(site, own_broker.url, tmp_path):
            assert host.wait_for(lambda s: _births(s)), _log(tmp_path)
            own_broker.stop()
            # Not a timing assertion: the node tries while the broker is away, and those
            # refused tries send no CONNECT, so they must cost no bdSeq.
            time.sleep(2.0)
            own_broker.start()
            # The node births at once on its new connection, perhaps before this host is
            # back; a host that missed them asks for a rebirth, which keeps the bdSeq.
            assert host.wait_for(lambda _s: host.connects == 2)
            time.sleep(0.5)  # not a timing assertion: lets the subscription settle
            host.rebirth("city", "gw-test")
            assert host.wait_for(lambda s: len(_births(s)) >= 2
                                 and _dbirths_after(s, s.index(_births(s)[-1])) == NAMES), \
                _log(tmp_path)
        seen = host.snapshot()
    finally:
        host.close()
    first, *later = _births(seen)
    assert later and all(bdseq_of(b) == (bdseq_of(first) + 1) % 256 for b in later)
    # This host missed what the node sent while it was reconnecting: seq is checked from the
    # rebirth on.
    _check_seq(seen[seen.index(later[-1]):])
