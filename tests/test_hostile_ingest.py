"""Hostile input against the real ingest (issue "nothing stops silently", item 8).

``edge-fleet ingest`` (and its alias ``edge-agent ingest``) subscribes to every gateway's
``{prefix}/{gw}/data`` with a persistent session and acknowledges a message only once it is
committed. Hostile batches from gw-bad (random bytes, lying v2 headers, lone surrogates in the
header's extras, batches claiming or decoding to millions of readings, huge epochs and seqs)
are followed by a genuine batch from gw-good, which must be stored: a consumer that died or
stopped is seen at once. Every message must be accounted for in the database (stored,
duplicate or set aside in ``rejected``): nothing disappears silently. A restart, after a
crash or with hostile messages queued for its session, must not die on them either.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge_agent.codecs.batch_v2 import encode_batch_v2
from edge_agent.protocol.readings import Reading
from edge_agent.tools.devbroker import Mosquitto
from edge_agent.tools.procs import spawn_until_ready, stop_process
from tests.support import hostile as h
from tests.support.acked import AckedClient, log_tail
from tests.support.hostile import Hostile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
SEED = 7171
print(f"test_hostile_ingest: seed {SEED}")
BAD = "gw-bad"
GOOD = "gw-good"
EPOCH = 1000
STORE_TIMEOUT_S = 10.0
PY = sys.executable


def batch(gw: str, seq: int, *, epoch: int = EPOCH, n: int = 5) -> bytes:
    """A genuine v2 batch."""
    rs = [Reading("m1", "energy", 1_700_000_000_000 + seq * 10 + i, seq * 10 + i)
          for i in range(n)]
    return encode_batch_v2(gw, epoch, seq, rs)


def peak_rss_kib(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


@dataclass
class Db:
    """Read-only queries on the ingest's SQLite database."""

    path: Path

    def one(self, sql: str, params: tuple[object, ...] = ()) -> int:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute(sql, params).fetchone()
        finally:
            conn.close()
        return int(row[0] or 0) if row else 0

    def stored(self, gw: str, seq: int, epoch: int = EPOCH) -> bool:
        return self.one("SELECT count(*) FROM batches WHERE gateway = ? AND epoch = ? AND "
                        "seq = ?", (gw, epoch, seq)) == 1

    def rejected(self) -> int:
        return self.one("SELECT count(*) FROM rejected")

    def accounted(self) -> int:
        """Messages the database accounts for: stored, duplicate, set aside, or parked (a
        version 3 batch whose schema the ingest has not been sent: kept until it comes)."""
        return (self.one("SELECT count(*) FROM batches")
                + self.one("SELECT coalesce(sum(duplicates), 0) FROM streams")
                + self.rejected() + self.one("SELECT count(*) FROM parked"))


@dataclass
class Ingest:
    """A running ingest process and its database."""

    proc: subprocess.Popen[bytes]
    log: Path
    db: Db

    def alive(self, why: str) -> None:
        code = self.proc.poll()
        assert code is None, f"the ingest exited with status {code} {why}{log_tail(self.log)}"

    def fail(self, message: str) -> AssertionError:
        """Stop it (a consumer task that died shows its error only as the process ends) and
        an AssertionError with the end of its log."""
        stop_process(self.proc)
        return AssertionError(f"{message}{log_tail(self.log)}")

    def wait_stored(self, gw: str, seq: int, why: str, *, epoch: int = EPOCH,
                    timeout_s: float = STORE_TIMEOUT_S) -> float:
        """Seconds until batch (gw, epoch, seq) is in the database; fail if it is not."""
        start = time.monotonic()
        while not self.db.stored(gw, seq, epoch):
            self.alive(why)
            if time.monotonic() - start > timeout_s:
                raise self.fail(f"the ingest is running but stopped consuming: {gw} seq {seq} "
                                f"not stored within {timeout_s:g} s {why}")
            time.sleep(0.02)
        return time.monotonic() - start

    def wait_accounted(self, n: int, why: str, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (got := self.db.accounted()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        if got != n:
            raise self.fail(f"{n} messages sent, the database accounts for {got} {why}")


@contextmanager
def ingest(broker: Mosquitto, tmp: Path, *, client_id: str = "hostile-ingest",
           alias: bool = False, name: str = "ingest") -> Iterator[Ingest]:
    """Run ``edge-fleet ingest`` (``edge-agent ingest`` with ``alias``) until subscribed."""
    db = tmp / "ingest.db"
    head = [PY, "-m", "edge_agent", "ingest"] if alias else \
        [PY, "-m", "edge_agent.fleet.cli", "ingest"]
    log = tmp / f"{name}.log"
    proc = spawn_until_ready([*head, "--broker", broker.url, "--db", f"sqlite:///{db}",
                              "--client-id", client_id, "--gap-scan-s", "1"],
                             log, "ingest subscribed", timeout_s=30, what=name)
    try:
        yield Ingest(proc, log, Db(db))
    finally:
        stop_process(proc)


@pytest.fixture
def publisher(own_broker: Mosquitto) -> Iterator[AckedClient]:
    p = AckedClient(own_broker.port)
    yield p
    p.close()

# Checked as each example starts: hypothesis runs a failing example once more to report it,
# so a process killed by that example is found dead here (its log says what killed it).
ALREADY_DEAD = "before this example started (killed by it on its first run: hypothesis replays " \
               "a failing example; or by an earlier one)"


# ------------------------------------------------------------------ the property


def test_ingest_keeps_consuming_and_accounts_for_every_hostile_message(
        tmp_path: Path, own_broker: Mosquitto, publisher: AckedClient) -> None:
    with ingest(own_broker, tmp_path) as ing:
        state = {"sent": 0, "seq": 0}

        @settings(max_examples=40, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
        @given(msgs=st.lists(st.tuples(h.data_messages(BAD, batch(BAD, 0)), st.booleans()),
                             min_size=1, max_size=4))
        def hostile_then_genuine(msgs: list[tuple[Hostile, bool]]) -> None:
            ing.alive(ALREADY_DEAD)
            for msg, retain in msgs:
                publisher.publish(f"edge/{BAD}/data", msg.blob, retain=retain)
            state["seq"] += 1
            publisher.publish(f"edge/{GOOD}/data", batch(GOOD, state["seq"]))
            state["sent"] += len(msgs) + 1
            ing.wait_stored(GOOD, state["seq"], f"after {msgs}")
            ing.wait_accounted(state["sent"], f"after {msgs}")

        rejected_before = ing.db.rejected()
        hostile_then_genuine()
        publisher.publish(f"edge/{BAD}/data", b"", retain=True)  # clear a retained one
        assert ing.db.rejected() > rejected_before
        ing.alive("after the hostile messages")
        print(f"{state['sent']} messages, {ing.db.rejected()} rejected, all accounted for")


# ------------------------------------------------------------------ regressions, one each

CASES: dict[str, bytes] = {
    "random-bytes": random.Random(SEED).randbytes(200),
    "lone-surrogate-series-in-extras": h.v2_batch(h.surrogate_extras_header(BAD, EPOCH, 1),
                                                  h.empty_codec()),
    "lone-surrogate-value-in-extras": h.v2_batch(
        {"g": BAD, "e": EPOCH, "s": 1, "x": [["d/p", 1000, 0, None, f"v{h.LONE}"]]},
        h.empty_codec()),
    "lone-surrogate-gateway": h.v2_batch({"g": BAD + h.LONE, "e": EPOCH, "s": 1, "x": []},
                                         h.empty_codec()),
    "list-as-series-name": h.v2_batch({"g": BAD, "e": EPOCH, "s": 1,
                                       "x": [[["d/p"], 1000, 0, None, 1]]}, h.empty_codec()),
    "epoch-10-30": h.v2_batch({"g": BAD, "e": h.HUGE_INT, "s": 1, "x": []}, h.empty_codec()),
    "nested-100000-header": h.v2_batch(h.deep_brackets(), h.empty_codec()),
    "claims-10-million-points": h.v2_batch({"g": BAD, "e": EPOCH, "s": 1, "x": []},
                                           h.codec_claiming(10**7)),
    "claims-2-64-points": h.v2_batch({"g": BAD, "e": EPOCH, "s": 1, "x": []},
                                     h.codec_claiming(2**64 - 1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_hostile_batch_then_a_genuine_one(case: str, tmp_path: Path,
                                              own_broker: Mosquitto,
                                              publisher: AckedClient) -> None:
    with ingest(own_broker, tmp_path) as ing:
        publisher.publish(f"edge/{BAD}/data", CASES[case])
        publisher.publish(f"edge/{GOOD}/data", batch(GOOD, 1))
        ing.wait_stored(GOOD, 1, f"after {case}")
        ing.wait_accounted(2, f"after {case}")
        assert ing.db.rejected() == 1, f"{case} was not set aside as rejected"
        ing.alive(f"after {case}")


def test_a_small_batch_decoding_to_a_million_readings(tmp_path: Path, own_broker: Mosquitto,
                                                      publisher: AckedClient) -> None:
    """23 KB that decode to 1,000,000 readings: refused without the memory or the time."""
    blob = h.v2_batch({"g": BAD, "e": EPOCH, "s": 1, "x": []}, h.amplified_codec(1_000_000))
    assert len(blob) < 30_000
    with ingest(own_broker, tmp_path) as ing:
        publisher.publish(f"edge/{GOOD}/data", batch(GOOD, 0))
        ing.wait_stored(GOOD, 0, "before the amplified batch")
        rss = peak_rss_kib(ing.proc.pid)
        publisher.publish(f"edge/{BAD}/data", blob)
        publisher.publish(f"edge/{GOOD}/data", batch(GOOD, 1))
        took = ing.wait_stored(GOOD, 1, "after the amplified batch")
        ing.wait_accounted(3, "after the amplified batch")
        growth_mib = (peak_rss_kib(ing.proc.pid) - rss) / 1024
        readings = ing.db.one("SELECT count(*) FROM readings WHERE gateway = ?", (BAD,))
        print(f"amplified batch: {len(blob)} bytes; genuine stored {took:.2f} s later; peak RSS "
              f"+{growth_mib:.0f} MiB; {readings} of its readings stored; rejected "
              f"{ing.db.rejected()}")
        assert growth_mib < 100, f"the ingest's peak RSS grew {growth_mib:.0f} MiB"
        assert readings == 0 and ing.db.rejected() == 1, (readings, ing.db.rejected())
        assert took < 5, f"the genuine batch waited {took:.1f} s behind the amplified one"
        ing.alive("after the amplified batch")


def test_huge_epoch_and_seq_then_a_genuine_batch_and_the_report(
        tmp_path: Path, own_broker: Mosquitto, publisher: AckedClient) -> None:
    """Epoch and seq at 2**63-1 are in range: stored (or refused), never a dead consumer, and
    the gap scan and ``--report`` over them still work."""
    top = 2**63 - 1
    with ingest(own_broker, tmp_path) as ing:
        publisher.publish(f"edge/{BAD}/data", h.v2_batch({"g": BAD, "e": top, "s": top,
                                                          "x": []}, h.empty_codec()))
        publisher.publish(f"edge/{BAD}/data", batch(BAD, top, epoch=top))
        publisher.publish(f"edge/{GOOD}/data", batch(GOOD, 1))
        ing.wait_stored(GOOD, 1, "after epoch and seq 2**63-1")
        ing.wait_accounted(3, "after epoch and seq 2**63-1")
        time.sleep(1.5)  # one gap scan (every second) over the huge seq
        ing.alive("after a gap scan over seq 2**63-1")
        report = subprocess.run([PY, "-m", "edge_agent", "ingest", "--db",
                                 f"sqlite:///{ing.db.path}", "--report"],
                                capture_output=True, text=True, timeout=60)
        assert report.returncode == 0, report.stdout + report.stderr
        assert f"{GOOD} epoch {EPOCH}: 1 batches" in report.stdout, report.stdout
        # The stream's seq 0..2**63-2 counts as a gap; with one batch, nothing else is wrong.
        ing.alive("after --report")


# ------------------------------------------------------------------ restarts


POISON = CASES["lone-surrogate-series-in-extras"]


def test_a_restart_after_a_crash_does_not_die_on_the_redelivered_poison(
        tmp_path: Path, own_broker: Mosquitto, publisher: AckedClient) -> None:
    """kill -9 right after a poison message: whatever was not acknowledged comes again."""
    with ingest(own_broker, tmp_path, client_id="hostile-restart", name="first") as first:
        publisher.publish(f"edge/{BAD}/data", POISON)
        time.sleep(1.0)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    with ingest(own_broker, tmp_path, client_id="hostile-restart", alias=True,
                name="second") as second:
        publisher.publish(f"edge/{GOOD}/data", batch(GOOD, 1))
        second.wait_stored(GOOD, 1, "after a restart with the poison redelivered")
        assert second.db.rejected() >= 1, "the poison was neither rejected nor redelivered"
        time.sleep(0.5)
        second.alive("after the redelivered poison")


def test_a_restart_with_poison_queued_for_its_session(
        tmp_path: Path, own_broker: Mosquitto, publisher: AckedClient) -> None:
    """Hostile messages queued while it was down are the first it gets when it starts."""
    with ingest(own_broker, tmp_path, client_id="hostile-queued", name="first"):
        pass  # subscribe once: the persistent session now queues for it
    for case in ("lone-surrogate-series-in-extras", "lone-surrogate-value-in-extras",
                 "nested-100000-header", "random-bytes"):
        publisher.publish(f"edge/{BAD}/data", CASES[case])
    publisher.publish(f"edge/{GOOD}/data", batch(GOOD, 1))
    with ingest(own_broker, tmp_path, client_id="hostile-queued", name="second") as second:
        second.wait_stored(GOOD, 1, "after starting with poison queued")
        second.wait_accounted(5, "after starting with poison queued")
        assert second.db.rejected() == 4
        second.alive("after the queued poison")
