"""The deduplicating ingest: its store on SQLite and PostgreSQL, and the real command; poison
batches (the observed ones) set aside in ``rejected`` while the ingest goes on, before and after
a restart; a failing database restarts the consumer without losing a message."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest.mock import patch

import aiomqtt
import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import codecs
from edge_agent.codecs.batch import DataBatch
from edge_agent.codecs.batch_v2 import encode_batch_v2
from edge_agent.fleet import cli
from edge_agent.fleet.brokerconf import mosquitto_hash
from edge_agent.fleet.ingest import consumer
from edge_agent.fleet.ingest.consumer import Ingest
from edge_agent.fleet.ingest.intake import IngestLimits, ReadingBudget, decode_message
from edge_agent.fleet.ingest.schema import reading_from
from edge_agent.fleet.ingest.store import (
    DUPLICATE,
    REJECTED,
    STORED,
    IngestStore,
    Outcome,
    Received,
    storable_problem,
)
from edge_agent.fleet.supervisor import Supervisor
from edge_agent.protocol.broker import parse_broker_url
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.protocol.shell import PASSWORD_ENV
from tests.support.brokers import Mosquitto, free_port
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


def publish(port: int, payloads: list[tuple[str, bytes]],
            login: tuple[str, str] | None = None) -> None:
    """Publish at QoS 1 (as ``login``'s user if given) and wait for every PUBACK."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    if login is not None:
        c.username_pw_set(*login)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1) for t, p in payloads]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


def stored_batches(db_url: str, want: int, timeout_s: float = 30.0) -> int:
    """The number of batches stored, once it reaches ``want`` or the time is up."""
    store = IngestStore(db_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            got = int(store.query("SELECT count(*) FROM batches")[0][0])
            if got >= want or time.monotonic() > deadline:
                return got
            time.sleep(0.1)
    finally:
        store.close()


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


@pytest.mark.integration
def test_ingest_logs_in_with_a_password_file_or_the_environment(tmp_path: Path) -> None:
    secret = "ingest-pw-7707"
    (tmp_path / "passwd").write_text(f"ingest:{mosquitto_hash(secret)}\n")
    (tmp_path / "ingest.pw").write_text(secret + "\n")
    b = Mosquitto(extra_conf=f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}\n")
    b.start()
    try:
        db = f"sqlite:///{tmp_path / 'ingest.db'}"
        # Each ingest must store its own batch while it runs: a batch published just before
        # a stop is only redelivered to the next ingest, and there is none after the second.
        with ingest_process(b.url, db, tmp_path, "--username", "ingest", "--password-file",
                            str(tmp_path / "ingest.pw"), name="by-file"):
            publish(b.port, [("edge/gwp/data", batch(0, gw="gwp"))], ("ingest", secret))
            assert stored_batches(db, 1) == 1
        with patch.dict("os.environ", {PASSWORD_ENV: secret}), \
                ingest_process(b.url, db, tmp_path, "--username", "ingest", name="by-env"):
            publish(b.port, [("edge/gwp/data", batch(1, gw="gwp"))], ("ingest", secret))
            assert stored_batches(db, 2) == 2
    finally:
        b.close()
    for name in ("by-file", "by-env"):
        assert secret not in (tmp_path / f"{name}.log").read_text()



def get_health(port: int) -> dict[str, Any]:
    """``GET /v1/health`` of an ingest's endpoint."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def wait_health(port: int, ok: bool, timeout_s: float = 30.0) -> dict[str, Any]:
    """The health document once its ``ok`` is ``ok`` (or the last one read)."""
    deadline = time.monotonic() + timeout_s
    doc = get_health(port)
    while doc["ok"] is not ok and time.monotonic() < deadline:
        time.sleep(0.1)
        doc = get_health(port)
    return doc


@pytest.mark.integration
def test_the_ingest_health_endpoint_tells_the_truth(tmp_path: Path) -> None:
    b = Mosquitto()
    b.start()
    http = free_port()
    db = f"sqlite:///{tmp_path / 'ingest.db'}"
    try:
        with ingest_process(b.url, db, tmp_path, "--http", f"127.0.0.1:{http}"):
            publish(b.port, [("edge/gwh/data", batch(0, gw="gwh")),
                             ("edge/gwh/data", b"\x07nonsense")])
            assert stored_batches(db, 1) == 1
            doc = wait_health(http, True)
            assert doc["ok"] and doc["connected"] and "edge/+/data" in doc["subscription"]
            assert (doc["stored"], doc["rejected"]) == (1, 1), doc
            assert all(t["state"] == "running" for t in doc["tasks"].values()), doc
            b.stop()   # the broker goes away: the consumer is not connected, and says so
            down = wait_health(http, False)
            assert not down["ok"] and not down["connected"], down
            b.start()
            assert wait_health(http, True)["connects"] >= 2
    finally:
        b.close()


# ------------------------------------------------------------------ nothing stops silently

def surrogate_batch(gw: str = "gw-evil", seq: int = 0) -> bytes:
    """The observed poison: a small v2 batch whose extras name the series 'm1/\\ud800'."""
    good = encode_batch_v2(gw, 1_764_331_100_000, seq, [Reading("m1", "p", 1_764_331_100_000,
                                                                 "serial")])
    size, used = good[1], 2  # a header under 128 bytes: a one-byte varint
    header = good[used:used + size].replace(b'"m1/p"', b'"m1/\\ud800"')
    return bytes([2, len(header)]) + header + good[used + size:]


def flood_batch(gw: str = "gw-evil", n: int = 2_000_000) -> bytes:
    """The observed flood: 47 KB that decode to two million run-length readings."""
    body = codecs.encode_batch({"m1/energy": (range(1_000_000, 1_000_000 + n), [7] * n)})
    header = json.dumps({"g": gw, "e": 1, "s": 0, "x": []}, separators=(",", ":")).encode()
    return bytes([2, len(header)]) + header + body


def test_the_observed_poison_batches_are_refused_before_the_database() -> None:
    poison = surrogate_batch()
    assert len(poison) < 100  # the observed one had 86 bytes
    r = decode_message("edge/gw-evil/data", poison, "edge")
    assert r.batch is None and r.reason == "codec" and r.gateway == "gw-evil"
    assert "surrogate" in str(r.error)
    flood = flood_batch()
    assert 40_000 < len(flood) < 50_000
    r = decode_message("edge/gw-evil/data", flood, "edge")
    assert r.batch is None and r.reason == "codec" and "50000" in str(r.error)
    big = decode_message("edge/gw-evil/data", b"\x02" + b"\x00" * (1024 * 1024), "edge")
    assert big.reason == "too_large"
    assert decode_message("edge/GW/data", batch(0), "edge").reason == "topic"
    assert decode_message("edge/gw1/health", batch(0), "edge").reason == "topic"
    assert decode_message("edge/gw2/data", batch(0, gw="gw1"), "edge").reason == \
        "gateway_mismatch"
    ok = decode_message("edge/gw1/data", batch(0), "edge")
    assert ok.batch is not None and ok.gateway == "gw1"


def test_what_the_database_cannot_hold_is_named() -> None:
    def one(r: Reading, epoch: int = 1) -> str | None:
        return storable_problem(DataBatch("gw1", epoch, 0, [r], 2))

    assert one(Reading("d", "p", 1, 2**64 - 1)) is None  # stored exactly, as text
    assert "surrogate" in str(one(Reading("d", "\ud800", 1, 1)))
    assert "surrogate" in str(one(Reading("d", "p", 1, "x\udfff")))
    assert "NUL" in str(one(Reading("d", "p", 1, "a\x00b")))
    assert "timestamp" in str(one(Reading("d", "p", 2**63, 1)))
    assert "epoch" in str(one(Reading("d", "p", 1, 1), epoch=2**64))


def test_a_value_the_database_refuses_costs_that_message_only(
        store_url: tuple[str, str | None]) -> None:
    url, schema = store_url
    store = IngestStore(url, schema=schema)
    try:
        good = [decode_message("edge/gw1/data", batch(s), "edge") for s in (0, 1)]
        # As if a decoder let them through: the database itself refuses these values.
        slipped = [Received("edge/gw2/data", b"\x02poison",
                            DataBatch("gw2", 1, 0, [Reading("d", "\ud800", 1, 1)], 2),
                            gateway="gw2"),
                   Received("edge/gw3/data", b"\x02poison",
                            DataBatch("gw3", 2**70, 0, [Reading("d", "p", 1, 1)], 2),
                            gateway="gw3")]
        outcomes = store.record_each([good[0], *slipped, good[1], good[1]])
        assert [o.status for o in outcomes] == [STORED, REJECTED, REJECTED, STORED, DUPLICATE]
        assert outcomes[1].reason == "database" and "refused" in outcomes[1].error
        assert store.query("SELECT count(*) FROM batches") == [(2,)]
        assert store.query("SELECT count(*) FROM readings") == [(10,)]
        rows = store.query("SELECT gateway, reason, bytes, payload_hex FROM rejected "
                           "ORDER BY gateway")
        assert rows == [("gw2", "database", 7, b"\x02poison".hex()),
                        ("gw3", "database", 7, b"\x02poison".hex())]
        assert store.summary()["rejected_by_reason"] == {"database": 2}
    finally:
        store.close()


def test_an_older_rejected_table_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE rejected (topic TEXT NOT NULL, received_ms INTEGER NOT NULL, "
                 "bytes INTEGER NOT NULL, error TEXT NOT NULL)")
    conn.execute("INSERT INTO rejected VALUES ('edge/gw1/data', 1, 5, 'junk')")
    conn.commit()
    conn.close()
    store = IngestStore(str(path))
    try:
        store.record([decode_message("edge/gw1/data", b"\x09junk", "edge")])
        assert store.summary()["rejected_by_reason"] == {"codec": 1, "undecodable": 1}
    finally:
        store.close()


def test_the_reading_budget_bounds_each_gateway_on_its_own() -> None:
    b = ReadingBudget(per_s=1000, burst=5000)
    assert b.take("gw1", 5000, 0.0) and not b.take("gw1", 1, 0.0)
    assert b.take("gw2", 5000, 0.0)             # another gateway's budget is its own
    assert not b.take("gw1", 2000, 1.0) and b.take("gw1", 1000, 1.0)
    assert ReadingBudget(per_s=0, burst=1).take("gw1", 10**9, 0.0)  # 0: no bound


class FailingStore:
    """An IngestStore whose database fails as a whole for the first ``fail`` groups."""

    def __init__(self, store: IngestStore, fail: int) -> None:
        self.store = store
        self.fail = fail

    def record_each(self, messages: Sequence[Received]) -> list[Outcome]:
        if self.fail > 0:
            self.fail -= 1
            raise sqlite3.OperationalError("database is locked")
        return self.store.record_each(messages)

    def scan_gaps(self) -> list[tuple[str, int, int, int]]:
        return self.store.scan_gaps()


def _ingest(broker: Mosquitto, store: Any, prefix: str, client_id: str,
            supervisor: Supervisor) -> Ingest:
    return Ingest(parse_broker_url(broker.url, topic_prefix=prefix), store,
                  client_id=client_id, gap_scan_s=3600, supervisor=supervisor)


@pytest.mark.integration
def test_a_database_failure_restarts_the_consumer_and_loses_nothing(
        tmp_path: Path, broker: Mosquitto) -> None:
    store = IngestStore(str(tmp_path / "i.db"))
    failing = FailingStore(store, fail=2)
    ingest = _ingest(broker, failing, "dbf", "dbf-1",
                     supervisor=Supervisor(base_s=0.05, cap_s=0.2, max_failures=10))

    async def main() -> None:
        task = asyncio.create_task(ingest.run())
        await asyncio.wait_for(ingest.subscribed.wait(), 20)
        await asyncio.to_thread(publish, broker.port,
                                [("dbf/gwf/data", batch(s, gw="gwf")) for s in range(3)])
        deadline = time.monotonic() + 30
        while store.query("SELECT count(*) FROM batches")[0][0] < 3:
            assert time.monotonic() < deadline, ingest.status()
            await asyncio.sleep(0.05)
        assert ingest.status()["tasks"]["ingest-mqtt"]["state"] == "running"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    status = ingest.status()
    assert status["tasks"]["ingest-mqtt"]["restarts"] == 2
    assert "database is locked" in status["tasks"]["ingest-mqtt"]["last_error"]
    assert status["stored"] == 3 and status["rejected"] == 0  # redelivered, not set aside
    store.close()


@pytest.mark.integration
def test_an_ingest_whose_consumer_cannot_be_restarted_exits_non_zero(
        tmp_path: Path, broker: Mosquitto) -> None:
    store = IngestStore(str(tmp_path / "i.db"))
    ingest = _ingest(broker, FailingStore(store, fail=10**6), "dbx", "dbx-1",
                     supervisor=Supervisor(base_s=0.01, cap_s=0.05, max_failures=3))

    async def main() -> None:
        task = asyncio.create_task(ingest.run())
        await asyncio.wait_for(ingest.subscribed.wait(), 20)
        await asyncio.to_thread(publish, broker.port, [("dbx/gwx/data", batch(0, gw="gwx"))])
        await asyncio.sleep(30)  # the task ends the run with SystemExit well before this
        task.cancel()

    with pytest.raises(SystemExit) as info:
        asyncio.run(main())
    assert info.value.code == 1
    assert ingest.status()["tasks"]["ingest-mqtt"]["state"] == "failed"
    store.close()


def _report(db: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "edge_agent", "ingest", "--db", str(db),
                          "--report"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


POISONS = {"surrogate-series": (surrogate_batch, "codec"), "flood": (flood_batch, "codec")}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(POISONS))
def test_a_poison_batch_is_set_aside_and_the_ingest_goes_on(
        case: str, tmp_path: Path, broker: Mosquitto) -> None:
    make, reason = POISONS[case]
    poison = make("gw-evil")
    prefix, cid = f"p{case[:4]}", f"poison-{case}"
    db = tmp_path / "ingest.db"
    args = ("--client-id", cid, "--prefix", prefix)
    topic_evil, topic_good = f"{prefix}/gw-evil/data", f"{prefix}/gw-good/data"

    def stored(seq: int) -> bool:
        s = IngestStore(str(db))
        try:
            return bool(s.query("SELECT count(*) FROM batches WHERE gateway = 'gw-good' "
                                "AND seq = ?", (seq,))[0][0])
        finally:
            s.close()

    def rejected() -> int:
        s = IngestStore(str(db))
        try:
            return int(s.query("SELECT count(*) FROM rejected WHERE gateway = 'gw-evil'")[0][0])
        finally:
            s.close()

    def wait(pred: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    with ingest_process(broker.url, f"sqlite:///{db}", tmp_path, *args):
        pass  # the persistent session now exists, and queues while the ingest is down
    # Queued for the stopped ingest: delivered to it on restart, poison first.
    publish(broker.port, [(topic_evil, poison), (topic_good, batch(0, gw="gw-good"))])
    with ingest_process(broker.url, f"sqlite:///{db}", tmp_path, *args) as proc:
        wait(lambda: stored(0) and rejected() == 1, "seq 0 and the first rejection")
        publish(broker.port, [(topic_evil, poison), (topic_good, batch(1, gw="gw-good"))])
        wait(lambda: stored(1) and rejected() == 2, "seq 1 and the second rejection")
        assert proc.poll() is None
        assert psutil.Process(proc.pid).memory_info().rss < 200 * 1024 * 1024
    publish(broker.port, [(topic_evil, poison), (topic_good, batch(2, gw="gw-good"))])
    with ingest_process(broker.url, f"sqlite:///{db}", tmp_path, *args) as proc:
        wait(lambda: stored(2) and rejected() == 3, "seq 2 after a restart")
        assert proc.poll() is None
    s = IngestStore(str(db))
    try:
        rows = s.query("SELECT gateway, reason, bytes, payload_hex, error FROM rejected")
        assert s.query("SELECT count(*) FROM readings WHERE gateway = 'gw-evil'") == [(0,)]
    finally:
        s.close()
    assert len(rows) == 3
    for gw, why, size, prefix_hex, error in rows:
        assert (gw, why, size) == ("gw-evil", reason, len(poison))
        assert prefix_hex == poison[:256].hex() and error
    log = (tmp_path / "ingest.log").read_text()
    assert log.count(f"ingest: rejected ({reason})") == 2  # once per run that saw one
    assert "Traceback" not in log
    assert "ingest status:" in log and "rejected 2 {'codec': 2}" in log  # the final status
    report = _report(db)
    assert "gw-good epoch 1000: 3 batches" in report and f"rejected: 3 {reason}" in report


@pytest.mark.integration
def test_the_ingest_command_exits_1_when_its_consumer_cannot_be_restarted(
        tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    # A persistent session holding one message, so the ingest gets it as soon as it connects.
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cmd-fail", clean_session=False)
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    c.subscribe("cmdf/+/data", qos=1)
    assert subscribed.wait(10)
    c.disconnect()
    c.loop_stop()
    publish(broker.port, [("cmdf/gwc/data", batch(0, gw="gwc"))])

    def locked(self: IngestStore, messages: object, now_ms: object = None) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(IngestStore, "record_each", locked)
    monkeypatch.setattr(consumer, "Supervisor",
                        functools.partial(Supervisor, base_s=0.01, cap_s=0.05, max_failures=3))
    with pytest.raises(SystemExit) as info:
        cli.main(["ingest", "--broker", broker.url, "--db", str(tmp_path / "i.db"),
                  "--client-id", "cmd-fail", "--prefix", "cmdf"])
    assert info.value.code == 1


# ------------------------------------------------------------------ over budget: deferred, not lost

def message(topic: str, payload: bytes, mid: int = 1) -> aiomqtt.Message:
    """A data message as aiomqtt delivers it."""
    return aiomqtt.Message(topic, payload, 1, False, mid, None)


def test_batches_over_the_budget_are_deferred_whole_and_stored_as_it_refills(
        store_url: tuple[str, str | None]) -> None:
    url, schema = store_url
    store = IngestStore(url, schema=schema)
    clock = FakeClock()
    limits = IngestLimits(gateway_readings_per_s=10, gateway_burst_readings=100)
    ingest = Ingest(parse_broker_url("mqtt://127.0.0.1:1"), store, limits=limits, clock=clock)
    try:
        # 60 readings each: the first fits the burst of 100, the next two must wait.
        ingest._commit([message("edge/gwd/data", batch(s, gw="gwd", n=60), s) for s in range(3)])
        c = ingest.counters
        assert (c.batches, c.deferred, c.rejected) == (1, 2, 0)
        assert store.deferred_backlog()[0] == 2
        assert ingest.release_deferred() == 0          # no time has passed: nothing refilled
        clock.advance(2)                                # 40 + 20 = 60 readings of budget
        assert ingest.release_deferred() == 1 and store.deferred_backlog()[0] == 1
        clock.advance(6)
        assert ingest.release_deferred() == 1 and store.deferred_backlog() == (0, 0)
        assert store.query("SELECT count(*) FROM batches")[0][0] == 3
        assert store.query("SELECT count(*) FROM readings")[0][0] == 180
        assert store.scan_gaps() == [] and store.summary()["rejected"] == 0
        assert (c.batches, c.released) == (3, 2)
    finally:
        store.close()


def test_a_gateway_whose_deferred_backlog_is_full_has_the_rest_set_aside(tmp_path: Path) -> None:
    store = IngestStore(str(tmp_path / "ingest.db"))
    one = batch(0, gw="gwf", n=60)
    limits = IngestLimits(gateway_readings_per_s=10, gateway_burst_readings=60,
                          gateway_deferred_bytes=2 * len(one) + 10)
    ingest = Ingest(parse_broker_url("mqtt://127.0.0.1:1"), store, limits=limits,
                    clock=FakeClock())
    try:
        ingest._commit([message("edge/gwf/data", batch(s, gw="gwf", n=60), s) for s in range(5)])
        c = ingest.counters
        assert (c.batches, c.deferred, c.rejected) == (1, 2, 2)
        assert ingest.rejections.counts == {"rate": 2}
        assert store.summary()["rejected_by_reason"] == {"rate": 2}
    finally:
        store.close()


def test_the_rejected_table_keeps_its_newest_rows_and_exact_totals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.fleet.ingest import store as store_module

    monkeypatch.setattr(store_module, "REJECTED_ROWS", 5)
    monkeypatch.setattr(store_module, "PRUNE_EVERY", 10)
    store = IngestStore(str(tmp_path / "ingest.db"))
    try:
        for i in range(25):
            store.record_each([Received("edge/gwr/data", b"\x07junk", None, "bad", "codec",
                                        "gwr")], now_ms=1000 + i)
        kept = store.query("SELECT received_ms FROM rejected ORDER BY received_ms")
        assert len(kept) <= 5 + 10 and kept[-1][0] == 1024  # pruned, the newest kept
        assert store.summary()["rejected"] == 25            # totals are exact all the same
    finally:
        store.close()


def test_a_database_from_before_the_totals_gets_them_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "ingest.db"
    IngestStore(str(path)).close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE rejected_totals; INSERT INTO rejected (topic, received_ms, "
                       "bytes, error, reason) VALUES ('t', 1, 1, 'e', NULL), "
                       "('t', 2, 1, 'e', 'codec');")
    conn.close()
    for _ in range(2):  # reopened twice: counted once
        store = IngestStore(str(path))
        try:
            assert store.summary()["rejected_by_reason"] == {"codec": 1, "undecodable": 1}
        finally:
            store.close()
