"""Nothing lost end to end, with receipts: faults where the broker loses what it acknowledged.

The real agent (a subprocess), simulators, a private mosquitto with the fault's configuration
and the real ingest. Each run ends with every batch the agent committed in the ingest
database exactly once (every seq of the epoch, no reading twice), or counted as dropped:

- mosquitto killed (kill -9) while the ingest is away, persistence on (autosave 1800 s): what
  it queued for the ingest is gone after the PUBACKs;
- a broker queue limit of 5 for the absent ingest: the rest dropped by the broker;
- a broker without persistence restarted while the ingest is away;
- kill -9 of the agent at the end of its epoch, with the broker also losing that tail: the
  next boot names the epoch's end and sends the tail again.

EDGE_RECEIPT_AWAY_S sets how long the ingest is away (default 6 s).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.fleet.ingest.store import IngestStore
from edge_agent.tools.devbroker import Mosquitto
from tests.support.sitekit import (
    PY,
    agent,
    ingest_process,
    simulator,
    spool_counters,
    write_site,
)
from tests.test_loss import ingest_seqs, last_run, wait

AWAY_S = float(os.environ.get("EDGE_RECEIPT_AWAY_S", "6"))
pytestmark = [pytest.mark.integration, pytest.mark.serial, pytest.mark.timeout(240)]

DEVICES = [("meter", "lan", 1, "energy_meter"), ("lamp", "rs485", 3, "streetlight"),
           ("env", "lan", 3, "env_monitor")]


def broker(conf: str) -> Mosquitto:
    b = Mosquitto()
    b.extra_conf = conf.replace("DIR", str(b.dir))
    b.start()
    return b


def kill_9(b: Mosquitto) -> None:
    """The broker dies without saving anything."""
    assert b.proc is not None
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()
    b.proc = None


def site(tmp_path: Path, receipts: str = "auto") -> Path:
    return write_site(tmp_path, DEVICES, poll_s=0.2, window_s=0.25, max_silence_s=0.5, extra=(
        "[spool]\nreplay_msgs_per_s = 100\nreplay_bytes_per_s = 0\nresend_grace_s = 1\n"
        f'receipts = "{receipts}"\n'))


def receipts_seen(spool: Path) -> bool:
    try:
        return spool.exists() and spool_counters(spool).get("receipts_seen", 0) == 1
    except sqlite3.OperationalError:   # created a moment ago: no tables yet
        return False


def assert_exactly_once(db: Path, spool: Path, epochs: dict[int, int]) -> dict[str, int]:
    """Every seq 0..n-1 of each epoch at the ingest, no reading twice; dropped ones counted."""
    seqs = ingest_seqs(db)
    counters = spool_counters(spool)
    dropped = counters.get("dropped_batches", 0)
    missing = {e: sorted(set(range(n)) - seqs.get(e, set())) for e, n in epochs.items()}
    assert sum(len(m) for m in missing.values()) == dropped, (missing, counters)
    store = IngestStore(str(db))
    try:
        rows = store.query("SELECT device, point, ts_ms FROM readings")
        dups = int(store.query("SELECT coalesce(sum(duplicates), 0) FROM streams")[0][0])
    finally:
        store.close()
    assert len(rows) == len(set(rows)), "a reading stored twice"
    series: dict[tuple[str, str], int] = defaultdict(int)
    for device, point, _ts in rows:
        series[(device, point)] += 1
    return {"batches": sum(len(s) for s in seqs.values()), "readings": len(rows),
            "duplicates_dropped": dups, "dropped": dropped,
            "resent": counters.get("resent_batches", 0),
            "confirmed": counters.get("confirmed_batches", 0)}


def _fault_run(tmp_path: Path, conf: str, fault: Callable[[Mosquitto, Callable[[], None]], None],
               what: str) -> str:
    """Run the fault with the ingest away; the broker's log."""
    b = broker(conf)
    db = tmp_path / "ingest.db"
    spool = tmp_path / "state" / "spool.db"
    s = site(tmp_path)
    try:
        with simulator(s, tmp_path):
            ingest = ingest_process(b.url, f"sqlite:///{db}", tmp_path, "--client-id", what)
            ingest.__enter__()
            try:
                with agent(s, b.url, tmp_path):
                    wait(lambda: receipts_seen(spool), 30, "the first receipt")
                    ingest.__exit__(None, None, None)       # the ingest goes away
                    time.sleep(AWAY_S)
                    fault(b, lambda: None)
                    ingest = ingest_process(b.url, f"sqlite:///{db}", tmp_path,
                                            "--client-id", what)
                    ingest.__enter__()
                    time.sleep(2.0)   # live batches after the return: their receipts
                epoch, built = last_run(tmp_path / "agent.log")
                wait(lambda: set(range(built)) <= ingest_seqs(db).get(epoch, set()), 60,
                     f"all {built} batches at the ingest")
            finally:
                ingest.__exit__(None, None, None)
    finally:
        broker_log = (b.dir / "mosquitto.log").read_text(errors="replace")
        b.close()
    figures = assert_exactly_once(db, spool, {epoch: built})
    print(f"{what}: {built} batches built, {figures}")
    assert figures["dropped"] == 0 and figures["resent"] > 0   # lost by the broker, sent again
    return broker_log


def _restart_killed(b: Mosquitto, _: Callable[[], None]) -> None:
    kill_9(b)
    b.start()


def test_broker_kill_9_while_the_ingest_is_away_loses_nothing(tmp_path: Path) -> None:
    _fault_run(tmp_path, "persistence true\npersistence_location DIR/\n", _restart_killed,
               "kill9")


def _nothing(_b: Mosquitto, _: Callable[[], None]) -> None:
    pass


def test_a_broker_queue_limit_of_5_loses_nothing(tmp_path: Path) -> None:
    log = _fault_run(tmp_path, "max_queued_messages 5\nlog_type notice\n", _nothing, "queue5")
    assert "Outgoing messages are being dropped" in log   # the broker did drop them


def _restart(b: Mosquitto, _: Callable[[], None]) -> None:
    b.stop()
    b.start()


def test_a_broker_without_persistence_restarted_loses_nothing(tmp_path: Path) -> None:
    _fault_run(tmp_path, "", _restart, "nopersist")


def test_agent_kill_9_at_the_end_of_an_epoch_its_tail_is_sent_by_the_next(
        tmp_path: Path) -> None:
    b = broker("")
    db = tmp_path / "ingest.db"
    spool = tmp_path / "state" / "spool.db"
    s = site(tmp_path)
    try:
        with simulator(s, tmp_path):
            ingest = ingest_process(b.url, f"sqlite:///{db}", tmp_path, "--client-id", "tail")
            ingest.__enter__()
            log = (tmp_path / "killed.log").open("ab")
            proc = subprocess.Popen([*PY, "run", str(s), "--broker", b.url], stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                wait(lambda: receipts_seen(spool), 30, "the first receipt")
                ingest.__exit__(None, None, None)        # the ingest goes away
                time.sleep(2.0)                           # the epoch's tail: acknowledged only
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                log.close()
            conn = sqlite3.connect(spool)
            try:
                old_epoch, last_seq = (int(v) for v in conn.execute(
                    "SELECT (SELECT value FROM meta WHERE key = 'life_epoch'), "
                    "(SELECT value FROM meta WHERE key = 'life_seq')").fetchone())
                committed = max(int(r[0]) for r in conn.execute(
                    "SELECT seq FROM batches WHERE epoch = ?", (old_epoch,)))
            finally:
                conn.close()
            _restart(b, lambda: None)   # and the broker loses the tail it queued
            ingest = ingest_process(b.url, f"sqlite:///{db}", tmp_path, "--client-id", "tail")
            ingest.__enter__()
            try:
                with agent(s, b.url, tmp_path):
                    wait(lambda: set(range(committed + 1))
                         <= ingest_seqs(db).get(old_epoch, set()), 60,
                         "the killed epoch's tail at the ingest")
                epoch, built = last_run(tmp_path / "agent.log")
                wait(lambda: set(range(built)) <= ingest_seqs(db).get(epoch, set()), 60,
                     "the new epoch at the ingest")
            finally:
                ingest.__exit__(None, None, None)
    finally:
        b.close()
    store = IngestStore(str(db))
    try:
        ends = store.query("SELECT epoch, last_seq FROM epoch_ends")
        gaps = store.scan_gaps()
    finally:
        store.close()
    assert (old_epoch, last_seq) in [(int(e), int(s)) for e, s in ends]
    # built but not committed when killed: not stored anywhere, and reported as a gap
    assert all(lo > committed for _gw, ep, lo, _hi in gaps if ep == old_epoch), gaps
    figures = assert_exactly_once(db, spool, {old_epoch: committed + 1, epoch: built})
    print(f"agent kill -9: old epoch {committed + 1} batches committed (last built "
          f"{last_seq}), new epoch {built}; {figures}; open gaps {gaps}")


def test_two_ingest_workers_on_a_shared_subscription_confirm_consistently(
        tmp_path: Path) -> None:
    b = broker("")
    db = tmp_path / "ingest.db"
    spool = tmp_path / "state" / "spool.db"
    # Receipts from the first batch on ("auto" deletes on PUBACK until the first receipt, and
    # how many batches go before it is a matter of timing): every batch is confirmed or waits.
    s = site(tmp_path, receipts="on")
    try:
        with simulator(s, tmp_path), \
                ingest_process(b.url, f"sqlite:///{db}", tmp_path, "--share", "g",
                               "--client-id", "w1", name="w1"), \
                ingest_process(b.url, f"sqlite:///{db}", tmp_path, "--share", "g",
                               "--client-id", "w2", name="w2"):
            with agent(s, b.url, tmp_path):
                wait(lambda: receipts_seen(spool), 30, "the first receipt")
                time.sleep(AWAY_S)
            epoch, built = last_run(tmp_path / "agent.log")
            wait(lambda: set(range(built)) <= ingest_seqs(db).get(epoch, set()), 60,
                 f"all {built} batches at the ingest")
        logs = [(tmp_path / f"w{i}.log").read_text() for i in (1, 2)]
    finally:
        b.close()
    figures = assert_exactly_once(db, spool, {epoch: built})
    conn = sqlite3.connect(spool)
    try:
        waiting = int(conn.execute("SELECT count(*) FROM sent").fetchone()[0])
    finally:
        conn.close()
    print(f"two workers: {built} batches, {figures}, {waiting} still awaiting a receipt")
    assert all("ingest subscribed" in log for log in logs)
    assert figures["dropped"] == 0
    # confirmed by receipts from either worker: only the last moments wait (the next boot's
    # first receipts confirm them)
    assert figures["confirmed"] == built - waiting and waiting < built // 2
