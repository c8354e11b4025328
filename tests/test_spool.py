"""The spool on a real SQLite file: durability, order, the cap, salvage, a really full disk."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.model import SpoolConfig, SpoolPolicy, SpoolSync
from edge_agent.protocol.errors import SpoolError
from edge_agent.runtime.spool import Spool
from edge_agent.runtime.spool_core import NewBatch, StoredRow, admit, layout, row_cost
from edge_agent.runtime.spool_file import check_file

SEED = 5150
print(f"test_spool seed {SEED}")
pytestmark = pytest.mark.timeout(120)


def run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine on a fresh loop, guarded against hanging."""
    async def guarded() -> Any:
        async with asyncio.timeout(60):
            return await coro
    return asyncio.run(guarded())


def payload(seq: int, size: int = 200) -> bytes:
    """A recognisable payload of ``size`` bytes."""
    head = f"batch-{seq}-".encode()
    return (head * (size // len(head) + 1))[:size]


async def fill(spool: Spool, n: int, *, start: int = 0, size: int = 200,
               epoch: int = 7) -> list[bool]:
    """Store batches start..start+n-1, one after the other."""
    return [await spool.put(payload(s, size), epoch=epoch, seq=s, readings=10)
            for s in range(start, start + n)]


async def drain(spool: Spool, limit: int = 10**6) -> list[int]:
    """Take and acknowledge everything; the seqs in publishing order."""
    out: list[int] = []
    while len(out) < limit:
        item = await spool.take()
        if item is None:
            break
        out.append(item.seq)
        await spool.ack(item)
    return out


def test_batches_survive_a_reopen_in_order_and_in_flight_goes_back_to_ready(
        tmp_path: Path) -> None:
    path = tmp_path / "spool.db"

    async def first() -> None:
        spool = await Spool.open(path, SpoolConfig())
        assert await fill(spool, 10) == [True] * 10
        assert await drain(spool, limit=3) == [0, 1, 2]
        item = await spool.take()           # in flight when the process goes away
        assert item is not None and item.seq == 3
        await spool.close()

    async def second() -> list[int]:
        spool = await Spool.open(path, SpoolConfig())
        assert spool.pending == 7
        seqs = await drain(spool)
        await spool.close()
        return seqs

    run(first())
    assert run(second()) == [3, 4, 5, 6, 7, 8, 9]
    assert check_file(path) is None


def test_appends_while_publishing_keep_the_order(tmp_path: Path) -> None:
    async def main() -> list[int]:
        spool = await Spool.open(tmp_path / "spool.db", SpoolConfig(group_commit_ms=0))
        got: list[int] = []
        for start in range(0, 1000, 100):    # more than a read-ahead chunk in between
            await fill(spool, 100, start=start)
            got += await drain(spool, limit=37)
        got += await drain(spool)
        await spool.close()
        return got

    assert run(main()) == list(range(1000))


def test_group_commit_gathers_concurrent_appends(tmp_path: Path) -> None:
    async def main() -> Spool:
        spool = await Spool.open(tmp_path / "spool.db", SpoolConfig(group_commit_ms=5))
        results = await asyncio.gather(*(spool.put(payload(i), seq=i, readings=100)
                                         for i in range(500)))
        assert all(results)
        seqs = await drain(spool)
        assert seqs == list(range(500))
        await spool.close()
        return spool

    spool = run(main())
    print(f"500 concurrent appends in {spool.counters.commits} commits")
    assert spool.counters.stored_batches == 500
    assert spool.counters.commits < 50   # deletes included; far fewer than one per batch


def expected_drops(policy: SpoolPolicy, n: int, size: int, max_bytes: int) -> tuple[int, int]:
    """The pure core's verdict on n equal batches put one at a time: (dropped, kept)."""
    budget = layout(max_bytes).data_budget
    stored: list[StoredRow] = []
    dropped = 0
    for i in range(n):
        d = admit([NewBatch(row_cost(size), 10)], sum(r.cost for r in stored), budget, policy,
                  list(stored))
        dropped += d.dropped_batches
        gone = {r.id for r in d.evict}
        stored = [r for r in stored if r.id not in gone]
        if d.accepted[0]:
            stored.append(StoredRow(i, row_cost(size), 10))
    return dropped, len(stored)


@pytest.mark.parametrize("policy", [SpoolPolicy.DROP_OLDEST, SpoolPolicy.REJECT_NEW])
def test_the_cap_drops_exactly_what_the_policy_says_and_remembers_it(
        tmp_path: Path, policy: SpoolPolicy) -> None:
    path = tmp_path / "spool.db"
    cfg = SpoolConfig(max_bytes=256 * 1024, policy=policy, group_commit_ms=0)
    n, size = 1000, 300
    want_dropped, want_kept = expected_drops(policy, n, size, cfg.max_bytes)
    assert 0 < want_dropped < n

    async def main() -> tuple[list[bool], dict[str, object], list[int]]:
        spool = await Spool.open(path, cfg)
        stored = await fill(spool, n, size=size)
        stats = spool.stats_dict()
        await spool.close()
        again = await Spool.open(path, cfg)      # the counters are in the file
        seqs = await drain(again)
        assert again.stats_dict()["dropped_batches"] == want_dropped
        await again.close()
        return stored, stats, seqs

    stored, stats, seqs = run(main())
    print(f"{policy.value}: {n} batches of {size} bytes into {cfg.max_bytes}: "
          f"dropped {stats['dropped_batches']}, disk {stats['disk_bytes']} bytes")
    assert stats["dropped_batches"] == want_dropped
    assert stats["dropped_readings"] == 10 * want_dropped
    assert len(seqs) == want_kept
    if policy is SpoolPolicy.DROP_OLDEST:
        assert all(stored) and seqs == list(range(n - want_kept, n))   # the newest are kept
    else:
        assert stored.count(False) == want_dropped and seqs == list(range(want_kept))
    assert int(stats["disk_bytes"]) <= cfg.max_bytes
    assert stats["full_events"] == 0   # the policy acted before SQLite's page limit did


def test_the_batch_in_flight_is_not_evicted(tmp_path: Path) -> None:
    cfg = SpoolConfig(max_bytes=256 * 1024, group_commit_ms=0)

    async def main() -> list[int]:
        spool = await Spool.open(tmp_path / "spool.db", cfg)
        await fill(spool, 5, size=1000)
        item = await spool.take()
        assert item is not None and item.seq == 0
        await fill(spool, 400, start=5, size=1000)   # far past the cap while 0 is in flight
        await spool.ack(item)
        seqs = await drain(spool)
        await spool.close()
        return seqs

    seqs = run(main())
    assert seqs == list(range(405 - len(seqs), 405)) and len(seqs) < 300   # the newest, in order


def test_live_first_publishes_new_batches_before_the_backlog(tmp_path: Path) -> None:
    cfg = SpoolConfig(live_first=True, group_commit_ms=0)

    async def main() -> list[tuple[int, bool]]:
        spool = await Spool.open(tmp_path / "spool.db", cfg)
        await fill(spool, 300)                    # stored while offline: the backlog
        spool.mark_backlog()                      # a connection starts
        out: list[tuple[int, bool]] = []
        for _ in range(3):
            item = await spool.take()
            assert item is not None
            out.append((item.seq, item.backlog))
            await spool.ack(item)
        await fill(spool, 2, start=1000)          # live data arrives mid-replay
        while (item := await spool.take()) is not None:
            out.append((item.seq, item.backlog))
            await spool.ack(item)
        await spool.close()
        return out

    out = run(main())
    assert out[:5] == [(0, True), (1, True), (2, True), (1000, False), (1001, False)]
    assert [s for s, _ in out[5:]] == list(range(3, 300))
    assert all(backlog for _, backlog in out[5:])


def test_release_after_a_reconnect_sends_it_again_first(tmp_path: Path) -> None:
    async def main() -> list[int]:
        spool = await Spool.open(tmp_path / "spool.db", SpoolConfig(live_first=True))
        await fill(spool, 4)
        spool.mark_backlog()
        await fill(spool, 2, start=10)
        item = await spool.take()
        assert item is not None and item.seq == 10
        spool.release(item)                       # the connection died before the PUBACK
        spool.mark_backlog()                      # the next connection
        seqs = await drain(spool)
        await spool.close()
        return seqs

    assert run(main()) == [0, 1, 2, 3, 10, 11]


def _corrupt_middle(path: Path, rng: random.Random) -> int:
    """Overwrite one page in the middle of the file with random bytes; its page number."""
    size = path.stat().st_size
    pages = size // 4096
    page = pages // 2
    with path.open("r+b") as fh:
        fh.seek(page * 4096)
        fh.write(rng.randbytes(4096))
    return page


def test_a_corrupt_spool_is_moved_aside_salvaged_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    rng = random.Random(SEED)
    sent = {s: payload(s, 500) for s in range(400)}

    async def write() -> None:
        spool = await Spool.open(path, SpoolConfig())
        for s, p in sent.items():
            await spool.put(p, epoch=9, seq=s, readings=10)
        await spool.close()

    run(write())
    page = _corrupt_middle(path, rng)
    damaged = path.read_bytes()
    assert check_file(path) is not None

    async def reopen() -> tuple[list[tuple[int, bytes]], dict[str, object]]:
        spool = await Spool.open(path, SpoolConfig())
        stats = spool.stats_dict()
        got = []
        while (item := await spool.take()) is not None:
            got.append((item.seq, item.payload))
            await spool.ack(item)
        await spool.close()
        return got, stats

    got, stats = run(reopen())
    event = stats["integrity_event"]
    assert isinstance(event, dict)
    print(f"corrupted page {page}: salvaged {len(got)} of {len(sent)}; {event['problem'][:80]}")
    assert 0 < len(got) < len(sent)
    assert all(sent[s] == p for s, p in got)                 # nothing damaged slipped through
    assert [s for s, _ in got] == sorted(s for s, _ in got)  # still oldest first
    assert stats["integrity_events"] == 1 and stats["salvaged_batches"] == len(got)
    kept = Path(str(event["quarantined"])) / "spool.db"
    assert kept.read_bytes() == damaged                      # the evidence is untouched
    assert check_file(path) is None


def test_a_file_that_is_not_a_database_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not SQLite" * 1000)

    async def main() -> dict[str, object]:
        spool = await Spool.open(path, SpoolConfig())
        assert await spool.put(b"x", seq=0)
        stats = spool.stats_dict()
        await spool.close()
        return stats

    stats = run(main())
    assert stats["integrity_events"] == 1 and stats["salvaged_batches"] == 0
    assert "not a database" in str(stats["integrity_event"])
    assert check_file(path) is None


def test_an_unwritable_state_directory_is_a_clear_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(SpoolError, match="cannot be created"):
        run(Spool.open(blocker / "state" / "spool.db", SpoolConfig()))


def test_the_agent_appends_each_batch_to_the_store_it_shares_with_the_uplink(
        tmp_path: Path) -> None:
    from edge_agent.config.loader import load_config
    from edge_agent.protocol.readings import Reading
    from edge_agent.runtime.agent import Agent, open_store
    from edge_agent.runtime.store import MemoryStore
    from tests.support.sitekit import write_site

    devices = [("m", "lan", 1, "energy_meter")]
    cfg = load_config(write_site(tmp_path, devices))

    async def main(blocked: bool) -> tuple[int, int, dict[str, Any], list[int]]:
        store = await open_store(cfg)
        assert isinstance(store, MemoryStore) is blocked and store.durable is not blocked
        agent = Agent(cfg, store)
        assert agent.uplink.store is store
        for ts in (1000, 2000):   # what the bus scheduler hands over, then a batch window
            agent.schedulers["lan"].sink([Reading("m", "energy_wh", ts, ts)])
            await agent.flush()
        health = agent.health()
        docs = {k: health[k] for k in ("spool", "uplink")}
        pending, built = store.pending, agent.batches_built
        seqs = []
        while (item := await store.take()) is not None:
            seqs.append(item.seq)
            await store.ack(item)
        await store.close()
        return pending, built, docs, seqs

    pending, built, health, seqs = run(main(blocked=False))
    assert (pending, built, seqs) == (2, 2, [0, 1])
    assert health["spool"]["stored_batches"] == 2 and health["uplink"]["dropped_batches"] == 0
    assert health["uplink"]["pending"] == 2
    (tmp_path / "state").rename(tmp_path / "state-was")   # a file where the directory should be
    (tmp_path / "state").write_text("not a directory")
    pending, built, health, seqs = run(main(blocked=True))
    assert (pending, built, seqs) == (2, 2, [0, 1])
    spool = health["spool"]
    assert spool["memory_only"] is True and "cannot be created" in str(spool["error"])


@pytest.mark.parametrize("sync", [SpoolSync.FULL, SpoolSync.NORMAL])
def test_synchronous_setting_is_applied(tmp_path: Path, sync: SpoolSync) -> None:
    async def main() -> None:
        spool = await Spool.open(tmp_path / "spool.db", SpoolConfig(synchronous=sync))
        await spool.put(b"x")
        await spool.close()

    run(main())
    conn = sqlite3.connect(tmp_path / "spool.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """An 8 MiB tmpfs: a disk that really fills up (needs root; skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("policy", [SpoolPolicy.DROP_OLDEST, SpoolPolicy.REJECT_NEW])
def test_a_full_disk_applies_the_policy_and_keeps_going(tiny_disk: Path,
                                                        policy: SpoolPolicy) -> None:
    # the cap is far above what the disk holds: SQLite itself hits ENOSPC
    cfg = SpoolConfig(max_bytes=64 * 1024 * 1024, policy=policy, group_commit_ms=0)
    path = tiny_disk / "spool.db"
    n = 1500   # 6 MB of batches: more than the disk holds beside the reserve

    async def main() -> tuple[list[bool], dict[str, object], list[int]]:
        spool = await Spool.open(path, cfg)
        stored = await fill(spool, n, size=4000)
        stats = spool.stats_dict()
        seqs = await drain(spool)
        await spool.close()
        return stored, stats, seqs

    _stored, stats, seqs = run(main())
    print(f"{policy.value} on an 8 MiB disk: full events {stats['full_events']}, dropped "
          f"{stats['dropped_batches']}, kept {len(seqs)}")
    assert int(stats["full_events"]) >= 1
    assert stats["errors"] == 0
    assert len(seqs) + int(stats["dropped_batches"]) == n
    assert seqs == sorted(seqs)
    if policy is SpoolPolicy.DROP_OLDEST:
        assert seqs[-1] == n - 1        # the newest batch was kept
    else:
        assert seqs == list(range(len(seqs)))   # the oldest were kept
    assert check_file(path) is None


def test_spool_table_in_the_site_config(tmp_path: Path) -> None:
    from edge_agent.config.loader import load_config
    from edge_agent.protocol.errors import ConfigError
    from tests.support.sitekit import write_site

    devices = [("m", "lan", 1, "energy_meter")]
    site = write_site(tmp_path, devices, extra=(
        '[spool]\nmax_bytes = 1048576\npolicy = "reject-new"\nsynchronous = "NORMAL"\n'
        "group_commit_ms = 0\nreplay_msgs_per_s = 5\nreplay_bytes_per_s = 0\n"
        "live_first = true\n"))
    cfg = load_config(site).spool
    assert cfg == SpoolConfig(1048576, SpoolPolicy.REJECT_NEW, SpoolSync.NORMAL, 0.0, 5.0, 0.0,
                              True)
    assert load_config(write_site(tmp_path, devices)).spool == SpoolConfig()
    bad = write_site(tmp_path, devices, extra=(
        '[spool]\nmax_bytes = 1000\npolicy = "drop-newest"\nreplay_msgs_per_s = -1\n'
        "speed = 3\n"))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = "\n".join(err.value.problems)
    assert "spool.max_bytes = 1000: expected an integer number of bytes >= 262144" in text
    assert "spool.policy = 'drop-newest': expected one of 'drop-oldest', 'reject-new'" in text
    assert "spool.replay_msgs_per_s = -1" in text
    assert "spool.speed: unknown key" in text


# --- file modes: the state dir 0700, the spool's files 0600, whatever the umask ------------

SPOOL_FILES = ("spool.db", "spool.db-wal", "spool.db-shm", "spool.db.reserve")


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_state_dir_is_created_0700_and_spool_files_0600_whatever_the_umask(
        tmp_path: Path, umask: int) -> None:
    state = tmp_path / "var" / "state"

    async def main() -> dict[str, int]:
        spool = await Spool.open(state / "spool.db", SpoolConfig(group_commit_ms=0))
        await fill(spool, 3)
        modes = {name: _mode(state / name) for name in SPOOL_FILES}  # all four exist while open
        await spool.close()
        return modes

    old = os.umask(umask)
    try:
        modes = run(main())
    finally:
        os.umask(old)
    assert _mode(state) == 0o700
    assert modes == dict.fromkeys(SPOOL_FILES, 0o600)


def test_an_open_state_dir_and_open_spool_files_are_narrowed_with_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    run(_open_close(state / "spool.db"))
    state.chmod(0o755)
    for name in ("spool.db", "spool.db.reserve"):
        (state / name).chmod(0o644)
    with caplog.at_level("WARNING", logger="edge_agent.runtime.spool_db"):
        run(_open_close(state / "spool.db"))
    assert _mode(state) == 0o700
    assert _mode(state / "spool.db") == 0o600 and _mode(state / "spool.db.reserve") == 0o600
    assert any(f"state directory {state} was mode 0755, open to other users: narrowed to 0700"
               in r.getMessage() for r in caplog.records), caplog.text


async def _open_close(path: Path) -> None:
    spool = await Spool.open(path, SpoolConfig())
    await spool.close()


def test_a_quarantined_spool_directory_is_0700(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"not a database at all" * 100)
    old = os.umask(0o022)
    try:
        run(_open_close(path))
    finally:
        os.umask(old)
    [qdir] = tmp_path.glob("spool-corrupt-*")
    assert _mode(qdir) == 0o700 and _mode(path) == 0o600
