"""Spool benchmark: commit rate, disk use per reading, replay to a broker and through the ingest.

    .venv/bin/python bench/spool_bench.py [--runs 3] [--backlog-readings 1000000]

Prints medians of several runs; never fails on timing. Batches hold 100 readings of 10 series
(real version 2 payloads with changing values), as the agent would encode them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edge_agent.codecs.batch_v2 import encode_batch_v2
from edge_agent.config.model import SpoolConfig, SpoolSync
from edge_agent.fleet.ingest.store import IngestStore
from edge_agent.protocol.broker import parse_broker_url
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.spool import Spool
from edge_agent.runtime.spool_core import RatePacer
from edge_agent.runtime.uplink import Uplink
from edge_agent.tools.devbroker import Mosquitto
from edge_agent.tools.procs import spawn_until_ready, stop_process

SEED = 99
PER_BATCH = 100


def payloads(n: int, rng: random.Random) -> list[bytes]:
    """n encoded batches of 100 readings: 10 series x 10 polls of meter-like values."""
    out = []
    energy = [rng.randint(10**6, 10**7) for _ in range(5)]
    for seq in range(n):
        rs = []
        for poll in range(10):
            ts = 1_700_000_000_000 + (seq * 10 + poll) * 1000
            for i in range(5):
                energy[i] += rng.randint(0, 40)
                rs.append(Reading(f"m{i}", "energy_wh", ts, energy[i]))
                rs.append(Reading(f"m{i}", "voltage", ts, round(230 + rng.gauss(0, 2), 1)))
        out.append(encode_batch_v2("gw-bench", 1, seq, rs))
    return out


async def commit_rate(path: Path, cfg: SpoolConfig, batches: list[bytes],
                      producers: int) -> float:
    """Readings per second committed by ``producers`` concurrent writers."""
    spool = await Spool.open(path, cfg)
    it = iter(enumerate(batches))

    async def producer() -> None:
        for seq, p in it:
            await spool.put(p, epoch=1, seq=seq, readings=PER_BATCH)

    t0 = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    dt = time.perf_counter() - t0
    await spool.close()
    return len(batches) * PER_BATCH / dt


async def fill(path: Path, batches: list[bytes]) -> tuple[int, int]:
    """Store a backlog; (disk bytes with the WAL checkpointed, disk bytes as the agent left it)."""
    spool = await Spool.open(path, SpoolConfig(max_bytes=1 << 30, group_commit_ms=2))
    await asyncio.gather(*(spool.put(p, epoch=1, seq=i, readings=PER_BATCH)
                           for i, p in enumerate(batches)))
    live = spool._db.disk_bytes() - spool._db.reserve_path.stat().st_size
    await spool.close()   # the last close checkpoints and removes the WAL
    return os.path.getsize(path), live


async def replay(path: Path, url: str, n: int) -> float:
    """Readings per second from the spool's backlog to the broker (PUBACKed), unpaced."""
    spool = await Spool.open(path, SpoolConfig(max_bytes=1 << 30))
    uplink = Uplink(parse_broker_url(url), "gw-bench", 1, "bench", SystemClock(), store=spool,
                    pacer=RatePacer(0, 0))
    t0 = time.perf_counter()
    task = asyncio.create_task(uplink.run())
    ok = await uplink.drain(timeout_s=600)
    dt = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await spool.close()
    assert ok and uplink.counters.published_batches == n
    return n * PER_BATCH / dt


def ingest_rate(path: Path, broker: Mosquitto, n: int, work: Path) -> float:
    """Readings per second from the spool through the broker into the ingest's SQLite."""
    db = work / "ingest.db"
    db.unlink(missing_ok=True)
    proc = spawn_until_ready([sys.executable, "-m", "edge_agent.fleet.cli", "ingest",
                              "--broker", broker.url, "--db", str(db), "--client-id", "bench"],
                             work / "ingest.log", "ingest subscribed", what="ingest")
    try:
        t0 = time.perf_counter()
        asyncio.run(replay(path, broker.url, n))
        store = IngestStore(str(db))
        try:
            while store.query("SELECT count(*) FROM batches")[0][0] < n:
                time.sleep(0.05)
        finally:
            store.close()
        return n * PER_BATCH / (time.perf_counter() - t0)
    finally:
        stop_process(proc)


def main() -> None:
    """Run every measurement ``--runs`` times and print the medians."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backlog-readings", type=int, default=1_000_000)
    args = ap.parse_args()
    rng = random.Random(SEED)
    print(f"seed {SEED}, {args.runs} runs each, batches of {PER_BATCH} readings")
    n_backlog = args.backlog_readings // PER_BATCH
    backlog = payloads(max(n_backlog, 4000), rng)   # distinct (epoch, seq): none deduplicated
    commit_batches = backlog[:4000]
    backlog = backlog[:n_backlog]
    encoded = sum(len(p) for p in backlog)
    work = Path(tempfile.mkdtemp(prefix="spool-bench-"))
    cases = [("FULL, commit per batch (1 writer, window 0)", SpoolSync.FULL, 0.0, 1, 1000),
             ("FULL, group commit 2 ms (64 writers)", SpoolSync.FULL, 2.0, 64, 4000),
             ("NORMAL, group commit 2 ms (64 writers)", SpoolSync.NORMAL, 2.0, 64, 4000)]
    try:
        for name, sync, window, writers, n in cases:
            rates = []
            for r in range(args.runs):
                path = work / f"commit-{r}.db"
                cfg = SpoolConfig(max_bytes=1 << 30, synchronous=sync, group_commit_ms=window)
                rates.append(asyncio.run(commit_rate(path, cfg, commit_batches[:n], writers)))
                for f in work.glob(f"commit-{r}.db*"):
                    f.unlink()
            print(f"commit  {name}: {statistics.median(rates):,.0f} readings/s "
                  f"(runs {', '.join(f'{x:,.0f}' for x in rates)})")
        path = work / "backlog.db"
        at_rest, live = asyncio.run(fill(path, backlog))
        readings = len(backlog) * PER_BATCH
        print(f"disk    {readings:,} readings, encoded {encoded:,} bytes "
              f"({encoded / readings:.2f} B/reading): spool file {at_rest:,} bytes = "
              f"{at_rest / readings:.2f} B/reading = {at_rest / encoded:.3f} x encoded "
              f"(while running, with WAL and index: {live / encoded:.3f} x)")
        broker = Mosquitto()
        broker.start()
        try:
            rates = []
            for _ in range(args.runs):
                copy = work / "replay.db"
                shutil.copyfile(path, copy)
                rates.append(asyncio.run(replay(copy, broker.url, len(backlog))))
            print(f"replay  {readings:,}-reading backlog to mosquitto (QoS 1, PUBACKed, "
                  f"deleted): {statistics.median(rates):,.0f} readings/s "
                  f"(runs {', '.join(f'{x:,.0f}' for x in rates)})")
            rates = []
            for _ in range(args.runs):
                copy = work / "replay.db"
                shutil.copyfile(path, copy)
                rates.append(ingest_rate(copy, broker, len(backlog), work))
            print(f"ingest  the same backlog through mosquitto into the ingest (SQLite, "
                  f"deduplicated): {statistics.median(rates):,.0f} readings/s "
                  f"(runs {', '.join(f'{x:,.0f}' for x in rates)})")
        finally:
            broker.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
