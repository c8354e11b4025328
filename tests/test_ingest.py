"""The deduplicating ingest: its store on SQLite and PostgreSQL, and the real command."""

from __future__ import annotations

import random
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.codecs.batch_v2 import encode_batch_v2
from edge_agent.fleet.ingest.consumer import decode_message
from edge_agent.fleet.ingest.store import IngestStore, reading_from
from edge_agent.protocol.readings import Quality, Reading
from tests.support.brokers import Mosquitto
from tests.support.sitekit import ingest_process

SEED = 7707
print(f"test_ingest seed {SEED}")
pytestmark = pytest.mark.timeout(120)
PG = "postgresql://root@127.0.0.1:5432/test"


def pg_available() -> bool:
    """True when the local PostgreSQL answers."""
    try:
        import psycopg
        psycopg.connect(PG, connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """A fresh database: a SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ingest.db'}", None
        return
    if not pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    import psycopg
    schema = f"t_{secrets.token_hex(6)}"
    yield PG, schema
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def batch(seq: int, *, gw: str = "gw1", epoch: int = 1000, n: int = 5) -> bytes:
    """A v2 batch whose readings say where they came from."""
    rs = [Reading("m1", "energy", 1_000_000 + seq * 10 + i, 2**60 + seq * 10 + i)
          for i in range(n)]
    return encode_batch_v2(gw, epoch, seq, rs)


def test_store_keeps_every_value_exactly_and_drops_duplicates(
        store_url: tuple[str, str | None]) -> None:
    url, schema = store_url
    store = IngestStore(url, schema=schema)
    try:
        odd = [Reading("d", "flag", 1, True), Reading("d", "n", 1, -5),
               Reading("d", "big", 1, 2**64 - 1), Reading("d", "f", 1, 0.1),
               Reading("d", "s", 1, "SN-42"),
               Reading("d", "bad", 1, None, Quality.DEVICE_EXCEPTION, 2)]
        first = encode_batch_v2("gw1", 7, 0, odd)
        msgs = [decode_message("edge/gw1/data", p, "edge")
                for p in (first, first, batch(1, epoch=7))]
        assert store.record(msgs) == (2, 1)
        assert store.record([msgs[0]]) == (0, 1)
        rows = store.query("SELECT device, point, ts_ms, quality, exception_code, kind, "
                           "value_int, value_real, value_text FROM readings WHERE seq = 0 "
                           "ORDER BY point")
        got = {r.point: r for r in map(reading_from, rows)}
        for r in odd:
            assert got[r.point] == r, (got[r.point], r)
            assert type(got[r.point].value) is type(r.value)
        assert store.query("SELECT batches, readings, duplicates, max_seq FROM streams") == [
            (2, 11, 2, 1)]
    finally:
        store.close()


def test_gaps_open_and_close_as_batches_arrive(store_url: tuple[str, str | None]) -> None:
    url, schema = store_url
    store = IngestStore(url, schema=schema)
    try:
        def put(*seqs: int) -> None:
            store.record([decode_message("edge/gw1/data", batch(s), "edge") for s in seqs])

        put(2, 3, 7)
        assert store.scan_gaps(now_ms=100) == [("gw1", 1000, 0, 1), ("gw1", 1000, 4, 6)]
        put(0, 1, 5)
        assert store.scan_gaps(now_ms=200) == [("gw1", 1000, 4, 4), ("gw1", 1000, 6, 6)]
        put(4, 6)
        assert store.scan_gaps(now_ms=300) == []
        history = store.query("SELECT seq_from, seq_to, detected_ms, closed_ms FROM gaps "
                              "ORDER BY detected_ms, seq_from")
        assert history == [(0, 1, 100, 200), (4, 6, 100, 200), (4, 4, 200, 300),
                           (6, 6, 200, 300)]
    finally:
        store.close()


def test_messages_that_do_not_decode_or_lie_about_their_gateway_are_rejected(
        tmp_path: Path) -> None:
    store = IngestStore(str(tmp_path / "i.db"))
    try:
        bad = [decode_message("edge/gw1/data", b"\x09junk", "edge"),
               decode_message("edge/gw2/data", batch(0, gw="gw1"), "edge")]
        assert [m.batch for m in bad] == [None, None]
        assert "gateway 'gw1'" in str(bad[1].error)
        assert store.record(bad) == (0, 0)
        assert store.summary()["rejected"] == 2
    finally:
        store.close()


def publish(port: int, payloads: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait for every PUBACK."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1) for t, p in payloads]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


@pytest.mark.integration
def test_ingest_command_end_to_end(tmp_path: Path, broker: Mosquitto) -> None:
    rng = random.Random(SEED)
    db = tmp_path / "ingest.db"
    seqs = [s for s in range(60) if s not in (17, 18, 40)]
    sends = seqs + rng.sample(seqs, 15)           # 15 duplicates, in a shuffled order
    rng.shuffle(sends)
    with ingest_process(broker.url, f"sqlite:///{db}", tmp_path, "--client-id", "e2e",
                        "--prefix", "e2e"):
        publish(broker.port, [("e2e/gwx/data", batch(s, gw="gwx")) for s in sends]
                + [("e2e/gwx/data", b"\x07nonsense")])
        store = IngestStore(str(db))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = store.query("SELECT count(*) FROM batches")[0][0]
                if got == len(seqs) and store.summary()["rejected"] == 1:
                    break
                time.sleep(0.2)
        finally:
            store.close()
    report = subprocess.run([sys.executable, "-m", "edge_agent", "ingest", "--db", str(db),
                             "--report"], capture_output=True, text=True, timeout=60)
    print(report.stdout)
    assert report.returncode == 0, report.stderr
    assert f"gwx epoch 1000: {len(seqs)} batches (max seq 59), {5 * len(seqs)} readings, " \
           "15 duplicates dropped" in report.stdout
    assert "gap: gwx epoch 1000 seq 17..18" in report.stdout
    assert "gap: gwx epoch 1000 seq 40..40" in report.stdout
    assert "2 open gaps, 1 rejected messages" in report.stdout


@pytest.mark.integration
def test_two_workers_share_the_load_and_store_each_batch_once(
        tmp_path: Path, broker: Mosquitto) -> None:
    if not pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    import psycopg
    schema = f"t_{secrets.token_hex(6)}"
    n = 400
    try:
        with ingest_process(broker.url, PG, tmp_path, "--db-schema", schema, "--share", "g1",
                            "--client-id", "w1", "--prefix", "shr", name="w1"), \
             ingest_process(broker.url, PG, tmp_path, "--db-schema", schema, "--share", "g1",
                            "--client-id", "w2", "--prefix", "shr", name="w2"):
            publish(broker.port, [("shr/gwy/data", batch(s, gw="gwy")) for s in range(n)])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with psycopg.connect(PG) as conn:
                    conn.execute(f"SET search_path TO {schema}")
                    got = conn.execute("SELECT count(*) FROM batches").fetchone()
                if got and got[0] >= n:
                    break
                time.sleep(0.2)
        with psycopg.connect(PG) as conn:
            conn.execute(f"SET search_path TO {schema}")
            batches = conn.execute("SELECT count(*), count(DISTINCT seq) FROM batches").fetchone()
            readings = conn.execute("SELECT count(*) FROM readings").fetchone()
        logs = {w: (tmp_path / f"{w}.log").read_text() for w in ("w1", "w2")}
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    assert batches == (n, n) and readings == (5 * n,)
    shares = {w: int(text.rsplit(" messages, ", 1)[0].rsplit(" ", 1)[-1])
              for w, text in logs.items()}
    print("messages per worker:", shares)
    assert sum(shares.values()) == n
    assert min(shares.values()) > 0.2 * n    # both took a real share of the load
