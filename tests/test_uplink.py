"""The MQTT uplink against real private mosquitto brokers: state, will, order, outage, unix, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge_agent.codecs.batch import decode_batch
from edge_agent.protocol import topics
from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import parse_broker_url
from edge_agent.protocol.clock import FakeClock, SystemClock
from edge_agent.protocol.errors import ConfigError, UplinkError
from edge_agent.runtime.store import MemoryStore, StoredBatch
from edge_agent.runtime.uplink import Uplink
from tests.support.brokers import Mosquitto
from tests.support.v1batch import encode_batch_v1

SEED = 1128
print(f"test_uplink seed {SEED}")

pytestmark = pytest.mark.timeout(120)
GUARD_S = 60  # a hung test fails after this instead of hanging; no assertion is about time
WAIT_S = 30


def run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine on a fresh loop (pytest-asyncio is not a dependency)."""
    async def guarded() -> Any:
        async with asyncio.timeout(GUARD_S):
            return await coro
    return asyncio.run(guarded())


def batch(gateway: str, seq: int) -> bytes:
    """A small real data batch whose seq identifies it."""
    from edge_agent.protocol.readings import Reading
    return encode_batch_v1(gateway, 42, seq, [Reading("m1", "v", 1000 + seq, float(seq))])


class Collector:
    """A test subscriber that keeps every message it gets, and reconnects if the broker goes."""

    def __init__(self, url: str, topic_filter: str, *, client_id: str | None = None,
                 persistent: bool = False, **tls: Any) -> None:
        self.cfg = parse_broker_url(url, **tls)
        self.filter = topic_filter
        self.client_id = client_id
        self.persistent = persistent
        self.messages: list[aiomqtt.Message] = []
        self.changed = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await self.subscribed.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        from edge_agent.protocol.broker import client_options
        opts = client_options(self.cfg)
        opts["protocol"] = aiomqtt.ProtocolVersion.V311
        while True:
            try:
                async with aiomqtt.Client(**opts, identifier=self.client_id,
                                          clean_session=not self.persistent) as client:
                    await client.subscribe(self.filter, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
                        self.changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def wait_for(self, predicate: Callable[[list[aiomqtt.Message]], bool]) -> None:
        """Wait until the messages satisfy ``predicate``; fail saying what did arrive."""
        try:
            async with asyncio.timeout(WAIT_S):
                while not predicate(self.messages):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.filter}: condition not met; got {len(self.messages)} "
                                 f"messages, data seqs {self.seqs()}") from None

    def docs(self, suffix: str) -> list[dict[str, Any]]:
        """JSON documents received on topics ending in ``suffix``."""
        return [json.loads(bytes(m.payload)) for m in self.messages
                if m.topic.value.endswith(suffix)]

    def seqs(self) -> list[int]:
        """Sequence numbers of the data batches received, in arrival order."""
        return [decode_batch(bytes(m.payload)).seq for m in self.messages
                if m.topic.value.endswith("/data")]


class GatedClock(FakeClock):
    """A FakeClock that records every sleep and, after ``limit`` of them, blocks until cancelled."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.sleeps: list[float] = []
        self.limit = limit
        self.reached = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        """Record, advance, and block forever once the limit is reached."""
        self.sleeps.append(seconds)
        await super().sleep(seconds)
        if len(self.sleeps) >= self.limit:
            self.reached.set()
            await asyncio.Event().wait()


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait for it to finish."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------------- pure parts

def test_backoff_doubles_to_the_cap_with_full_jitter() -> None:
    b = Backoff(0.5, 30.0, random.Random(SEED))
    ceilings, delays = [], []
    for _ in range(12):
        ceilings.append(b.ceiling())
        delays.append(b.next_delay())
    assert ceilings == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not fixed steps
    b.reset()
    assert b.ceiling() == 0.5


def test_memory_store_drops_oldest_waiting_never_the_one_in_flight() -> None:
    async def main() -> None:
        store = MemoryStore(3)
        assert store.readiness.empty.is_set() and not store.readiness.waiting.is_set()
        for p in (b"a", b"b", b"c"):
            assert await store.put(p)
        assert store.dropped_in_memory == 0 and store.readiness.waiting.is_set()
        a = await store.take()
        assert a is not None and a.payload == b"a" and store.in_flight
        assert await store.put(b"d")     # full: drops b, not a (in flight); d is kept
        assert store.dropped_in_memory == 1
        store.release(a)                 # a not acknowledged: stays first
        again = await store.take()
        assert again == a
        await store.ack(a)
        c = await store.take()
        assert c is not None and c.payload == b"c"
        await store.ack(c)
        d = await store.take()
        assert d is not None and d.payload == b"d"
        assert await store.put(b"e") and store.pending == 2 and store.dropped_in_memory == 1
        with pytest.raises(RuntimeError, match="not in flight"):
            await store.ack(StoredBatch(99, 0, 0, 0, b"x"))
        await store.ack(d)
        e = await store.take()
        assert e is not None
        await store.ack(e)
        assert store.readiness.empty.is_set()
        assert await store.take() is None and not store.readiness.waiting.is_set()
        assert store.stats_dict() == {"error": None, "memory_only": True}

    run(main())


def test_parse_broker_url() -> None:
    assert parse_broker_url("mqtt://h").port == 1883
    assert parse_broker_url("mqtts://h:9").port == 9
    with pytest.raises(ConfigError, match="credentials do not go in the URL"):
        parse_broker_url("mqtts://u:p@h:9")
    unix = parse_broker_url("unix:///run/m.sock")
    assert (unix.scheme, unix.host) == ("unix", "/run/m.sock")
    with pytest.raises(Exception, match="scheme 'http'"):
        parse_broker_url("http://h")


# ---------------------------------------------------------------------- backoff, FakeClock

def test_backoff_schedule_when_the_broker_is_down(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens: every connect fails at once, and run() sleeps the backoff schedule."""
    down = Mosquitto()  # only for its free port; never started
    clock = GatedClock(limit=10)
    uplink = Uplink(parse_broker_url(down.url), "gwdown", 1, "t", clock, store=MemoryStore(),
                    backoff=Backoff(0.5, 30.0, random.Random(SEED)))

    async def main() -> None:
        task = asyncio.create_task(uplink.run())
        await clock.reached.wait()
        await stop(task)

    with caplog.at_level(logging.DEBUG, logger="edge_agent.runtime.uplink"):
        run(main())
    down.close()
    expected = Backoff(0.5, 30.0, random.Random(SEED))
    assert clock.sleeps == [expected.next_delay() for _ in range(10)]
    assert uplink.counters.connects == 0
    assert uplink.counters.last_error and "refused" in uplink.counters.last_error.lower()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # logged once, not per retry
    assert not uplink.connected.is_set()


# ---------------------------------------------------------------------- real broker

def test_online_state_then_batches_in_order_then_offline_on_cancel(broker: Mosquitto) -> None:
    gw = "gworder"
    n = 200

    async def main() -> Uplink:
        store = MemoryStore()
        uplink = Uplink(parse_broker_url(broker.url), gw, 42, "1.2.3", SystemClock(), store=store)
        async with Collector(broker.url, f"edge/{gw}/#") as sub:
            for i in range(n // 2):          # some queued before the connection exists
                await store.put(batch(gw, i))
            task = asyncio.create_task(uplink.run())
            await uplink.connected.wait()
            for i in range(n // 2, n):
                await store.put(batch(gw, i))
            assert await uplink.drain(timeout_s=GUARD_S)
            assert uplink.pending == 0 and uplink.stats_dict()["connected"] is True
            await sub.wait_for(lambda _: len(sub.seqs()) >= n)
            assert sub.seqs() == list(range(n))
            await stop(task)
            await sub.wait_for(lambda _: len(sub.docs("/state")) >= 2)
            online, offline = sub.docs("/state")
            assert online["status"] == "online" and offline["status"] == "offline"
            assert (online["version"], online["epoch"]) == ("1.2.3", 42)
            assert offline["reason"] == "shutdown"
        # a newcomer gets the retained offline state
        async with Collector(broker.url, f"edge/{gw}/state") as late:
            await late.wait_for(lambda m: len(m) >= 1)
            assert late.messages[0].retain and late.docs("/state")[0]["status"] == "offline"
        return uplink

    uplink = run(main())
    c = uplink.counters
    assert (c.connects, c.disconnects, c.published_batches) == (1, 1, n)
    assert uplink.stats_dict()["dropped_batches"] == 0
    assert c.published_bytes == sum(len(batch(gw, i)) for i in range(n))
    assert uplink.pending == 0


UPLINK_SCRIPT = """
import asyncio, sys
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.broker import parse_broker_url
from edge_agent.runtime.store import MemoryStore
from edge_agent.runtime.uplink import Uplink
asyncio.run(Uplink(parse_broker_url(sys.argv[1]), sys.argv[2], 7, "9.9", SystemClock(),
                   store=MemoryStore()).run())
"""


def test_will_says_offline_when_the_process_is_killed(broker: Mosquitto) -> None:
    gw = "gwkill"

    async def main() -> None:
        async with Collector(broker.url, f"edge/{gw}/state") as sub:
            proc = subprocess.Popen([sys.executable, "-c", UPLINK_SCRIPT, broker.url, gw])
            try:
                await sub.wait_for(lambda _: any(d["status"] == "online"
                                                 for d in sub.docs("/state")))
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            await sub.wait_for(lambda _: sub.docs("/state")[-1]["status"] == "offline")
            assert sub.docs("/state")[-1] == {"status": "offline", "version": "9.9", "epoch": 7,
                                              "reason": "connection lost",
                                              "ts": sub.docs("/state")[-1]["ts"]}
        async with Collector(broker.url, f"edge/{gw}/state") as late:
            await late.wait_for(lambda m: len(m) >= 1)
            assert late.messages[0].retain and late.docs("/state")[0]["status"] == "offline"

    run(main())


def test_broker_restart_loses_and_reorders_nothing() -> None:
    """Batches keep coming while the broker is down for 2 s; all arrive, in order, after it."""
    b = Mosquitto()
    # persistence lets the test's own subscriber keep its QoS 1 queue across the restart
    b.extra_conf = f"persistence true\npersistence_location {b.dir}/\n"
    b.start()
    gw = "gwrestart"
    n = 150

    async def main() -> Uplink:
        store = MemoryStore()
        uplink = Uplink(parse_broker_url(b.url), gw, 42, "t", SystemClock(), store=store,
                        backoff=Backoff(0.2, 1.0, random.Random(SEED)))
        async with Collector(b.url, f"edge/{gw}/data", client_id="restart-sub",
                             persistent=True) as sub:
            task = asyncio.create_task(uplink.run())
            seq = 0

            async def submit(count: int, pause_s: float) -> None:
                nonlocal seq
                for _ in range(count):
                    await store.put(batch(gw, seq))
                    seq += 1
                    await asyncio.sleep(pause_s)

            await submit(50, 0.005)
            await asyncio.to_thread(b.stop)
            await submit(40, 0.05)          # submitted while the broker is down
            await asyncio.to_thread(b.start)
            await submit(n - 90, 0.005)
            await sub.wait_for(lambda _: set(sub.seqs()) >= set(range(n)))
            await stop(task)
        seqs = sub.seqs()
        print(f"received {len(seqs)} batches for {n} submitted "
              f"({len(seqs) - len(set(seqs))} duplicates), connects {uplink.counters.connects}")
        # at least once: duplicates may come (from the uplink, or the broker redelivering to a
        # resumed subscriber session), but every batch arrives and first arrivals are in order
        assert list(dict.fromkeys(seqs)) == list(range(n))
        return uplink

    try:
        uplink = run(main())
    finally:
        b.close()
    assert uplink.counters.connects >= 2
    assert uplink.stats_dict()["dropped_batches"] == 0
    assert uplink.counters.last_error is not None


def test_batch_in_flight_when_the_connection_dies_is_sent_again() -> None:
    """The broker freezes with a batch unacknowledged, then dies (kill -9): the batch is resent."""
    b = Mosquitto()
    # the subscriber's session is saved at every change, so it survives the kill -9
    b.extra_conf = (f"persistence true\npersistence_location {b.dir}/\n"
                    "autosave_on_changes true\nautosave_interval 1\n")
    b.start()
    gw = "gwinflight"

    async def main() -> tuple[Uplink, list[int]]:
        store = MemoryStore()
        uplink = Uplink(parse_broker_url(b.url), gw, 42, "t", SystemClock(), store=store,
                        backoff=Backoff(0.2, 1.0, random.Random(SEED)))
        async with Collector(b.url, f"edge/{gw}/data", client_id="inflight-sub",
                             persistent=True) as sub:
            task = asyncio.create_task(uplink.run())
            for i in range(3):
                await store.put(batch(gw, i))
            await sub.wait_for(lambda _: len(sub.seqs()) >= 3)
            while not (b.dir / "mosquitto.db").exists():
                await asyncio.sleep(0.05)
            assert b.proc is not None
            b.proc.send_signal(signal.SIGSTOP)
            await store.put(batch(gw, 3))
            while not store.in_flight:                # written, never acknowledged
                await asyncio.sleep(0.01)
            b.proc.kill()
            await asyncio.to_thread(b.proc.wait)
            b.proc = None
            await store.put(batch(gw, 4))
            await asyncio.to_thread(b.start)
            # distinct seqs: the resumed session may get 1 and 2 again before 3 and 4
            await sub.wait_for(lambda _: len(set(sub.seqs())) >= 5)
            await stop(task)
            return uplink, sub.seqs()

    try:
        uplink, seqs = run(main())
    finally:
        b.close()
    # the broker may redeliver 1, 2 to the resumed subscriber session: check first arrivals
    assert list(dict.fromkeys(seqs)) == [0, 1, 2, 3, 4], seqs
    # 3 was unacknowledged when the broker died: it counts once, after the resend
    assert uplink.counters.connects == 2 and uplink.counters.published_batches == 5


def test_unix_socket_broker() -> None:
    b = Mosquitto()
    sock = b.dir / "mqtt.sock"
    b.extra_conf = f"listener 0 {sock}\n"
    b.start()
    gw = "gwunix"

    async def main() -> None:
        store = MemoryStore()
        uplink = Uplink(parse_broker_url(f"unix://{sock}"), gw, 1, "t", SystemClock(), store=store)
        async with Collector(f"unix://{sock}", f"edge/{gw}/#") as sub:
            task = asyncio.create_task(uplink.run())
            for i in range(5):
                await store.put(batch(gw, i))
            await sub.wait_for(lambda _: len(sub.seqs()) >= 5)
            await stop(task)
        assert sub.seqs() == [0, 1, 2, 3, 4]
        assert sub.docs("/state")[0]["status"] == "online"

    try:
        run(main())
    finally:
        b.close()


def _tls_files(d: Path) -> dict[str, Path]:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert for the gateway."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (d / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (d / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("edge test CA")).issuer_name(
        name("edge test CA")).public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .sign(ca_key, hashes.SHA256()))
    write("ca", ca_key, ca)
    for stem, cn, san in (("server", "127.0.0.1", True), ("client", "gwtls", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        write(stem, key, builder.sign(ca_key, hashes.SHA256()))
    return {k: d / f"{k}.crt" for k in ("ca", "server", "client")} | {
        "server_key": d / "server.key", "client_key": d / "client.key"}


def test_tls_with_client_certificate() -> None:
    b = Mosquitto()
    f = _tls_files(b.dir)
    # these lines follow the fixture's 'listener' line, so they make that listener TLS-only
    b.extra_conf = (f"cafile {f['ca']}\ncertfile {f['server']}\nkeyfile {f['server_key']}\n"
                    "require_certificate true\nuse_identity_as_username true\n")
    b.start()
    url = f"mqtts://127.0.0.1:{b.port}"
    tls: dict[str, Any] = {"ca_file": f["ca"], "cert_file": f["client"],
                           "key_file": f["client_key"]}
    gw = "gwtls"

    async def main() -> None:
        store = MemoryStore()
        uplink = Uplink(parse_broker_url(url, **tls), gw, 1, "t", SystemClock(), store=store)
        async with Collector(url, f"edge/{gw}/#", **tls) as sub:
            task = asyncio.create_task(uplink.run())
            await store.put(batch(gw, 0))
            await sub.wait_for(lambda _: len(sub.seqs()) >= 1)
            await stop(task)
        assert sub.docs("/state")[0]["status"] == "online"

        # without a client certificate the broker refuses the handshake
        clock = GatedClock(limit=2)
        refused = Uplink(parse_broker_url(url, ca_file=f["ca"]), "gwnocert", 1, "t", clock,
                         store=MemoryStore())
        task = asyncio.create_task(refused.run())
        await clock.reached.wait()
        await stop(task)
        assert refused.counters.connects == 0 and refused.counters.last_error

    try:
        run(main())
    finally:
        b.close()


def test_refused_puback_keeps_the_batch(tmp_path: Path) -> None:
    """An ACL denies data: MQTT 5 PUBACK 0x87 is an error and the batch stays in the store."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edge/+/state\ntopic read edge/+/data\n")
    b = Mosquitto(extra_conf=f"acl_file {acl}\n")
    b.start()
    gw = "gwacl"

    async def main() -> Uplink:
        clock = GatedClock(limit=2)
        store = MemoryStore()
        uplink = Uplink(parse_broker_url(b.url), gw, 1, "t", clock, store=store)
        await store.put(batch(gw, 0))
        task = asyncio.create_task(uplink.run())
        await clock.reached.wait()
        await stop(task)
        return uplink

    try:
        uplink = run(main())
    finally:
        b.close()
    c = uplink.counters
    assert c.connects == 2 and c.rejected_publishes == 2 and c.published_batches == 0
    assert c.last_error and "0x87" in c.last_error
    assert uplink.pending == 1


def test_health_json_and_subscriptions(broker: Mosquitto) -> None:
    gw = "gwhealth"

    async def main() -> None:
        store = MemoryStore()
        uplink = Uplink(parse_broker_url(broker.url), gw, 1, "t", SystemClock(), store=store)
        await uplink.publish_health({"ok": True})             # offline: skipped, counted
        assert await uplink.drain(timeout_s=0.1)              # nothing stored: drained
        await store.put(batch(gw, 0))
        assert not await uplink.drain(timeout_s=0.1)          # offline: cannot drain
        assert uplink.stats_dict()["pending"] == 1
        assert uplink.counters.health_skipped == 1
        with pytest.raises(UplinkError, match="not connected"):
            await uplink.publish_json("reported", {"x": 1})
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_desired(message: aiomqtt.Message) -> None:
            await got.put(bytes(message.payload))

        uplink.subscribe(topics.subscription("edge", topics.DESIRED, gw), on_desired)
        async with aiomqtt.Client("127.0.0.1", broker.port) as fleet:
            await fleet.publish(topics.desired_topic("edge", gw, "config"), b"bundle",
                                qos=1, retain=True)
        async with Collector(broker.url, f"edge/{gw}/#") as sub:
            task = asyncio.create_task(uplink.run())
            assert await got.get() == b"bundle"
            await uplink.publish_health({"uptime_s": 5, "spool": {"pending": 0}})
            await uplink.publish_json("cmd-result/7", {"ok": True})
            await sub.wait_for(lambda _: len(sub.docs("/cmd-result/7")) == 1)
            await stop(task)
            await sub.wait_for(lambda _: len(sub.docs("/state")) >= 2)
        assert sub.docs("/health") == [{"uptime_s": 5, "spool": {"pending": 0}}]
        async with aiomqtt.Client("127.0.0.1", broker.port) as fleet:  # clear the retained one
            await fleet.publish(topics.desired_topic("edge", gw, "config"), b"", retain=True)

    run(main())


# ---------------------------------------------------------------------- topic scheme

def test_topic_builders_and_parser_agree() -> None:
    built = {
        topics.state_topic("city/edge", "gw1"): ("state", ""),
        topics.data_topic("city/edge", "gw1"): ("data", ""),
        topics.health_topic("city/edge", "gw1"): ("health", ""),
        topics.reported_topic("city/edge", "gw1"): ("reported", ""),
        topics.desired_topic("city/edge", "gw1", "config"): ("desired", "config"),
        "city/edge/gw1/cmd/42": ("cmd", "42"),
        "city/edge/gw1/cmd-result/42": ("cmd-result", "42"),
    }
    for topic, (kind, arg) in built.items():
        assert topics.parse_topic(topic, "city/edge") == ("gw1", kind, arg)
    assert topics.subscription("edge", topics.DESIRED) == "edge/+/desired/+"
    assert topics.subscription("edge", topics.DATA, "gw1") == "edge/gw1/data"


@pytest.mark.parametrize("topic", ["edge/gw1", "edge/gw1/data/x", "other/gw1/data",
                                   "edge//data", "edge/gw1/cmd", "edge/gw1/bogus", "edge/+/data"])
def test_parse_topic_rejects_what_is_not_in_the_scheme(topic: str) -> None:
    assert topics.parse_topic(topic, "edge") is None


def test_topic_levels_must_not_hold_separators_or_wildcards() -> None:
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(ValueError, match="gateway id"):
            topics.data_topic("edge", bad)
    with pytest.raises(ValueError, match="prefix"):
        topics.data_topic("edge/", "gw1")
    with pytest.raises(ValueError, match="unknown topic kind"):
        topics.subscription("edge", "nope")
