"""Receipts: the format (total parse, hostile input), the spool's sent-unconfirmed state, the
ingest's receipts computed from its database, and the tail of an epoch reported as a gap."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.model import ReceiptMode, SpoolConfig
from edge_agent.fleet.ingest import receipts as rc
from edge_agent.fleet.ingest.store import IngestStore, Received
from edge_agent.protocol import receipts
from edge_agent.protocol.receipts import EpochReceipt, Receipt, ReceiptError
from edge_agent.runtime.spool import Spool
from edge_agent.runtime.spool_sent import MAX_RESEND
from tests.test_spool import drain, fill, run

pytestmark = pytest.mark.timeout(120)


def doc(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "epochs": list(entries)}).encode()


def entry(epoch: int, upto: int, top: int, to: int | None = None,
          gaps: list[list[int]] | None = None) -> dict[str, Any]:
    return {"epoch": epoch, "upto": upto, "max": top, "to": top if to is None else to,
            "gaps": gaps or []}


# ---------------------------------------------------------------- the format


def test_a_receipt_round_trips_and_confirms_exactly_what_it_says() -> None:
    e = receipts.epoch_receipt(7, 20, [(3, 4), (10, 12)])
    assert (e.upto, e.max, e.to) == (2, 20, 20)
    r = receipts.parse(json.dumps(receipts.to_doc(Receipt((e,)))).encode())
    got = r.entry(7)
    assert got is not None
    assert [s for s in range(25) if got.confirms(s)] == [0, 1, 2, 5, 6, 7, 8, 9, *range(13, 21)]
    assert [s for s in range(25) if got.missing(s)] == [3, 4, 10, 11, 12]


def test_a_long_gap_list_is_cut_and_confirms_nothing_past_the_cut() -> None:
    gaps = [(2 * i + 1, 2 * i + 1) for i in range(receipts.MAX_GAPS + 10)]
    top = 2 * (receipts.MAX_GAPS + 10) + 5
    e = receipts.epoch_receipt(1, top, gaps)
    assert len(e.gaps) == receipts.MAX_GAPS
    assert e.to == gaps[receipts.MAX_GAPS][0] - 1
    assert not e.confirms(top)
    receipts.parse(json.dumps(receipts.to_doc(Receipt((e,)))).encode())  # well formed


@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "json"), (b"\xff\xfe", "json"), (b"[]", "shape"), (b"{}", "version"),
    (b'{"v":1}', "shape"), (b'{"v":1,"epochs":[]}', "shape"),
    (b'{"v":2,"epochs":[]}', "version"), (b'{"v":1,"epochs":[1]}', "shape"),
    (doc({"epoch": 1, "upto": 5, "max": 3, "to": 3}), "range"),            # upto past max
    (doc(entry(1, 2, 10, gaps=[[5, 6]])), "range"),                       # gap not after upto
    (doc(entry(1, 2, 10, gaps=[[3, 12]])), "range"),                      # gap past max
    (doc(entry(1, 2, 10, gaps=[[3, 4], [4, 6]])), "range"),               # overlapping gaps
    (doc({"epoch": 1, "upto": 2, "max": 10, "to": 10, "gaps": [[3, "x"]]}), "shape"),
    (doc(entry(1, 2, 10, to=5)), "range"),                                # no gaps, upto != to
    (doc(entry(1, 2, 2), entry(1, 2, 2)), "shape"),                       # epoch twice
    (doc({"epoch": -1, "upto": 0, "max": 0, "to": 0}), "field"),
    (doc({"epoch": 1, "upto": 0, "max": 2**64, "to": 0}), "json"),         # beyond int64
    (doc({"epoch": 1.5, "upto": 0, "max": 0, "to": 0}), "json"),           # floats refused
    (doc({"epoch": 1, "upto": 0, "max": 0, "to": 0, "x": 1}), "shape"),
    (b'{"v":1,"epochs":' + b"[" * 100 + b"]" * 100 + b"}", "json"),        # deep
    (b'{"v":1,"epochs":[' + b'{"epoch":1},' * 5000 + b'{}]}', "json"),    # too large
])
def test_a_malformed_receipt_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ReceiptError) as err:
        receipts.parse(payload)
    assert err.value.reason == reason, str(err.value)


def test_only_gateways_read_their_receipts_in_the_broker_acl() -> None:
    from edge_agent.fleet.brokerconf import acl_text
    lines = acl_text("edge").splitlines()
    assert "pattern read edge/%u/receipt" in lines
    assert not any("receipt" in ln and "write" in ln for ln in lines)


# ---------------------------------------------------------------- the spool


def cfg(mode: ReceiptMode = ReceiptMode.ON, **kw: Any) -> SpoolConfig:
    kw.setdefault("resend_grace_s", 0.0)
    return SpoolConfig(max_bytes=1024 * 1024, receipts=mode, **kw)


def r(*entries: EpochReceipt) -> Receipt:
    return Receipt(tuple(entries))


def rows(path: Path) -> tuple[list[int], list[int]]:
    """(every stored seq, the sent ones) of a spool file."""
    conn = sqlite3.connect(path)
    try:
        every = [s for (s,) in conn.execute("SELECT seq FROM batches ORDER BY id")]
        sent = [s for (s,) in conn.execute("SELECT seq FROM sent ORDER BY id")]
        return every, sent
    finally:
        conn.close()


def test_acknowledged_batches_wait_for_a_receipt_which_deletes_only_what_it_confirms(
        tmp_path: Path) -> None:
    path = tmp_path / "spool.db"

    async def go() -> None:
        spool = await Spool.open(path, cfg())
        await fill(spool, 10)
        assert await drain(spool, 6) == [0, 1, 2, 3, 4, 5]   # 6..9 not sent yet
        await spool.close()
        assert rows(path) == (list(range(10)), list(range(6)))
        spool = await Spool.open(path, cfg())
        assert spool.pending == 4                            # the sent ones wait for receipts
        # a receipt claiming all ten confirms only the six the broker acknowledged
        done = await spool.receipt(r(EpochReceipt(7, 9, 9, 9)))
        assert done is not None and len(done.deleted) == 6 and done.resend == []
        assert spool.confirms.last_confirmed == (7, 5)
        assert await drain(spool) == [6, 7, 8, 9]
        await spool.close()
        assert rows(path) == ([6, 7, 8, 9], [6, 7, 8, 9])
        counters = spool.stats_dict()
        assert counters["confirmed_batches"] == 6 and counters["dropped_batches"] == 0

    run(go())


def test_gaps_and_batches_sent_before_a_confirmed_one_are_sent_again(tmp_path: Path) -> None:
    async def go() -> None:
        spool = await Spool.open(tmp_path / "spool.db", cfg())
        await fill(spool, 10)
        assert await drain(spool) == list(range(10))
        # stored: 0..2, 5, 7; gap 3..4 reported; 6 lost silently before the confirmed 7;
        # 8 and 9 may still be on their way (sent after the last confirmed one)
        done = await spool.receipt(r(EpochReceipt(7, 2, 7, 7, ((3, 4), (6, 6)))))
        assert done is not None and len(done.deleted) == 5     # 0, 1, 2, 5, 7
        assert await drain(spool) == [3, 4, 6]
        done = await spool.receipt(r(EpochReceipt(7, 9, 9, 9)))
        assert done is not None and len(done.deleted) == 5     # 3, 4, 6, 8, 9
        await spool.close()
        assert rows(tmp_path / "spool.db") == ([], [])

    run(go())


def test_a_hostile_receipt_cannot_delete_unsent_batches_or_flood_resends(tmp_path: Path) -> None:
    async def go() -> None:
        spool = await Spool.open(tmp_path / "spool.db", cfg(resend_grace_s=0.0))
        await fill(spool, MAX_RESEND + 50, size=40)
        await drain(spool, MAX_RESEND + 20)
        # confirms only the last sent one: every earlier one looks lost
        last = MAX_RESEND + 19
        lying = EpochReceipt(7, -1, last, last, ((0, last - 1),))
        done = await spool.receipt(r(lying))
        assert done is not None and len(done.deleted) == 1
        assert len(done.resend) == MAX_RESEND            # bounded per receipt
        assert spool.pending == 30 + MAX_RESEND
        await spool.close()

    run(go())


def test_the_cap_evicts_sent_batches_oldest_first_and_counts_them(tmp_path: Path) -> None:
    async def go() -> None:
        spool = await Spool.open(tmp_path / "spool.db", SpoolConfig(
            max_bytes=256 * 1024, receipts=ReceiptMode.ON, group_commit_ms=0))
        await fill(spool, 50, size=300)
        await drain(spool)
        await spool.receipt(r(EpochReceipt(7, 9, 9, 9)))        # 0..9 confirmed, 10..49 sent
        await fill(spool, 300, start=50, size=300)             # far past the cap
        db = spool._db
        assert spool.pending == db.rows - db.sent_rows        # only unsent ones wait
        stats = spool.stats_dict()
        assert stats["dropped_batches"] == 350 - 10 - db.rows
        assert db.sent_rows == 0 and stats["full_events"] == 0  # the oldest, sent, went first
        assert await drain(spool) == list(range(350 - db.rows, 350))
        await spool.close()

    run(go())


def test_retention_drops_unconfirmed_batches_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"

    async def go() -> None:
        spool = await Spool.open(path, cfg(confirm_retention_s=0.001))
        spool.confirms.expire_every_s = 0.0
        await fill(spool, 5)
        await drain(spool)
        await asyncio.sleep(0.5)  # the sent marks are committed, then older than retention
        await fill(spool, 1, start=5)   # a commit: retention is looked at after it
        await asyncio.sleep(0.2)
        stats = spool.stats_dict()
        assert stats["expired_batches"] == 5 and stats["dropped_batches"] == 5
        await spool.close()

    run(go())


def test_auto_mode_deletes_on_puback_until_the_first_receipt(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"

    async def go() -> None:
        spool = await Spool.open(path, cfg(ReceiptMode.AUTO))
        await fill(spool, 3)
        await drain(spool)
        await spool.close()
        assert rows(path) == ([], [])
        spool = await Spool.open(path, cfg(ReceiptMode.AUTO))
        await spool.receipt(r(EpochReceipt(7, 2, 2, 2)))
        await fill(spool, 3, start=3)
        await drain(spool)
        await spool.close()
        assert rows(path) == ([3, 4, 5], [3, 4, 5])        # held: an ingest confirms now
        spool = await Spool.open(path, cfg(ReceiptMode.OFF))
        assert await spool.receipt(r(EpochReceipt(7, 5, 5, 5))) is None
        await spool.close()

    run(go())


def test_life_counters_and_the_epoch_end_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"

    async def go() -> None:
        spool = await Spool.open(path, cfg())
        spool.confirms.note_life(1234, 41, missed_slots=3, rejected=2)
        await fill(spool, 1)
        await spool.close()
        spool = await Spool.open(path, cfg())
        assert spool.confirms.previous_life == {"life_epoch": 1234, "life_seq": 41}
        spool.confirms.note_life(5678, 0, missed_slots=1, rejected=0)
        await fill(spool, 1, start=1)
        stats = spool.stats_dict()
        await spool.close()
        assert stats["missed_slots"] == 4 and stats["rejected"] == 2

    run(go())


# ---------------------------------------------------------------- the ingest


def test_ingest_receipts_come_from_the_database_and_tails_are_gaps(tmp_path: Path) -> None:
    from edge_agent.codecs.batch import DataBatch

    store = IngestStore(str(tmp_path / "ingest.db"))
    try:
        def put(epoch: int, seq: int) -> None:
            b = DataBatch("gw-a", epoch, seq, [], 3)
            store.record_each([Received("edge/gw-a/data", b"x", b)])
        for s in (0, 1, 2, 5, 6, 9):
            put(100, s)
        for s in (0, 1):
            put(200, s)
        built = rc.build(store, "gw-a", [100, 200, 300])
        assert built is not None
        got = receipts.parse(built)
        e100, e200 = got.entry(100), got.entry(200)
        assert e100 == EpochReceipt(100, 2, 9, 9, ((3, 4), (7, 8)))
        assert e200 == EpochReceipt(200, 1, 1, 1)
        assert got.entry(300) is None
        # the next boot says epoch 200 ended at seq 4: its tail 2..4 is a gap
        state = json.dumps({"status": "online", "epoch": 300, "prev_epoch": 200,
                            "prev_seq": 4}).encode()
        rc.record_epoch_end(store, "edge/gw-a/state", state, "edge")
        assert ("gw-a", 200, 2, 4) in store.scan_gaps()
        with pytest.raises(ValueError):
            rc.record_epoch_end(store, "edge/gw-a/state", b'{"prev_epoch":"x"}', "edge")
    finally:
        store.close()
