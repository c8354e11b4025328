"""The broker files ``edge-fleet broker-config`` writes: no id can inject a line or pose as the
fleet, file modes, and, on a real mosquitto, that a gateway cannot take over another's
session by connecting with its client id (the session and its queued messages survive, also
a broker restart), nor reach the fleet's own listener to throw the ingest or the fleet service
off."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.fleet.brokerconf import (
    CONF_NAME,
    MIN_QUEUED,
    acl_text,
    fleet_acl_text,
    fleet_listener_line,
    mosquitto_hash,
    passwd_text,
    queue_limit,
    write_broker_config,
)
from edge_agent.tools.devbroker import Mosquitto, free_port
from tests.support.fleetkit import wait_until

H = "$7$101$c2FsdA==$aGFzaA=="  # a well-formed hash; these tests never log in with it


# ------------------------------------------------------------------ the files, no broker

@pytest.mark.parametrize("user", ["gw-a\nfleet", "gw-a\n", "gw:a", "gw a", "gw/a", "gw+", "#",
                                  "gw\0", "", "x" * 65, "$SYS", "GW-A"])
def test_no_gateway_id_can_forge_a_line_or_a_field(user: str) -> None:
    with pytest.raises(ValueError, match=r"gateway id .* expected 1-64 characters"):
        passwd_text([("fleet", H), (user, H)])


@pytest.mark.parametrize("user", ["fleet", "ingest", "fleet-0a1b2c3d", "edge-ingest", "root"])
def test_a_gateway_cannot_be_named_like_the_fleet(user: str) -> None:
    # Without the fleet's own entry (no --fleet-password-file) a gateway row named "fleet"
    # would otherwise be the only "fleet" line, and the ACL's "user fleet" rules its.
    with pytest.raises(ValueError, match="reserved"):
        passwd_text([(user, H)], fleet_users=["ingest-1"])
    with pytest.raises(ValueError, match="appears twice"):
        passwd_text([("fleet", H), ("fleet", H)])


def test_fleet_users_must_be_names_no_gateway_can_take() -> None:
    with pytest.raises(ValueError, match="could also be a gateway id"):
        fleet_acl_text("edge", "ops")
    with pytest.raises(ValueError, match="could also be a gateway id"):
        passwd_text([("ops", H)], fleet_users=["ops"])
    acl = fleet_acl_text("edge", "fleet", extra_fleet_users=["ingest"])
    for user in ("fleet", "ingest"):
        assert f"user {user}\ntopic readwrite edge/#\n" in acl
    # The gateways' ACL names no user at all: only the %u patterns.
    gateways_acl = acl_text("edge")
    assert "\nuser " not in gateways_acl and "pattern read edge/%u/cmd/#" in gateways_acl


@pytest.mark.parametrize("bad", ["$7$101$a$b\nevil:$7$1$x$y", "plain", "$7$1$a:b$c"])
def test_a_hash_cannot_forge_a_line_either(bad: str) -> None:
    with pytest.raises(ValueError, match="not a mosquitto"):
        passwd_text([("gw-a", bad)])


def test_files_modes_and_fragment(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    conf = write_broker_config(out, [("fleet", H), ("gw-a", H), ("gw-b", H)],
                               persistence_dir=tmp_path / "db", fleet_listener="10.0.0.5:1884")
    assert conf == out / CONF_NAME
    # Each listener's users in their own file: gateways here, the fleet there.
    assert (out / "passwd").read_text() == f"gw-a:{H}\ngw-b:{H}\n"
    assert (out / "fleet-passwd").read_text() == f"fleet:{H}\n"
    assert (out / "fleet-acl").read_text() == "user fleet\ntopic readwrite edge/#\n"
    for name, mode in (("passwd", 0o600), ("acl", 0o600), ("fleet-passwd", 0o600),
                       ("fleet-acl", 0o600), (CONF_NAME, 0o644)):
        assert (out / name).stat().st_mode & 0o777 == mode, name
    directives = [ln for ln in conf.read_text().splitlines() if ln and not ln.startswith("#")]
    base = out.absolute()
    assert directives == [
        # first: mosquitto refuses it after any other security setting
        "per_listener_settings true",
        "persistence true", f"persistence_location {tmp_path / 'db'}/",
        "autosave_interval 60", "autosave_on_changes false",
        "persistent_client_expiration 7d", "set_tcp_nodelay true",
        f"max_queued_messages {MIN_QUEUED}", "max_queued_bytes 0",
        # the gateways' listener, declared before the fragment
        "allow_anonymous false", f"password_file {base / 'passwd'}", f"acl_file {base / 'acl'}",
        "use_username_as_clientid true",
        # the fleet's own listener
        "listener 1884 10.0.0.5", "allow_anonymous false",
        f"password_file {base / 'fleet-passwd'}", f"acl_file {base / 'fleet-acl'}"]


def test_regenerating_without_the_fleet_password_keeps_the_fleets_file(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    write_broker_config(out, [("fleet", H), ("gw-a", H)], persistence_dir=tmp_path)
    write_broker_config(out, [("gw-a", H), ("gw-b", H)], persistence_dir=tmp_path)
    assert (out / "fleet-passwd").read_text() == f"fleet:{H}\n"
    assert (out / "passwd").read_text() == f"gw-a:{H}\ngw-b:{H}\n"
    fresh = tmp_path / "fresh"
    write_broker_config(fresh, [("gw-a", H)], persistence_dir=tmp_path)
    assert (fresh / "fleet-passwd").read_text() == ""


@pytest.mark.parametrize(("spec", "line"), [
    ("127.0.0.1:1884", "listener 1884 127.0.0.1"), ("[::1]:1884", "listener 1884 ::1"),
    ("ops.internal:18830", "listener 18830 ops.internal"),
    ("unix:/run/mosquitto/fleet.sock", "listener 0 /run/mosquitto/fleet.sock"),
    ("unix:///run/mosquitto/fleet.sock", "listener 0 /run/mosquitto/fleet.sock")])
def test_the_fleet_listener_line(spec: str, line: str) -> None:
    assert fleet_listener_line(spec) == line


@pytest.mark.parametrize("spec", ["1884", ":1884", "host:0", "host:65536", "host:x",
                                  "a b:1884", "h\nallow_anonymous true:1", "unix:rel/sock",
                                  "unix:/a b", "h#:1884"])
def test_a_bad_fleet_listener_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"fleet listener|a path in mosquitto"):
        fleet_listener_line(spec)


def test_nothing_else_can_add_a_line_either(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="control characters"):
        acl_text("edge\nuser gw-a\ntopic readwrite x")
    with pytest.raises(ValueError, match=r"a path in mosquitto\.conf"):
        write_broker_config(tmp_path / "a\nallow_anonymous true", [("gw-a", H)],
                            persistence_dir=tmp_path)
    with pytest.raises(ValueError, match=r"a path in mosquitto\.conf"):
        write_broker_config(tmp_path / "auth", [("gw-a", H)], persistence_dir=tmp_path / "a b")


def test_queue_holds_a_day_of_batches() -> None:
    assert queue_limit(1) == MIN_QUEUED
    assert queue_limit(1000) == 1000 * 86400 // 5
    assert queue_limit(10, outage_s=3600, window_s=1) == MIN_QUEUED


def test_a_bad_row_leaves_the_current_files(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    write_broker_config(out, [("fleet", H), ("gw-a", H)], persistence_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="gw-b\\\\n"):
        write_broker_config(out, [("fleet", H), ("gw-a", H), ("gw-b\nfleet", H)],
                            persistence_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_as_root_the_files_belong_to_the_directory_owner(tmp_path: Path) -> None:
    # mosquitto opens them after dropping to its user: root-only files would stop it.
    out = tmp_path / "auth"
    out.mkdir()
    os.chown(out, 4242, 4343)
    write_broker_config(out, [("gw-a", H)], persistence_dir=tmp_path)
    for name in ("passwd", "acl", "fleet-passwd", "fleet-acl"):
        st = (out / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4343, 0o600), name


# ------------------------------------------------------------------ a real broker

PASSWORDS = {"fleet": "fleet-secret", "gw-a": "secret-of-a", "gw-b": "secret-of-b"}


class Session:
    """An MQTT 3.1.1 client with a persistent session; records messages and disconnects."""

    def __init__(self, port: int, user: str, client_id: str, *, clean: bool = False,
                 refused: bool = False) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects = 0
        self.connected = threading.Event()
        self.rc: ReasonCode | None = None
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(user, PASSWORDS[user])
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10), f"{user} got no CONNACK"
        assert self.rc is not None and self.rc.is_failure == refused, (user, self.rc)

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode,
                    _p: object) -> None:
        self.rc = rc
        self.connected.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, _rc: object,
                       _p: object) -> None:
        with self._lock:
            self.disconnects += 1

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.messages]

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *_a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(10), f"SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        """Disconnect cleanly (a persistent session stays on the broker)."""
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def isolated_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int]]:
    """mosquitto as deployed: the gateways' listener, then the fragment (the fleet's listener)."""
    auth = tmp_path / "auth"
    (tmp_path / "db").mkdir()
    ops_port = free_port()
    write_broker_config(auth, [(u, mosquitto_hash(p)) for u, p in PASSWORDS.items()],
                        persistence_dir=tmp_path / "db", fleet_listener=f"127.0.0.1:{ops_port}")
    broker = Mosquitto(extra_conf=(auth / CONF_NAME).read_text(), anonymous=False)
    broker.start()
    try:
        yield broker, ops_port
    finally:
        broker.close()


@pytest.mark.integration
def test_a_gateway_cannot_take_over_anothers_session(tmp_path: Path,
                                                     isolated_broker: tuple[Mosquitto, int]
                                                     ) -> None:
    broker, ops_port = isolated_broker
    sessions: list[Session] = []

    def session(port: int, user: str, client_id: str, *, clean: bool = False,
                refused: bool = False) -> Session:
        sessions.append(Session(port, user, client_id, clean=clean, refused=refused))
        return sessions[-1]

    try:
        b = session(broker.port, "gw-b", "gw-b")
        b.subscribe("edge/gw-b/cmd/+")
        fleet = session(ops_port, "fleet", "fleet-test", clean=True)
        # 1. A, logged in as itself, connects with B's client id: B stays connected.
        a = session(broker.port, "gw-a", "gw-b")
        time.sleep(0.3)
        assert b.disconnects == 0, "A's connection threw B off"
        fleet.publish("edge/gw-b/cmd/1", b"first")
        wait_until(lambda: "edge/gw-b/cmd/1" in b.topics(), 10, "B's first command")
        assert a.messages == [] and b.disconnects == 0
        a.close()
        # 2. B is offline; its session queues a command. A tries B's client id again, with
        #    a persistent session (B's queue would be delivered to it) and a clean one
        #    (B's session would be wiped).
        b.close()
        fleet.publish("edge/gw-b/cmd/2", b"second")
        a2 = session(broker.port, "gw-a", "gw-b")
        a3 = session(broker.port, "gw-a", "gw-b", clean=True)
        time.sleep(0.5)
        assert a2.messages == [] and a3.messages == [], "A got B's queued command"
        for s in (a2, a3, fleet):
            s.close()
        # 3. The broker restarts: B's session and queued command survive (persistence).
        broker.stop()
        assert (tmp_path / "db" / "mosquitto.db").exists()
        broker.start()
        b2 = session(broker.port, "gw-b", "gw-b")
        wait_until(lambda: "edge/gw-b/cmd/2" in b2.topics(), 10,
                   "B's queued command after the takeover attempts and a broker restart")
        assert b2.topics() == ["edge/gw-b/cmd/2"]
        # The fleet's listener has no binding (the fleet's clients share a user name), so
        # it takes no gateway credentials: the same attempt there is refused at CONNECT.
        session(ops_port, "gw-a", "gw-b", clean=True, refused=True).close()
        gw_a = session(broker.port, "gw-a", "gw-a", clean=True)
        gw_a.publish("edge/gw-a/state", b"after")  # ordered after the refused attempt
        fleet2 = session(ops_port, "fleet", "fleet-test2", clean=True)
        fleet2.publish("edge/gw-b/cmd/3", b"third")
        wait_until(lambda: "edge/gw-b/cmd/3" in b2.topics(), 10, "B's third command")
        assert b2.disconnects == 0
    finally:
        for s in sessions:
            s.close()


@pytest.mark.integration
def test_gateway_credentials_cannot_reach_the_fleets_own_clients(
        isolated_broker: tuple[Mosquitto, int]) -> None:
    broker, ops_port = isolated_broker
    sessions: list[Session] = []

    def session(port: int, user: str, client_id: str, *, clean: bool = False,
                refused: bool = False) -> Session:
        sessions.append(Session(port, user, client_id, clean=clean, refused=refused))
        return sessions[-1]

    try:
        # The ingest (a persistent session: its queue is the gateways' acknowledged batches)
        # and a fleet service instance, on the fleet's listener.
        ingest = session(ops_port, "fleet", "edge-ingest")
        ingest.subscribe("edge/+/data")
        service = session(ops_port, "fleet", "fleet-0a1b2c3d", clean=True)
        service.subscribe("edge/+/state")
        for target in ("edge-ingest", "fleet-0a1b2c3d"):
            for clean in (True, False):
                # Gateway credentials on the fleet's listener: refused, whatever the id.
                session(ops_port, "gw-a", target, clean=clean, refused=True).close()
                # On the gateways' listener the id becomes the user name (gw-a).
                session(broker.port, "gw-a", target, clean=clean).close()
        # The fleet's password does not work on the gateways' listener either.
        session(broker.port, "fleet", "edge-ingest", refused=True).close()
        # Everything above was answered before this batch is published, so a takeover would
        # have thrown the ingest off before the batch reaches it.
        gw_b = session(broker.port, "gw-b", "gw-b", clean=True)
        gw_b.publish("edge/gw-b/data", b"batch")
        gw_b.publish("edge/gw-b/state", b"online")
        wait_until(lambda: "edge/gw-b/data" in ingest.topics(), 10, "the batch at the ingest")
        wait_until(lambda: "edge/gw-b/state" in service.topics(), 10, "the state at the service")
        assert (ingest.disconnects, service.disconnects) == (0, 0)
        assert ingest.topics() == ["edge/gw-b/data"], "a gateway's session got the ingest's"
        # And the ingest's queue is still its own: offline, then a batch, then back.
        ingest.close()
        gw_b.publish("edge/gw-b/data", b"queued")
        session(ops_port, "gw-b", "edge-ingest", refused=True).close()
        session(broker.port, "gw-b", "edge-ingest", clean=True).close()
        back = session(ops_port, "fleet", "edge-ingest")
        wait_until(lambda: "edge/gw-b/data" in back.topics(), 10,
                   "the ingest's queued batch after the attempts")
    finally:
        for s in sessions:
            s.close()
