"""NCMD, DCMD and STATE intake: total over any bytes, every rejection saying why.

Commands are built with pysparkplug (an independent encoder) where they are well formed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pysparkplug as psp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config.loader import load_config
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.errors import SparkplugError
from edge_agent.runtime.sparkplug.intake import DeviceWrite, HostState, Rebirth, parse_message
from edge_agent.runtime.sparkplug.node import SparkplugNode
from edge_agent.runtime.sparkplug.session import Session
from tests.test_config import BASE, write
from tests.test_sparkplug_session import _device

NCMD = "spBv1.0/city/NCMD/gw-1"
DCMD = "spBv1.0/city/DCMD/gw-1/m1"
STATE = "spBv1.0/STATE/scada"


def _session() -> Session:
    return Session("city", "gw-1", [_device("m1")])


def _ncmd(*metrics: psp.Metric, ts: int = 1) -> bytes:
    return psp.NCmd(timestamp=ts, metrics=metrics).encode(include_dtypes=True)


REBIRTH = psp.Metric(timestamp=None, name="Node Control/Rebirth", datatype=psp.DataType.BOOLEAN,
                     value=True)


def test_a_rebirth_request_is_taken() -> None:
    # [tck-id-operational-behavior-data-commands-ncmd-rebirth-verb]
    # [tck-id-operational-behavior-data-commands-ncmd-rebirth-name]
    # [tck-id-operational-behavior-data-commands-ncmd-rebirth-value]
    assert parse_message(NCMD, _ncmd(REBIRTH), _session(), None) == Rebirth()


@pytest.mark.parametrize(("topic", "raw", "why"), [
    (NCMD, _ncmd(psp.Metric(timestamp=None, name="Node Control/Rebirth",
                            datatype=psp.DataType.BOOLEAN, value=False)), "Boolean true"),
    (NCMD, _ncmd(psp.Metric(timestamp=None, name="Node Control/Rebirth",
                            datatype=psp.DataType.INT32, value=1)), "Boolean true"),
    (NCMD, _ncmd(psp.Metric(timestamp=None, name="Node Control/Reboot",
                            datatype=psp.DataType.BOOLEAN, value=True)), "no writable metric"),
    (NCMD, _ncmd(), "no metric"),
    (NCMD, psp.NData(timestamp=1, seq=4, metrics=(REBIRTH,)).encode(), "no seq"),
    (NCMD, b"\xff\xff", "varint"),
    ("spBv1.0/city/NCMD/other-node", _ncmd(REBIRTH), "not one of this edge node"),
    ("spBv1.0/city/NDATA/gw-1", _ncmd(REBIRTH), "expected NCMD"),
    ("spBv1.0/city/DCMD/gw-1/nobody", _ncmd(REBIRTH), "does not have"),
    (DCMD, psp.DCmd(timestamp=1, metrics=(psp.Metric(
        timestamp=None, name="nope", datatype=psp.DataType.INT16, value=1),)).encode(),
     "not a metric of m1"),
    (DCMD, psp.DCmd(timestamp=1, metrics=(psp.Metric(
        timestamp=None, name="count", datatype=psp.DataType.STRING, value="x"),)).encode(),
     "not in the field of a INT16"),
    (STATE, b'{"online": "yes", "timestamp": 1}', "'online' must be"),
    (STATE, b'{"online": true, "timestamp": 1.5}', "float"),
    (STATE, b'{"online": true}', "'timestamp' must be"),
    (STATE, b"[1]", "JSON object"),
    (STATE, b"x" * 2000, "exceed the limit"),
    ("spBv1.0/STATE/someone-else", b'{"online": true, "timestamp": 1}', "not the configured"),
])
def test_malformed_or_foreign_messages_are_rejected_saying_why(topic: str, raw: bytes,
                                                               why: str) -> None:
    with pytest.raises(SparkplugError, match=why):
        parse_message(topic, raw, _session(), "scada")


def test_a_well_formed_dcmd_is_parsed_by_alias_or_name() -> None:
    # [tck-id-operational-behavior-data-commands-dcmd-verb]
    # [tck-id-operational-behavior-data-commands-dcmd-metric-value]
    s = _session()
    alias = s.alias_of("m1", "count")
    raw = psp.DCmd(timestamp=1, metrics=(
        psp.Metric(timestamp=None, name=None, alias=alias, datatype=psp.DataType.INT16, value=-5),
        psp.Metric(timestamp=None, name="on", datatype=psp.DataType.BOOLEAN, value=True),
    )).encode()
    assert parse_message(DCMD, raw, s, None) == DeviceWrite("m1", (("count", -5), ("on", True)))


def test_state_of_the_primary_host() -> None:
    # [tck-id-message-flow-edge-node-birth-publish-phid-wait-id]
    # [tck-id-message-flow-edge-node-birth-publish-phid-wait-online]
    raw = psp.State(timestamp=99, online=True).encode()
    assert parse_message(STATE, raw, _session(), "scada") == HostState(True, 99)
    with pytest.raises(SparkplugError, match="not the configured primary host"):
        parse_message(STATE, raw, _session(), None)


_TOPICS = st.sampled_from([NCMD, DCMD, STATE, "spBv1.0/city/DCMD/gw-1/m1/x", "spBv1.0",
                           "spBv1.0/STATE/scada/x", ""])


@settings(max_examples=1500, deadline=None)
@given(_TOPICS, st.binary(max_size=400))
def test_any_bytes_on_any_topic_parse_or_raise_only_our_error(topic: str, raw: bytes) -> None:
    try:
        parse_message(topic, raw, _session(), "scada")
    except SparkplugError as exc:
        assert str(exc)


@st.composite
def _states(draw: st.DrawFn) -> bytes:
    doc = draw(st.dictionaries(st.sampled_from(["online", "timestamp", "bdSeq", "x"]),
                               st.one_of(st.booleans(), st.integers(-2**70, 2**70),
                                         st.floats(), st.text(max_size=5), st.none()),
                               max_size=4))
    return json.dumps(doc).encode()


@settings(max_examples=500, deadline=None)
@given(_states())
def test_state_documents_are_taken_only_when_well_formed(raw: bytes) -> None:
    doc = json.loads(raw)
    ok = (isinstance(doc.get("online"), bool) and type(doc.get("timestamp")) is int
          and all(type(v) is not float for v in doc.values())
          and all(0 <= v < 2**63 for v in doc.values() if type(v) is int))
    try:
        got = parse_message(STATE, raw, _session(), "scada")
    except SparkplugError:
        assert not ok
        return
    assert ok and got == HostState(doc["online"], doc["timestamp"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["count", "on", "power", "level", "ghost"]),
                          st.one_of(st.integers(-2**20, 2**20), st.booleans(),
                                    st.floats(allow_nan=False), st.text(max_size=4))),
                max_size=5))
def test_dcmd_values_must_fit_the_birth_type(writes: list[tuple[str, int | float | str]]) -> None:
    metrics = []
    for name, value in writes:
        dt = {bool: psp.DataType.BOOLEAN, int: psp.DataType.INT64, float: psp.DataType.DOUBLE,
              str: psp.DataType.STRING}[type(value)]
        metrics.append(psp.Metric(timestamp=None, name=name, datatype=dt, value=value))
    raw = psp.DCmd(timestamp=1, metrics=tuple(metrics)).encode()
    try:
        got = parse_message(DCMD, raw, _session(), None)
    except SparkplugError:
        return
    assert writes and all(n != "ghost" for n, _ in writes)
    assert [n for n, _ in got.writes] == [n for n, _ in writes]  # type: ignore[union-attr]
    for (name, value), m in zip(writes, metrics, strict=True):
        # only a value in the field of the birth type is taken
        assert {"count": "int_value", "on": "boolean_value", "power": "float_value",
                "level": "double_value"}[name] == m.datatype.field
        assert value is not None


def _node(tmp_path: Path) -> SparkplugNode:
    cfg = load_config(write(tmp_path, BASE + '[sparkplug]\nenabled = true\ngroup_id = "city"\n'
                            'primary_host_id = "scada"\n'))
    return SparkplugNode(cfg, SystemClock())


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["spBv1.0/city/NCMD/gw-01", "spBv1.0/city/DCMD/gw-01/meter1",
                        "spBv1.0/city/DCMD/gw-01/" + "x" * 300, "spBv1.0/STATE/scada",
                        "spBv1.0/city/NCMD/gw-01/extra", "junk"]),
       st.one_of(st.binary(max_size=200), st.just(_ncmd(REBIRTH)), st.integers(), st.none()))
def test_the_node_counts_every_rejection_under_a_fixed_few_kinds(topic: str,
                                                                payload: object) -> None:
    with tempfile.TemporaryDirectory() as d:
        node = _node(Path(d))
    node._take(topic, payload)
    c = node.counters
    assert set(c.rejected) <= {"NCMD", "DCMD", "STATE", "other"}
    taken = len(node._events)
    assert sum(c.rejected.values()) + c.dcmd_refused + taken + c.stale_state == 1
    if taken:
        assert topic in ("spBv1.0/city/NCMD/gw-01", "spBv1.0/STATE/scada")


def test_a_flood_of_rebirth_requests_costs_one_birth_sequence(tmp_path: Path) -> None:
    # [tck-id-operational-behavior-data-commands-rebirth-action-2]: every request before the
    # birth sequence goes out is answered by it.
    node = _node(tmp_path)
    for _ in range(500):
        node._take("spBv1.0/city/NCMD/gw-01", _ncmd(REBIRTH))
    assert len(node._events) == 1 and node.counters.rebirths_coalesced == 499
