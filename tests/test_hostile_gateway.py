"""Hostile input against the real gateway (issue "nothing stops silently", item 8).

An enrolled gateway runs ``edge-agent run`` against a simulated meter and a private mosquitto.
Whatever arrives on ``{prefix}/{gw}/desired/config`` (retained or not), and on the other
topics of its subtree, it must answer by refusing it ("rejected", nothing committed) and go
on consuming: afterwards a genuine signed config is still applied and reported, and the
process is still running. Every hostile message on desired/config is expected to produce its
own "rejected" report, so a control plane that stopped consuming is seen at the next message
(not only at the end), and a crash is seen by the process's return code.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.fleet.registry import Registry
from edge_agent.protocol.bundle import make_bundle
from edge_agent.tools.devbroker import Mosquitto
from tests.support import hostile as h
from tests.support.acked import log_tail
from tests.support.fleetkit import Pki, enrol_direct
from tests.support.hostile import Hostile
from tests.support.sitekit import agent, simulator, write_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
SEED = 8081
print(f"test_hostile_gateway: key seed {SEED}")
GW = "gw-test"
OTHER = "gw-other"
DESIRED = f"edge/{GW}/desired/config"
# Topics of the gateway's subtree besides desired/config: it must not care about any of them.
# (Not reported or health: the watcher reads those.)
OTHER_TOPICS = [f"edge/{GW}/desired/software", f"edge/{GW}/cmd/1", f"edge/{GW}/desired/x",
                f"edge/{GW}/state", f"edge/{GW}/data"]
METER = ('[devices.meter]\nbus = "lan"\nunit_id = 1\nprofile = "energy_meter"\n'
         'poll_interval_s = 0.5\n')
REPORT_TIMEOUT_S = 15.0
APPLY_TIMEOUT_S = 60.0


# ------------------------------------------------------------------ harness


class Watcher:
    """An independent MQTT client: publishes to the gateway, reads its reports and health."""

    def __init__(self, port: int) -> None:
        self.reports: list[dict[str, Any]] = []
        self.health: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        done = threading.Event()
        self.c.on_subscribe = lambda *_a: done.set()
        self.c.subscribe([(f"edge/{GW}/reported", 1), (f"edge/{GW}/health", 0)])
        assert done.wait(10), "SUBACK"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            doc = {"unparsable": bytes(msg.payload[:200]).hex()}
        if not isinstance(doc, dict):
            doc = {"not an object": repr(doc)[:200]}
        with self._lock:
            (self.reports if msg.topic.endswith("/reported") else self.health).append(doc)

    def publish(self, topic: str, blob: bytes, *, retain: bool = False) -> None:
        info = self.c.publish(topic, blob, qos=1, retain=retain)
        info.wait_for_publish(30)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def latest_health(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.health[-1]) if self.health else {}

    def count(self) -> int:
        with self._lock:
            return len(self.reports)

    def since(self, n: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.reports[n:])

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@dataclass
class Gateway:
    """A running enrolled gateway and what a test needs to talk to it."""

    proc: subprocess.Popen[bytes]
    log: Path
    state: Path
    watcher: Watcher
    genuine: Callable[[int, str], bytes]     # (version, comment) -> signed bundle for GW
    payload: Callable[[str], bytes]          # comment -> the config that bundle carries
    other: bytes                             # a genuine bundle for another gateway

    def alive(self, why: str) -> None:
        """Fail with the log's end if the process has exited."""
        code = self.proc.poll()
        assert code is None, f"gateway exited with status {code} {why}{log_tail(self.log)}"

    def reports_after(self, n: int, count: int, why: str,
                      timeout_s: float = REPORT_TIMEOUT_S) -> list[dict[str, Any]]:
        """Wait for ``count`` reports after the first ``n``; fail fast if the process died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.watcher.since(n)
            if len(got) >= count:
                return got
            self.alive(why)
            time.sleep(0.02)
        self.alive(why)
        raise AssertionError(f"the gateway is running but stopped consuming: {count} reports "
                             f"expected {why}, got {self.watcher.since(n)}{log_tail(self.log)}")

    def apply_genuine(self, version: int, comment: str) -> dict[str, Any]:
        """Publish a genuine signed config retained; its 'applied' report (else fail)."""
        self.alive("before the genuine config")
        self.watcher.publish(DESIRED, self.genuine(version, comment), retain=True)
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while time.monotonic() < deadline:
            done = [r for r in self.watcher.since(0) if r.get("version") == version
                    and r.get("result") not in ("current", "rejected")]
            if done:
                report = done[0]
                assert report["result"] == "applied", f"{report}{log_tail(self.log)}"
                assert (self.state / "config.good").read_bytes() == self.payload(comment)
                self.alive("after the genuine config was applied")
                return report
            self.alive("while a genuine config was offered")
            time.sleep(0.05)
        raise AssertionError(f"genuine v{version} not applied within {APPLY_TIMEOUT_S:g} s; "
                             f"reports {self.watcher.since(0)[-5:]}{log_tail(self.log)}")



@pytest.fixture(scope="module")
def sim_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A simulated meter (Modbus TCP) for the module's gateways, which take turns on it (the
    lamp only gives the simulator the serial bus its harness waits for; configs omit it)."""
    tmp = tmp_path_factory.mktemp("hostile-sim")
    site = write_site(tmp, [("lamp", "rs485", 3, "streetlight"),
                            ("meter", "lan", 1, "energy_meter")], health_s=1.0)
    with simulator(site, tmp):
        yield site


def _config(site: Path, state: Path, comment: str) -> bytes:
    head = site.read_text().split("[devices.", 1)[0]
    head = "\n".join(f'state_dir = "{state}"' if line.startswith("state_dir") else line
                     for line in head.splitlines())
    return f"{head}\n# {comment}\n{METER}".encode()


@contextmanager
def running_gateway(tmp_path: Path, broker: Mosquitto, sim_site: Path,
                    before_start: Callable[[Watcher, Callable[[int, str], bytes], bytes],
                                           None] | None = None) -> Iterator[Gateway]:
    """Enrol a gateway, start ``edge-agent run`` on it and wait until it consumes offers.

    ``before_start(watcher, genuine, other)`` runs before the process starts (to leave a
    retained message for it to find at boot).
    """
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    enrol_direct(reg, tmp_path / "gw", [GW, OTHER], "test-site", broker.url)
    state = tmp_path / "gw" / GW
    local = tmp_path / "local.toml"
    local.write_bytes(_config(sim_site, state, "local"))
    now = int(time.time())
    roots = reg.roots()

    def payload(comment: str) -> bytes:
        return _config(sim_site, state, comment)

    def genuine(version: int, comment: str) -> bytes:
        return make_bundle("config", version, payload(comment), pki.release_keys,
                           issued=now - 60, expires=now + 3600, gateways=[GW], roots=roots)

    other = make_bundle("config", 1, b"# for another gateway\n", pki.release_keys,
                        issued=now - 60, expires=now + 3600, gateways=[OTHER], roots=roots)
    watcher = Watcher(broker.port)
    log = tmp_path / "agent.log"
    try:
        if before_start is not None:
            before_start(watcher, genuine, other)
        with agent(local, broker.url, tmp_path, "--health-gate-s", "0.5") as proc:
            gw = Gateway(proc, log, state, watcher, genuine, payload, other)
            _wait_consuming(gw)
            yield gw
    finally:
        # An empty retained message clears what a test left on the broker.
        watcher.publish(DESIRED, b"", retain=True)
        watcher.close()
        reg.close()


def _wait_consuming(gw: Gateway, timeout_s: float = 30.0) -> None:
    """Probe desired/config until the gateway answers (its subscription is up)."""
    deadline = time.monotonic() + timeout_s
    n = gw.watcher.count()
    while time.monotonic() < deadline:
        gw.alive("while starting")
        gw.watcher.publish(DESIRED, b"probe: are you subscribed?")
        step = time.monotonic() + 1.0
        while time.monotonic() < step:
            if gw.watcher.count() > n:
                time.sleep(0.3)  # let any further probe answers arrive before counting
                return
            time.sleep(0.05)
    raise AssertionError(f"the gateway never answered on {DESIRED}{log_tail(gw.log)}")


def _health_counts_every_report(gw: Gateway, timeout_s: float = 15.0
                                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The reports so far and the first health ``control`` section that counts exactly as
    many bundles offered (health lags reports by up to its interval; never fewer for long)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reports = gw.watcher.since(0)
        control = gw.watcher.latest_health().get("control")
        if isinstance(control, dict) and control.get("offered") == len(reports):
            return reports, control
        if time.monotonic() > deadline:
            raise AssertionError(f"health never counted the {len(reports)} bundles answered: "
                                 f"{control}{log_tail(gw.log)}")
        gw.alive("while waiting for health to count the bundles")
        time.sleep(0.1)


def _assert_rejected(reports: list[dict[str, Any]], sent: list[Hostile]) -> None:
    for report in reports:
        assert report.get("result") == "rejected", (sent, report)
        assert report.get("committed") == 0, (sent, report)

# Checked as each example starts: hypothesis runs a failing example once more to report it,
# so a process killed by that example is found dead here (its log says what killed it).
ALREADY_DEAD = "before this example started (killed by it on its first run: hypothesis replays " \
               "a failing example; or by an earlier one)"


# ------------------------------------------------------------------ the property


def test_gateway_keeps_consuming_through_hostile_messages(
        tmp_path: Path, own_broker: Mosquitto, sim_site: Path) -> None:
    with running_gateway(tmp_path, own_broker, sim_site) as gw:
        own = gw.genuine(1, "captured by the attacker")
        counters_before = h.rejection_counters(gw.watcher.latest_health())
        total = {"sent": 0}

        @settings(max_examples=40, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
        @given(msgs=st.lists(st.tuples(h.bundle_messages(own, gw.other), st.booleans(),
                                       st.sampled_from([DESIRED, DESIRED, *OTHER_TOPICS])),
                             min_size=1, max_size=3))
        def hostile_then_probe(msgs: list[tuple[Hostile, bool, str]]) -> None:
            gw.alive(ALREADY_DEAD)
            n = gw.watcher.count()
            expected = 0
            for msg, retain, topic in msgs:
                gw.watcher.publish(topic, msg.blob, retain=retain)
                expected += topic == DESIRED
                total["sent"] += 1
            # The probe: one more message that must be answered, after all of the above.
            gw.watcher.publish(DESIRED, b"probe")
            got = gw.reports_after(n, expected + 1, f"after {msgs}")
            _assert_rejected(got, [m for m, _, _ in msgs])
            gw.alive(f"after {msgs}")

        hostile_then_probe()
        # Every bundle answered is counted in the gateway's health, by result and by reason.
        reports, control = _health_counts_every_report(gw)
        results = Counter(str(r.get("result")) for r in reports)
        assert control["by_result"] == dict(results), (control, results)
        assert sum(control["rejected_by_reason"].values()) == results["rejected"], control
        # ... and logged once per reason (then summarised each minute), not once per bundle.
        firsts = gw.log.read_text(errors="replace").count("config bundles: rejected (")
        assert 1 <= firsts <= len(control["rejected_by_reason"]) < results["rejected"], (
            firsts, control)
        counters_after = h.rejection_counters(gw.watcher.latest_health())
        assert sum(counters_after.values()) > sum(counters_before.values()), (
            counters_before, counters_after)
        for topic in OTHER_TOPICS:
            gw.watcher.publish(topic, b"", retain=True)
        gw.apply_genuine(1, "genuine after the hostile messages")
        print(f"{total['sent']} hostile messages, then a genuine config applied; "
              f"control counters in health: {control}")


# ------------------------------------------------------------------ regressions, one each


def slug(name: str) -> str:
    """A test id without spaces or brackets (``-k`` friendly)."""
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def _rng_bytes(n: int) -> bytes:
    return random.Random(SEED).randbytes(n)


def _mutated(other: bytes) -> bytes:
    data = bytearray(other)
    data[len(data) // 3] ^= 0x5A
    return bytes(data)


CASES: dict[str, Callable[[bytes, bytes], bytes]] = {
    "lone surrogate in the signed part": lambda own, other: h.surrogate_envelope(own),
    "lone surrogate in the targets": lambda own, other: h.surrogate_target(own),
    "list where the key id string belongs": lambda own, other: h.list_keyid(own),
    "list where the signature string belongs": lambda own, other: h.list_sig(own),
    "version 10**30": lambda own, other: h.huge_version(own),
    "100,000 nested [": lambda own, other: h.deep_envelope(),
    "wrong magic": lambda own, other: h.wrong_magic(own),
    "envelope length 4 GiB": lambda own, other: h.huge_declared_length(own),
    "message of 1.3 MB": lambda own, other: h.oversized_bundle(),
    "truncated genuine bundle": lambda own, other: h.truncated(own, len(own) // 2),
    "mutated genuine bundle": lambda own, other: _mutated(other),
    "random bytes": lambda own, other: _rng_bytes(300),
}


@pytest.mark.parametrize("case", list(CASES), ids=[slug(c) for c in CASES])
def test_one_hostile_bundle_then_a_genuine_config(
        case: str, tmp_path: Path, own_broker: Mosquitto, sim_site: Path) -> None:
    with running_gateway(tmp_path, own_broker, sim_site) as gw:
        blob = CASES[case](gw.genuine(1, "captured"), gw.other)
        n = gw.watcher.count()
        gw.watcher.publish(DESIRED, blob)
        report = gw.reports_after(n, 1, f"after {case!r}")[0]
        assert report["result"] == "rejected" and report["committed"] == 0, report
        print(f"{case}: {report['reason']}")
        gw.apply_genuine(1, f"genuine after {case}")


BOOT_CASES = ["lone surrogate in the signed part", "list where the key id string belongs",
              "100,000 nested ["]


@pytest.mark.parametrize("case", BOOT_CASES, ids=[slug(c) for c in BOOT_CASES])
def test_a_retained_hostile_bundle_found_at_boot(
        case: str, tmp_path: Path, own_broker: Mosquitto, sim_site: Path) -> None:
    """Retained, it is delivered again at every start: refusing it must not be a crash loop."""
    def leave_retained(watcher: Watcher, genuine: Callable[[int, str], bytes],
                       other: bytes) -> None:
        watcher.publish(DESIRED, CASES[case](genuine(1, "captured"), other), retain=True)

    with running_gateway(tmp_path, own_broker, sim_site, leave_retained) as gw:
        rejected = [r for r in gw.watcher.since(0) if r.get("result") == "rejected"]
        assert rejected and rejected[0]["committed"] == 0, gw.watcher.since(0)
        gw.apply_genuine(1, f"genuine after a retained {case}")
