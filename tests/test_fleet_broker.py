"""The broker files ``edge-fleet broker-config`` writes: no id can inject a line or pose as the
fleet, file modes, and, on a real mosquitto, that a gateway cannot take over another's
session by connecting with its client id (the session and its queued messages survive, also
a broker restart)."""

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
        acl_text("edge", "ops")
    with pytest.raises(ValueError, match="could also be a gateway id"):
        passwd_text([("ops", H)], fleet_users=["ops"])
    acl = acl_text("edge", "fleet", extra_fleet_users=["ingest"])
    for user in ("fleet", "ingest"):
        assert f"user {user}\ntopic readwrite edge/#\n" in acl


@pytest.mark.parametrize("bad", ["$7$101$a$b\nevil:$7$1$x$y", "plain", "$7$1$a:b$c"])
def test_a_hash_cannot_forge_a_line_either(bad: str) -> None:
    with pytest.raises(ValueError, match="not a mosquitto"):
        passwd_text([("gw-a", bad)])


def test_files_modes_and_fragment(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    conf = write_broker_config(out, [("fleet", H), ("gw-a", H), ("gw-b", H)],
                               persistence_dir=tmp_path / "db")
    assert conf == out / CONF_NAME
    assert (out / "passwd").read_text() == f"fleet:{H}\ngw-a:{H}\ngw-b:{H}\n"
    for name, mode in (("passwd", 0o600), ("acl", 0o600), (CONF_NAME, 0o644)):
        assert (out / name).stat().st_mode & 0o777 == mode, name
    directives = [ln for ln in conf.read_text().splitlines() if ln and not ln.startswith("#")]
    assert directives == [
        "per_listener_settings false", "allow_anonymous false",
        f"password_file {out.absolute() / 'passwd'}", f"acl_file {out.absolute() / 'acl'}",
        "persistence true", f"persistence_location {tmp_path / 'db'}/",
        "autosave_interval 60", "autosave_on_changes false",
        "persistent_client_expiration 7d", f"max_queued_messages {MIN_QUEUED}",
        # last: a listener option, for the listener declared before the fragment
        "use_username_as_clientid true"]


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
    for name in ("passwd", "acl"):
        st = (out / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4343, 0o600), name


# ------------------------------------------------------------------ a real broker

PASSWORDS = {"fleet": "fleet-secret", "gw-a": "secret-of-a", "gw-b": "secret-of-b"}


class Session:
    """An MQTT 3.1.1 client with a persistent session; records messages and disconnects."""

    def __init__(self, port: int, user: str, client_id: str, *, clean: bool = False) -> None:
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
        assert self.connected.wait(10), f"{user} did not connect"
        assert self.rc is not None and not self.rc.is_failure, (user, self.rc)

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
    """mosquitto as deployed: the fragment after the gateways' listener, then the fleet's."""
    auth = tmp_path / "auth"
    (tmp_path / "db").mkdir()
    write_broker_config(auth, [(u, mosquitto_hash(p)) for u, p in PASSWORDS.items()],
                        persistence_dir=tmp_path / "db")
    ops_port = free_port()
    broker = Mosquitto(extra_conf=(auth / CONF_NAME).read_text()
                       + f"listener {ops_port} 127.0.0.1\n")
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

    def session(port: int, user: str, client_id: str, *, clean: bool = False) -> Session:
        sessions.append(Session(port, user, client_id, clean=clean))
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
        # Control: the fleet's listener has no binding (the fleet's clients share a user
        # name), so it must be out of the gateways' reach: there, the same attempt succeeds.
        session(ops_port, "gw-a", "gw-b", clean=True)
        wait_until(lambda: b2.disconnects > 0, 10, "the unbound listener to throw B off")
    finally:
        for s in sessions:
            s.close()
