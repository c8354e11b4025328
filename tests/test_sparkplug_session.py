"""The Sparkplug session rules, pure (no broker): each test cites the statements it checks.

Payloads are read back with pysparkplug, an independent decoder, never only with ours.
"""

from __future__ import annotations

import pysparkplug as psp
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.model import DataType as PointType
from edge_agent.drivers.model import Point, Table
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.sparkplug.session import Outgoing, Session, death_payload
from tests.support import sparkplug_pb as spb


def _device(name: str) -> DeviceConfig:
    pts = (Point("power", Table.INPUT_REGISTER, 0, PointType.FLOAT32, 2, unit="W"),
           Point("count", Table.INPUT_REGISTER, 2, PointType.INT16, 1),
           Point("on", Table.COIL, 0, PointType.BOOL, 1),
           Point("level", Table.HOLDING_REGISTER, 3, PointType.UINT16, 1, scale=0.5))
    return DeviceConfig(name, "b", 1, DeviceProfile("p", "", pts), 1.0, pts)


def _session() -> Session:
    s = Session("city", "gw-1", [_device("m1"), _device("m2")])
    s.connected(7)
    return s.at(1_000)


def _birth(out: Outgoing) -> psp.NBirth:
    return psp.NBirth.decode(out.payload)


def test_nbirth_has_seq_0_bdseq_and_rebirth_false_without_alias() -> None:
    # [tck-id-topics-nbirth-topic] [tck-id-topics-nbirth-seq-num] [tck-id-payloads-nbirth-bdseq]
    # [tck-id-payloads-nbirth-rebirth-req]
    # [tck-id-operational-behavior-data-commands-rebirth-datatype]
    # [tck-id-operational-behavior-data-commands-rebirth-name-aliases]
    s = _session()
    s.set_status("m1", "online")
    out = s.births()
    assert [o.topic for o in out] == ["spBv1.0/city/NBIRTH/gw-1", "spBv1.0/city/DBIRTH/gw-1/m1"]
    nb = _birth(out[0])
    assert nb.seq == 0 and nb.timestamp == 1_000
    by_name = {m.name: m for m in nb.metrics}
    assert by_name["bdSeq"].datatype is psp.DataType.INT64 and by_name["bdSeq"].value == 7
    rebirth = by_name["Node Control/Rebirth"]
    assert (rebirth.datatype, rebirth.value, rebirth.alias) == (psp.DataType.BOOLEAN, False, None)


def test_ndeath_holds_only_bdseq_and_no_seq() -> None:
    # [tck-id-topics-ndeath-payload] [tck-id-topics-ndeath-seq] [tck-id-payloads-ndeath-bdseq]
    d = psp.NDeath.decode(death_payload(7, 5))
    assert (d.bd_seq_metric.name, d.bd_seq_metric.value) == ("bdSeq", 7)
    assert d.bd_seq_metric.datatype is psp.DataType.INT64
    raw = spb.Payload.FromString(death_payload(7, 5))
    assert not raw.HasField("seq") and len(raw.metrics) == 1


def test_dbirth_has_every_metric_name_alias_type_and_current_value_or_null() -> None:
    # [tck-id-topics-dbirth-metric-reqs] [tck-id-topics-dbirth-metrics]
    # [tck-id-payloads-alias-birth-requirement]
    # [tck-id-operational-behavior-data-publish-dbirth-values]
    s = _session()
    s.observe([Reading("m1", "power", 900, 12.5), Reading("m1", "on", 900, True)])
    s.set_status("m1", "online")
    db = psp.DBirth.decode(s.births()[1].payload)
    got = {m.name: (m.datatype, m.value, m.is_null, m.alias is not None) for m in db.metrics}
    assert got == {"power": (psp.DataType.FLOAT, 12.5, False, True),
                   "count": (psp.DataType.INT16, None, True, True),
                   "on": (psp.DataType.BOOLEAN, True, False, True),
                   "level": (psp.DataType.DOUBLE, None, True, True)}


def test_aliases_are_unique_across_the_node_and_data_carries_only_aliases() -> None:
    # [tck-id-payloads-alias-uniqueness] [tck-id-payloads-alias-data-cmd-requirement]
    # [tck-id-payloads-metric-datatype-not-req] [tck-id-topics-ddata-topic]
    s = _session()
    s.set_status("m1", "online")
    s.set_status("m2", "online")
    out = s.births()
    aliases = [m.alias for o in out[1:] for m in psp.DBirth.decode(o.payload).metrics]
    assert len(aliases) == 8 and len(set(aliases)) == 8
    data = s.data([Reading("m2", "count", 1_100, -3), Reading("m2", "power", 1_050, 1.0)])
    assert [o.topic for o in data] == ["spBv1.0/city/DDATA/gw-1/m2"]
    raw = spb.Payload.FromString(data[0].payload)
    assert all(not m.HasField("name") and not m.HasField("datatype") for m in raw.metrics)
    # decoded by alias through the DBIRTH, oldest first
    # [tck-id-operational-behavior-data-publish-dbirth-order]
    dd = psp.DData.decode(data[0].payload, birth=psp.DBirth.decode(out[2].payload))
    assert [(m.name, m.value, m.timestamp) for m in dd.metrics] == [
        ("power", 1.0, 1_050), ("count", -3, 1_100)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["data", "online", "offline", "rebirth"]), max_size=600))
def test_seq_counts_every_message_from_0_after_each_nbirth_and_wraps_at_255(ops: list[str]) -> None:
    # [tck-id-payloads-sequence-num-zero-nbirth] [tck-id-payloads-sequence-num-incrementing]
    # [tck-id-payloads-dbirth-seq-inc] [tck-id-payloads-ddata-seq-inc]
    # [tck-id-payloads-ddeath-seq-inc] [tck-id-payloads-nbirth-bdseq-repeat]
    s = _session()
    sent = s.births()
    for i, op in enumerate(ops):
        if op == "data":
            sent += s.data([Reading("m1", "count", i, i % 100)])
        elif op == "rebirth":
            sent += s.births()
        else:
            sent += s.set_status("m1", op)
    expected = None
    for o in sent:
        seq = _seq(o.payload)
        if o.kind == "NBIRTH":
            assert seq == 0
            assert {m.name: m.value for m in _birth(o).metrics}["bdSeq"] == 7
        else:
            assert seq == expected
        expected = (seq + 1) % 256
    assert [o.kind for o in sent].count("NBIRTH") == 1 + ops.count("rebirth")


def _seq(raw: bytes) -> int:
    p = spb.Payload.FromString(raw)
    assert p.HasField("seq") and p.HasField("timestamp")
    return int(p.seq)


def test_dbirth_and_ddeath_follow_the_scheduler_state() -> None:
    # [tck-id-operational-behavior-device-ddeath] [tck-id-topics-ddeath-topic]
    # [tck-id-message-flow-device-birth-publish-nbirth-wait]
    s = _session()
    assert s.set_status("m1", "online") == []          # nothing before the NBIRTH
    assert s.data([Reading("m1", "count", 1, 1)]) == []
    s.births()
    assert [o.kind for o in s.set_status("m1", "offline")] == ["DDEATH"]
    assert s.data([Reading("m1", "count", 2, 2)]) == []  # no DDATA for a dead device
    assert s.set_status("m1", "offline") == []
    back = s.set_status("m1", "online")
    assert [o.kind for o in back] == ["DBIRTH"]
    # the DBIRTH carries the reading remembered while the device was dead
    db = psp.DBirth.decode(back[0].payload)
    assert {m.name: m.value for m in db.metrics}["count"] == 2


def test_bad_readings_go_out_as_nulls() -> None:
    s = _session()
    s.set_status("m1", "online")
    s.births()
    out = s.data([Reading("m1", "power", 5, None, Quality.COMM_ERROR)])
    m = spb.Payload.FromString(out[0].payload).metrics[0]
    assert m.is_null and m.WhichOneof("value") is None


def test_births_carry_the_newest_value_whatever_order_readings_arrive_in() -> None:
    # [tck-id-operational-behavior-data-publish-dbirth-values]: the current value
    s = _session()
    s.observe([Reading("m1", "count", 20, 2)])
    s.observe([Reading("m1", "count", 10, 1)])  # a batch sealed later with an older reading
    s.set_status("m1", "online")
    db = psp.DBirth.decode(s.births()[1].payload)
    assert {m.name: m.value for m in db.metrics}["count"] == 2
