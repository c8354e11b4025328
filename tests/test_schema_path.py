"""The stream dictionary on the real path: the uplink sends the schema before any batch and on
request, the ingest parks a batch whose schema it lacks, asks for it, and stores the batch when
it comes; a real agent's batches reach a subscriber and the ingest as version 3."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge_agent.codecs.batch import decode_batch, encode_batch_v3
from edge_agent.codecs.schema import SchemaBook, SeriesDef, build_schema
from edge_agent.fleet.ingest.store import IngestStore
from edge_agent.protocol.broker import parse_broker_url
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.schemas import KEEP, SchemaShelf
from edge_agent.runtime.store import MemoryStore
from edge_agent.runtime.uplink import Uplink
from tests.support.acked import AckedClient
from tests.support.brokers import Mosquitto
from tests.support.sitekit import Collector, agent, ingest_process, simulator, write_site

pytestmark = pytest.mark.timeout(180)
EPOCH = 1_765_000_000_000
SERIES = [SeriesDef("m1", "v", "float32", "V", 1.0, 0.0, 1000),
          SeriesDef("m1", "on", "bool", "", 1.0, 0.0, 1000)]


def _readings(schema_t0: int, k: int) -> list[Reading]:
    return [Reading("m1", "v", schema_t0 + k * 1000, 230.5), Reading("m1", "on", schema_t0, True)]


async def _messages(url: str, topic_filter: str, out: list[aiomqtt.Message],
                    ready: asyncio.Event) -> None:
    async with aiomqtt.Client(**_opts(url)) as client:
        await client.subscribe(topic_filter, qos=1)
        ready.set()
        async for m in client.messages:
            out.append(m)


def _opts(url: str) -> dict[str, Any]:
    from edge_agent.protocol.broker import client_options
    return client_options(parse_broker_url(url))


async def _until(predicate: Any, what: str, timeout_s: float = 30) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None


def test_uplink_sends_the_schema_first_and_again_on_request(broker: Mosquitto,
                                                              tmp_path: Path) -> None:
    gw = "gwschema"
    old = build_schema(gw, EPOCH - 60_000, SERIES)
    cur = build_schema(gw, EPOCH, SERIES)
    shelf = SchemaShelf(old, tmp_path / "schemas")
    shelf.save()                       # an earlier boot epoch's, kept on disk
    shelf = SchemaShelf(cur, tmp_path / "schemas")
    shelf.save()

    async def main() -> tuple[Uplink, list[aiomqtt.Message]]:
        store = MemoryStore()
        uplink = Uplink(parse_broker_url(broker.url), gw, EPOCH, "9.9", SystemClock(),
                        store=store, schemas=shelf)
        got: list[aiomqtt.Message] = []
        ready = asyncio.Event()
        sub = asyncio.create_task(_messages(broker.url, f"edge/{gw}/#", got, ready))
        await ready.wait()
        await store.put(encode_batch_v3(cur, EPOCH, 0, _readings(cur.t0_ms, 1)))
        task = asyncio.create_task(uplink.run())
        try:
            await _until(lambda: any(m.topic.value.endswith("/data") for m in got), "a batch")
            async with aiomqtt.Client(**_opts(broker.url)) as asker:
                req = f"edge/{gw}/schema-request"
                for payload in (cur.hash.hex(), cur.hash.hex(), "zz", "00" * 6,
                                old.hash.hex(), "x" * 100):
                    await asker.publish(req, payload.encode(), qos=1)
            await _until(lambda: uplink.counters.schema_requests == 6, "six requests")
            await _until(lambda: uplink.counters.schemas_sent == 3, "three schemas sent")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            sub.cancel()
            await asyncio.gather(sub, return_exceptions=True)
            async with aiomqtt.Client(**_opts(broker.url)) as client:   # the broker is shared
                await client.publish(f"edge/{gw}/schema", b"", qos=1, retain=True)
        return uplink, got

    uplink, got = asyncio.run(main())
    kinds = [m.topic.value.rsplit("/", 1)[1] for m in got]
    assert kinds.index("schema") < kinds.index("data")   # the schema before any batch
    schemas = [bytes(m.payload) for m in got if m.topic.value.endswith("/schema")]
    assert schemas == [cur.raw, cur.raw, old.raw]
    # the second request came too soon; "zz", an unknown hash and 100 bytes are refused
    assert uplink.counters.schema_requests_refused == 4
    book = SchemaBook()
    for raw in schemas:
        book.add(gw, raw)
    data = next(bytes(m.payload) for m in got if m.topic.value.endswith("/data"))
    assert decode_batch(data, gateway=gw, schemas=book.lookup).readings[0].value is True


def test_the_shelf_keeps_the_newest_schemas_only(tmp_path: Path) -> None:
    made = [build_schema("gw", EPOCH + i * 1000, SERIES) for i in range(KEEP + 3)]
    for s in made:
        SchemaShelf(s, tmp_path).save()
        time.sleep(0.01)   # distinct modification times order them
    shelf = SchemaShelf(made[-1], tmp_path)
    assert len(list(tmp_path.iterdir())) == KEEP
    assert shelf.find(made[0].hash) is None and shelf.find(made[-2].hash) == made[-2].raw
    assert shelf.find(b"short") is None


@pytest.mark.integration
def test_the_ingest_parks_a_batch_asks_for_its_schema_and_stores_it_when_it_comes(
        tmp_path: Path, broker: Mosquitto) -> None:
    gw = "gwpark"
    schema = build_schema(gw, EPOCH, SERIES)
    db = tmp_path / "ingest.db"
    pub = AckedClient(broker.port)
    asked: list[bytes] = []

    async def watch_requests(ready: asyncio.Event, stop: asyncio.Event) -> None:
        async with aiomqtt.Client(**_opts(broker.url)) as client:
            await client.subscribe(f"edge/{gw}/schema-request", qos=1)
            ready.set()
            async with asyncio.timeout(60):
                async for m in client.messages:
                    asked.append(bytes(m.payload))
                    stop.set()
                    return

    async def main() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(watch_requests(ready, stop))
        await ready.wait()
        for seq in range(3):
            pub.publish(f"edge/{gw}/data", encode_batch_v3(schema, EPOCH, seq,
                                                           _readings(schema.t0_ms, seq)))
        await stop.wait()
        await task

    try:
        with ingest_process(broker.url, f"sqlite:///{db}", tmp_path, "--client-id", "park"):
            asyncio.run(main())
            assert asked == [schema.hash.hex().encode()]
            store = IngestStore(str(db))
            try:
                assert store.query("SELECT count(*) FROM parked")[0][0] == 3
                assert store.query("SELECT count(*) FROM batches")[0][0] == 0
                pub.publish(f"edge/{gw}/schema", schema.raw, retain=True)
                deadline = time.monotonic() + 30
                while store.query("SELECT count(*) FROM batches")[0][0] < 3:
                    assert time.monotonic() < deadline, "parked batches not stored"
                    time.sleep(0.1)
                assert store.query("SELECT count(*) FROM parked")[0][0] == 0
                assert store.query("SELECT count(*) FROM readings")[0][0] == 6
                assert store.query("SELECT count(*) FROM schemas WHERE gateway = ?", (gw,)) \
                    == [(1,)]
                assert store.query("SELECT count(*) FROM rejected WHERE gateway = ?", (gw,)) \
                    == [(0,)]
            finally:
                store.close()
    finally:
        pub.publish(f"edge/{gw}/schema", b"", retain=True)
        pub.close()
    log = (tmp_path / "ingest.log").read_text()
    assert f"schema {schema.hash.hex()} of {gw} arrived" in log


@pytest.mark.integration
def test_a_real_agent_sends_version_3_batches_a_subscriber_and_the_ingest_decode(
        tmp_path: Path, broker: Mosquitto) -> None:
    site = write_site(tmp_path, [("m1", "rs485", 1, "energy_meter"),
                                 ("l1", "rs485", 11, "streetlight")])
    db = tmp_path / "ingest.db"
    sub = Collector(broker.port)
    try:
        with simulator(site, tmp_path), \
                ingest_process(broker.url, f"sqlite:///{db}", tmp_path, "--client-id", "v3"), \
                agent(site, broker.url, tmp_path):
            assert sub.wait_for(lambda c: len(c.batches) >= 5 and len(
                {r.device for r in c.readings}) == 2, 60), "no batches decoded"
            store = IngestStore(str(db))
            try:
                deadline = time.monotonic() + 30
                while store.query("SELECT count(*) FROM batches")[0][0] < 5:
                    assert time.monotonic() < deadline, "the ingest stored no batches"
                    time.sleep(0.1)
                # This agent's schema (the session's broker may also hold, retained, the
                # schema of another test's agent with the same gateway id: kept too, rightly).
                spooled = list((tmp_path / "state" / "schemas").iterdir())
                assert len(spooled) == 1 and spooled[0].suffix == ".json"
                assert store.query("SELECT count(*) FROM schemas WHERE gateway = ? AND hash = ?",
                                   ("gw-test", spooled[0].stem)) == [(1,)]
                assert store.query("SELECT count(*) FROM rejected WHERE gateway = ?",
                                   ("gw-test",)) == [(0,)]
            finally:
                store.close()
    finally:
        sub.close()
    readings = sub.snapshot()
    assert {type(r.value) for r in readings if r.point == "relay_on"} == {bool}
    assert all(r.ts_ms % 1000 == 0 for r in readings)


def test_a_config_whose_points_cannot_be_schema_series_is_refused(tmp_path: Path) -> None:
    from edge_agent.config.loader import load_config
    from edge_agent.protocol.errors import ConfigError

    long_name = "p" * 65
    (tmp_path / "odd.toml").write_text(
        '[profile]\nname = "odd"\n'
        f'[points.{long_name}]\ntable = "holding_register"\naddress = 0\ntype = "uint16"\n'
        '[points.ok]\ntable = "holding_register"\naddress = 1\ntype = "uint16"\n'
        'unit = "' + "u" * 33 + '"\n')
    site = write_site(tmp_path, [("m1", "lan", 1, str(tmp_path / "odd.toml"))])
    with pytest.raises(ConfigError) as info:
        load_config(site)
    text = str(info.value)
    assert "a point name of 1-64 characters" in text and "a unit of at most 32" in text, text
