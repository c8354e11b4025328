"""Nothing lost: the real agent (a subprocess) against a real mosquitto and the real ingest.

- a broker outage (60 s by default) while polling, and a broker restart in the middle of the
  replay that follows: every reading reaches the ingest once, in order per series;
- kill -9 of the agent at seeded random moments (30 times by default), restarting it each time:
  every batch the spool committed reaches the ingest, and the spool passes its integrity check
  after every kill;
- the disk cap reached while the broker is away: the drops the agent counts are exactly the
  batches the ingest finds missing.

EDGE_LOSS_OUTAGE_S and EDGE_LOSS_KILLS change the outage length and the number of kills.
"""

from __future__ import annotations

import os
import random
import re
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
    spool_batches,
    spool_counters,
    write_site,
)

SEED = int(os.environ.get("EDGE_LOSS_SEED", "20240607"))
OUTAGE_S = float(os.environ.get("EDGE_LOSS_OUTAGE_S", "60"))
KILLS = int(os.environ.get("EDGE_LOSS_KILLS", "30"))
print(f"test_loss seed {SEED}, outage {OUTAGE_S} s, kills {KILLS}")

pytestmark = [pytest.mark.integration, pytest.mark.serial, pytest.mark.timeout(600)]

DEVICES = [("meter", "lan", 1, "energy_meter"), ("water", "rs485", 2, "water_meter"),
           ("lamp", "rs485", 3, "streetlight"), ("cabinet", "lan", 2, "signal_cabinet"),
           ("env", "lan", 3, "env_monitor")]


def persistent_broker() -> Mosquitto:
    """A broker that keeps subscriber sessions across a (graceful) restart."""
    b = Mosquitto()
    b.extra_conf = f"persistence true\npersistence_location {b.dir}/\n"
    b.start()
    return b


def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` (no assertion is about time)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def ingest_seqs(db: Path) -> dict[int, set[int]]:
    """Seqs stored by the ingest, per epoch."""
    store = IngestStore(str(db))
    try:
        out: dict[int, set[int]] = defaultdict(set)
        for epoch, seq in store.query("SELECT epoch, seq FROM batches"):
            out[int(epoch)].add(int(seq))
        return out
    finally:
        store.close()


def last_run(log: Path) -> tuple[int, int]:
    """(epoch, batches built) of the agent run that stopped gracefully, from its log."""
    found = re.findall(r"stopped(?: in [\d.]+ s)?: epoch (\d+), (\d+) batches built",
                       log.read_text())
    assert found, f"the agent did not log its stop: {log.read_text()[-2000:]}"
    epoch, built = found[-1]
    return int(epoch), int(built)


def wait_for_all(db: Path, epoch: int, built: int) -> None:
    """Wait until the ingest holds seqs 0..built-1 of ``epoch`` (the tail included)."""
    wait(lambda: ingest_seqs(db).get(epoch, set()) >= set(range(built)), 60,
         f"all {built} batches of epoch {epoch} at the ingest")


def spool_left(path: Path) -> int:
    """Batches still waiting in the spool to be published (with receipts, batches published
    and not yet confirmed stay in the spool too; they are not counted here)."""
    if not path.exists():
        return 0
    import sqlite3
    spool_batches(path)  # fails if the spool fails its check
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM batches WHERE id NOT IN "
                                "(SELECT id FROM sent)").fetchone()[0])
    except sqlite3.OperationalError:  # created a moment ago: no tables yet
        return 0
    finally:
        conn.close()


def assert_contiguous(seqs: dict[int, set[int]]) -> None:
    """Every epoch holds seqs 0..max without a hole."""
    for epoch, got in seqs.items():
        missing = set(range(max(got) + 1)) - got
        assert not missing, f"epoch {epoch}: seqs missing at the ingest: {sorted(missing)[:20]}"


def _outage_and_replay(b: Mosquitto, site: Path, tmp_path: Path, db: Path,
                       spool: Path) -> tuple[int, int, int, int]:
    """Run the agent through the outage and a restart mid-replay; (down, up, backlog, left)."""
    with agent(site, b.url, tmp_path):
        wait(lambda: len(ingest_seqs(db)) == 1 and len(next(iter(
            ingest_seqs(db).values()))) >= 10, 30, "the first batches")
        b.stop()
        down_ms = int(time.time() * 1000)
        time.sleep(OUTAGE_S)
        up_ms = int(time.time() * 1000)
        backlog = spool_left(spool)
        b.start()
        # the replay is paced at 25 batches/s: restart the broker while it runs
        wait(lambda: spool_left(spool) < backlog * 0.6, 60, "the replay to get going")
        left = spool_left(spool)
        b.stop()
        time.sleep(2.0)
        b.start()
        wait(lambda: spool_left(spool) <= 2, 120, "the replay to finish")
    return down_ms, up_ms, backlog, left


def test_broker_outage_and_restart_mid_replay_lose_nothing(tmp_path: Path) -> None:
    b = persistent_broker()
    db = tmp_path / "ingest.db"
    spool = tmp_path / "state" / "spool.db"
    site = write_site(tmp_path, DEVICES, poll_s=0.2, window_s=0.25, extra=(
        "[spool]\nreplay_msgs_per_s = 25\nreplay_bytes_per_s = 0\n"))
    try:
        with simulator(site, tmp_path), \
                ingest_process(b.url, f"sqlite:///{db}", tmp_path, "--client-id", "loss-out"):
            down_ms, up_ms, backlog, left = _outage_and_replay(b, site, tmp_path, db, spool)
            wait(lambda: spool_left(spool) == 0, 10, "the spool to be empty after the stop")
            epoch, built = last_run(tmp_path / "agent.log")
            wait_for_all(db, epoch, built)
    finally:
        b.close()
    print(f"outage {OUTAGE_S:.0f} s: backlog {backlog} batches; broker restarted with {left} "
          "still to replay")
    assert backlog >= OUTAGE_S / 2  # the agent kept polling and spooling all along
    assert left > 0

    seqs = ingest_seqs(db)
    assert seqs == {epoch: set(range(built))}     # every batch, the tail included
    assert spool_counters(spool).get("dropped_batches", 0) == 0
    store = IngestStore(str(db))
    try:
        rows = store.query("SELECT device, point, ts_ms FROM readings ORDER BY id")
        dups = store.query("SELECT duplicates FROM streams")[0][0]
    finally:
        store.close()
    print(f"ingest: {len(next(iter(seqs.values())))} batches, {len(rows)} readings, "
          f"{dups} duplicate batches dropped")
    series: dict[tuple[str, str], list[int]] = defaultdict(list)
    for device, point, ts in rows:
        series[(device, point)].append(ts)
    for key, ts in series.items():
        assert ts == sorted(ts), f"{key}: readings out of order"
        assert len(ts) == len(set(ts)), f"{key}: a reading stored twice"
    # report by exception sends only changed values: some were polled during the outage, and
    # the seqs without a hole prove every batch holding them arrived
    during = [d for d, _, ts in rows if down_ms < ts < up_ms]
    print(f"{len(during)} readings polled during the outage, from {sorted(set(during))}")
    assert len(during) > OUTAGE_S


def test_kill_minus_9_at_random_moments_loses_no_committed_batch(
        tmp_path: Path, own_broker: Mosquitto) -> None:
    rng = random.Random(SEED)
    db = tmp_path / "ingest.db"
    spool = tmp_path / "state" / "spool.db"
    site = write_site(tmp_path, DEVICES, poll_s=0.2, window_s=0.2)
    committed: dict[tuple[int, int], int] = {}
    moments = [round(rng.uniform(0.2, 3.0), 3) for _ in range(KILLS)]
    print(f"kill moments after start (seed {SEED}): {moments}")
    log = (tmp_path / "kills.log").open("ab")
    with simulator(site, tmp_path), \
            ingest_process(own_broker.url, f"sqlite:///{db}", tmp_path, "--client-id", "kill"):
        for i, moment in enumerate(moments):
            proc = subprocess.Popen([*PY, "run", str(site), "--broker", own_broker.url],
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                time.sleep(moment)
            finally:
                proc.kill()
                proc.wait()
            if spool.exists():
                for epoch, seq, n in spool_batches(spool):   # fails if the check fails
                    committed[(epoch, seq)] = n
            print(f"kill {i + 1}: after {moment} s, {spool_left(spool)} batches in the spool")
        log.close()
        epochs_before = set(ingest_seqs(db))
        with agent(site, own_broker.url, tmp_path):   # the last run drains everything
            wait(lambda: set(ingest_seqs(db)) - epochs_before != set(), 30,
                 "the last run's first batch")
            wait(lambda: spool_left(spool) == 0 and all(
                s in ingest_seqs(db).get(e, set()) for e, s in committed), 60,
                "every committed batch at the ingest")
        epoch, built = last_run(tmp_path / "agent.log")
        wait_for_all(db, epoch, built)
    seqs = ingest_seqs(db)
    store = IngestStore(str(db))
    try:
        counts = {(int(e), int(s)): int(n)
                  for e, s, n in store.query("SELECT epoch, seq, readings FROM batches")}
        gaps = store.scan_gaps()
    finally:
        store.close()
    print(f"{KILLS} kills: {len(seqs)} epochs at the ingest, {len(counts)} batches, "
          f"{len(committed)} seen in the spool between kills")
    assert len(seqs) >= KILLS // 2          # most runs got as far as publishing
    assert all(counts.get(k) == n for k, n in committed.items()), "a committed batch is missing"
    assert_contiguous(seqs)
    assert gaps == []


# Both policies' exact counts are proven on the spool itself (tests/test_spool.py); here the
# default one, end to end. EDGE_LOSS_CAP_POLICIES="drop-oldest,reject-new" runs both.
CAP_POLICIES = os.environ.get("EDGE_LOSS_CAP_POLICIES", "drop-oldest").split(",")


@pytest.mark.parametrize("policy", CAP_POLICIES)
def test_disk_cap_drops_are_counted_exactly(tmp_path: Path, policy: str) -> None:
    b = persistent_broker()
    db = tmp_path / "ingest.db"
    spool = tmp_path / "state" / "spool.db"
    many = [(f"m{i}", "lan", i + 1, "energy_meter") for i in range(6)] + [
        ("lamp", "rs485", 1, "streetlight")]
    # Every reading is sent (a silence shorter than the poll interval): version 3 batches take
    # about 5 bytes a reading, and the smallest cap still has to fill within the wait below.
    site = write_site(tmp_path, many, poll_s=0.1, window_s=0.1, max_silence_s=0.05, extra=(
        f"[spool]\nmax_bytes = 262144\npolicy = \"{policy}\"\nreplay_msgs_per_s = 0\n"
        "replay_bytes_per_s = 0\n"))
    try:
        # the ingest's session is on the broker before the outage, so nothing sent after the
        # broker comes back can miss it. Without receipts: a batch evicted while it waits for
        # its receipt is counted as dropped although it may arrive (docs/spool.md), and this
        # test counts exactly.
        with simulator(site, tmp_path), \
                ingest_process(b.url, f"sqlite:///{db}", tmp_path, "--client-id", "cap",
                               "--no-receipts"):
            b.stop()
            with agent(site, b.url, tmp_path):
                wait(lambda: spool.exists()
                     and spool_counters(spool).get("dropped_batches", 0) >= 5,
                     120, "the cap to drop 5 batches")
                b.start()
                wait(lambda: spool_left(spool) <= 2, 60, "the backlog to drain")
            wait(lambda: spool_left(spool) == 0, 10, "the spool to be empty")
            epoch, built = last_run(tmp_path / "agent.log")
            counters = spool_counters(spool)
            wait(lambda: len(ingest_seqs(db).get(epoch, set()))
                 >= built - counters["dropped_batches"], 60, "every kept batch at the ingest")
    finally:
        b.close()
    seqs = ingest_seqs(db)
    assert set(seqs) == {epoch}
    got = seqs[epoch]
    missing = set(range(built)) - got
    print(f"{policy}: dropped {counters['dropped_batches']} batches "
          f"({counters['dropped_readings']} readings); the ingest misses {len(missing)} "
          f"of {built}")
    assert got <= set(range(built))
    assert len(missing) == counters["dropped_batches"]
    if policy == "reject-new":
        # the oldest were kept; a smaller batch may still fit after a bigger one was refused
        assert min(missing) > 0
    else:
        assert 0 in missing                                     # the oldest went first
