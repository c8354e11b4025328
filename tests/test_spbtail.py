"""`edge-agent spb-tail`: births, data by name through the birth's aliases, never a traceback."""

from __future__ import annotations

import asyncio
import io
import json

from edge_agent.protocol.readings import Reading
from edge_agent.tools.devbroker import Mosquitto
from edge_agent.tools.spbtail import SparkplugView, spb_tail
from tests.support.sparkplug_host import SparkplugHost
from tests.test_sparkplug_session import _session


def test_data_is_shown_by_name_through_the_birth() -> None:
    s = _session()
    s.set_status("m1", "online")
    view = SparkplugView()
    lines = [line for o in s.births() for line in view.render(o.topic, o.payload)]
    assert any("NBIRTH  city/gw-1  seq 0" in line for line in lines)
    assert any("bdSeq  int64  7" in line for line in lines)
    assert any("power  float  null  [engUnit='W']" in line for line in lines)
    data = s.data([Reading("m1", "power", 1_000, 12.5)])
    shown = view.render(data[0].topic, data[0].payload)
    assert "DDATA   city/gw-1/m1  seq 2  1 metrics" in shown[0]
    assert "city/gw-1/m1  power  float  12.5" in shown[1]


def test_garbage_and_strangers_are_one_line_each() -> None:
    view = SparkplugView()
    assert "undecodable" in view.render("spBv1.0/g/DDATA/n/d", b"\xff")[0]
    assert "unexpected topic" in view.render("spBv1.0/x", b"")[0]
    assert "host h1" in view.render("spBv1.0/STATE/h1", b'{"online":true}')[0]


def test_spb_tail_prints_what_a_node_publishes(broker: Mosquitto) -> None:
    async def run() -> str:
        out = io.StringIO()
        task = asyncio.create_task(spb_tail(broker.url, group="tailgroup", out=out, count=2))
        while "# spb-tail" not in out.getvalue():
            await asyncio.sleep(0.05)
        host = SparkplugHost(broker.port)
        try:
            host.publish("spBv1.0/STATE/h9", json.dumps({"online": True, "timestamp": 1})
                         .encode(), qos=1)
            s = _session()
            s.group_id = "tailgroup"
            host.publish(s.topic("NBIRTH"), s.births()[0].payload, qos=1)
            await asyncio.wait_for(task, 20)
        finally:
            host.close()
        return out.getvalue()

    text = asyncio.run(run())
    assert "STATE   host h9" in text and "NBIRTH  tailgroup/gw-1  seq 0" in text, text


def test_a_late_viewer_asks_unborn_nodes_for_a_rebirth_the_node_takes() -> None:
    from edge_agent.runtime.sparkplug.intake import Rebirth, parse_message
    from edge_agent.tools.spbtail import rebirth_request

    view = SparkplugView()
    assert view.unborn_node("spBv1.0/city/DDATA/gw-1/m1") == ("city", "gw-1")
    s = _session()
    for o in s.births():
        view.render(o.topic, o.payload)
    assert view.unborn_node("spBv1.0/city/DDATA/gw-1/m1") is None
    assert parse_message("spBv1.0/city/NCMD/gw-1", rebirth_request(5), s, None) == Rebirth()
