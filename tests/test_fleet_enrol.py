"""Enrolment over HTTPS (``edge-agent enroll``) and broker isolation with generated mosquitto
password and ACL files: gateway A cannot publish to B's topics nor read B's desired config.

Enrolment's safety checks (issue "nothing stops silently", items 6 and 10): the fleet's
certificate is verified against ``--ca-file`` with its host name, plain ``http://`` and a
missing ``--root-sha256`` are refused unless waived by name, ``serve --http`` needs a
certificate or ``--insecure-http``; and whatever is refused writes nothing and spends no token.
The TLS material is a throw-away CA made per test run (tests/support/tlskit.py).

The broker is laid out as brokerconf asks: the generated fragment right after the gateways'
listener (client id bound to user name there), and a listener of its own for the fleet's
clients, which share the user name ``fleet``."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.control.truststore import load_trust
from edge_agent.fleet import actions as ops
from edge_agent.fleet.brokerconf import CONF_NAME, mosquitto_hash, write_broker_config
from edge_agent.fleet.cli import main as fleet_main
from edge_agent.fleet.httpd import server_tls_context
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.service import FleetService
from edge_agent.protocol.bundle import root_fingerprint
from edge_agent.protocol.errors import ConfigError, EdgeError
from edge_agent.tools.devbroker import Mosquitto, free_port
from edge_agent.tools.enroll import MAX_TOKEN, enroll_main, write_enrolment
from tests.support.fleetkit import EnrolmentEndpoint, Pki, running, serve_args, wait_until
from tests.support.tlskit import TlsFiles, make_tls

pytestmark = pytest.mark.integration
SEED = 23
print(f"test_fleet_enrol: key seed {SEED}")
FLEET_PASSWORD = "fleet-secret-for-tests"


class Client:
    """A paho MQTT 5 client that records messages and PUBACK reason codes."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, ReasonCode] = {}
        self.connected = threading.Event()
        self.connect_rc: ReasonCode | None = None
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-test",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_connect = self._on_connect
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode,
                    _p: Properties | None) -> None:
        self.connect_rc = rc
        self.connected.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode,
                    _p: Properties | None) -> None:
        with self._lock:
            self.acks[mid] = rc

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        wait_until(lambda: info.mid in self.acks, 10, f"PUBACK for {topic}")
        return self.acks[info.mid]

    def topics(self) -> set[str]:
        with self._lock:
            return {t for t, _ in self.messages}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()  # paho allows both twice: close() may run again in a finally


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Registry, Pki, str]]:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    yield reg, pki, db
    reg.close()


def test_enrol_over_https_then_isolation_on_the_broker(tmp_path: Path,
                                                       fleet: tuple[Registry, Pki, str]) -> None:
    reg, pki, db = fleet
    tls = make_tls(tmp_path / "tls")
    (tmp_path / "fleet.pw").write_text(FLEET_PASSWORD)
    auth = tmp_path / "auth"
    # The broker starts with only the fleet user; gateways are added after enrolment.
    ops_port = free_port()
    write_broker_config(auth, [("fleet", mosquitto_hash(FLEET_PASSWORD))],
                        persistence_dir=tmp_path, fleet_listener=f"127.0.0.1:{ops_port}")
    broker = Mosquitto(extra_conf=(auth / CONF_NAME).read_text(), anonymous=False)
    broker.start()
    try:
        with running(serve_args(db, f"mqtt://127.0.0.1:{ops_port}", "--username", "fleet",
                                "--password-file",
                                str(tmp_path / "fleet.pw"), "--http", "127.0.0.1:0",
                                "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
                                "--tick-s", "0.1"),
                     tmp_path / "serve.log", ready="enrolment https://") as _svc:
            url = (tmp_path / "serve.log").read_text().split("enrolment https://")[1].split()[0]
            url = f"https://{url}"
            fp = root_fingerprint(reg.latest_root())
            pinned = ["--ca-file", str(tls.ca_cert), "--root-sha256", fp]
            tokens = {gw: ops.issue_token(reg, gw, "north", ["lamps"]) for gw in ("gw-a", "gw-b")}
            for gw, token in tokens.items():
                assert enroll_main(["--fleet", url, "--token", token, "--state-dir",
                                    str(tmp_path / gw), *pinned]) == 0
            # A token works once; an enrolled gateway is not silently re-enrolled.
            assert enroll_main(["--fleet", url, "--token", tokens["gw-a"], "--state-dir",
                                str(tmp_path / "again"), *pinned]) == 2
            assert not (tmp_path / "again" / "trust.json").exists()
            spare = ops.issue_token(reg, "gw-c", "north", [])
            assert enroll_main(["--fleet", url, "--token", spare, "--state-dir",
                                str(tmp_path / "gw-a"), *pinned]) == 2
            assert load_trust(tmp_path / "gw-a").gateway_id == "gw-a"
            for gw in ("gw-a", "gw-b"):
                for name in ("trust.json", "identity.json", "mqtt.password"):
                    assert (tmp_path / gw / name).stat().st_mode & 0o777 == 0o600, name
                trust = load_trust(tmp_path / gw)
                assert trust.gateway_id == gw and trust.root_version == 1
                assert root_fingerprint(trust.root) == fp
            # Regenerate the broker's files from the registry and reload (SIGHUP).
            (tmp_path / "fleet.pw").write_text(FLEET_PASSWORD)
            write_broker_config(auth, [("fleet", mosquitto_hash(FLEET_PASSWORD)),
                                       *reg.password_hashes()], persistence_dir=tmp_path,
                                fleet_listener=f"127.0.0.1:{ops_port}")
            assert broker.proc is not None
            broker.proc.send_signal(1)
            time.sleep(0.5)
            _isolation(tmp_path, broker, ops_port, reg, pki)
    finally:
        broker.close()


def _creds(tmp_path: Path, gw: str) -> tuple[str, str]:
    ident = json.loads((tmp_path / gw / "identity.json").read_text())
    return ident["mqtt"]["username"], ident["mqtt"]["password"]


def _isolation(tmp_path: Path, broker: Mosquitto, ops_port: int, reg: Registry,
               pki: Pki) -> None:
    a = Client(broker.port, *_creds(tmp_path, "gw-a"))
    b = Client(broker.port, *_creds(tmp_path, "gw-b"))
    fleet = Client(ops_port, "fleet", FLEET_PASSWORD)
    wrong = Client(broker.port, "gw-b", "not-the-password")
    try:
        for c in (a, b, fleet, wrong):
            assert c.connected.wait(10)
        assert wrong.connect_rc is not None and wrong.connect_rc.is_failure
        assert a.connect_rc is not None and not a.connect_rc.is_failure
        fleet.c.subscribe("edge/#", qos=1)
        a.c.subscribe([("edge/gw-b/desired/#", 1), ("edge/+/desired/#", 1), ("edge/#", 1)])
        b.c.subscribe("edge/gw-b/desired/#", qos=1)
        time.sleep(0.3)
        # The fleet publishes B's desired config (retained), as the service does.
        ops.start_rollout(reg, b"[gateway]\n", ["gw:gw-b"], pki.release_keys, waves=[100])
        wait_until(lambda: "edge/gw-b/desired/config" in b.topics(), 15,
                   "B to receive its desired config")
        # A cannot publish into B's topics: refused with MQTT 5 reason 0x87 (not authorised).
        for topic in ("edge/gw-b/data", "edge/gw-b/reported", "edge/gw-b/state",
                      "edge/gw-b/desired/config"):
            assert a.publish(topic, b"forged").value == 0x87, topic
        assert a.publish("edge/gw-a/data", b"own data").value == 0
        wait_until(lambda: "edge/gw-a/data" in fleet.topics(), 10, "A's own data at the fleet")
        time.sleep(0.3)
        assert not any(t.startswith("edge/gw-b/") and p == b"forged"
                       for t, p in fleet.messages), "a forged message reached the fleet"
        # A never saw B's desired config: not live, not retained, not by wildcard.
        assert not any(t.startswith("edge/gw-b/") for t in a.topics()), a.topics()
        # A late subscriber as A does not get B's retained bundle either. (It replaces A's
        # connection: one user name, one client id.)
        a.close()
        late = Client(broker.port, *_creds(tmp_path, "gw-a"))
        try:
            late.c.subscribe("edge/gw-b/desired/config", qos=1)
            late.c.subscribe("edge/gw-a/desired/config", qos=1)
            time.sleep(0.5)
            assert late.messages == []
        finally:
            late.close()
    finally:
        for c in (a, b, fleet, wrong):
            c.close()


# ------------------------------------------------------------------ enrolment's safety checks


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def endpoint(fleet: tuple[Registry, Pki, str], tls_files: TlsFiles) -> Iterator[EnrolmentEndpoint]:
    with EnrolmentEndpoint(fleet[2], tls=server_tls_context(tls_files.cert,
                                                            tls_files.key)) as ep:
        yield ep


def written(state: Path) -> list[str]:
    """The files an enrolment left in ``state`` (none, if it was refused)."""
    return sorted(p.name for p in state.iterdir()) if state.exists() else []


def test_enrolment_over_https_with_the_ca_file(tmp_path: Path, fleet: tuple[Registry, Pki, str],
                                               tls_files: TlsFiles,
                                               endpoint: EnrolmentEndpoint) -> None:
    reg, _, _ = fleet
    fp = root_fingerprint(reg.latest_root())
    # The certificate names both; the host name is checked either way.
    for gw, host in (("gw-ip", "127.0.0.1"), ("gw-name", "localhost")):
        token = ops.issue_token(reg, gw, "north", [])
        assert enroll_main(["--fleet", f"https://{host}:{endpoint.port}/", "--token", token,
                            "--state-dir", str(tmp_path / gw), "--ca-file",
                            str(tls_files.ca_cert), "--root-sha256", fp.upper()]) == 0
        assert written(tmp_path / gw) == ["identity.json", "mqtt.password", "trust.json"]
        for name in written(tmp_path / gw):
            assert (tmp_path / gw / name).stat().st_mode & 0o777 == 0o600, name
        assert root_fingerprint(load_trust(tmp_path / gw).root) == fp


def test_a_certificate_from_another_ca_is_refused_and_nothing_is_written(
        tmp_path: Path, fleet: tuple[Registry, Pki, str], tls_files: TlsFiles,
        endpoint: EnrolmentEndpoint, capsys: pytest.CaptureFixture[str]) -> None:
    reg, _, _ = fleet
    other = make_tls(tmp_path / "other", name="other")
    token = ops.issue_token(reg, "gw-x", "north", [])
    base = ["--fleet", endpoint.url, "--token", token, "--state-dir", str(tmp_path / "gw-x"),
            "--root-sha256", root_fingerprint(reg.latest_root())]
    for ca in (["--ca-file", str(other.ca_cert)], []):  # the wrong CA; the system store
        assert enroll_main([*base, *ca]) == 2
        err = capsys.readouterr().err
        assert "the fleet's TLS certificate is not trusted" in err and "--ca-file" in err, err
        assert "Traceback" not in err
        assert written(tmp_path / "gw-x") == []
    # The handshake failed before the request: the token was never sent and still works.
    assert enroll_main([*base, "--ca-file", str(tls_files.ca_cert)]) == 0
    # A file that holds no CA certificate is named as such.
    (tmp_path / "empty.pem").write_text("")
    assert enroll_main([*base, "--ca-file", str(tmp_path / "empty.pem"), "--state-dir",
                        str(tmp_path / "gw-y")]) == 2
    assert "holds no PEM CA certificate" in capsys.readouterr().err


def test_a_certificate_for_another_host_is_refused(tmp_path: Path,
                                                  fleet: tuple[Registry, Pki, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    reg, _, db = fleet
    elsewhere = make_tls(tmp_path / "tls", hosts=("fleet.invalid",), name="elsewhere")
    with EnrolmentEndpoint(db, tls=server_tls_context(elsewhere.cert, elsewhere.key)) as ep:
        token = ops.issue_token(reg, "gw-h", "north", [])
        assert enroll_main(["--fleet", ep.url, "--token", token, "--state-dir",
                            str(tmp_path / "gw-h"), "--ca-file", str(elsewhere.ca_cert),
                            "--root-sha256", root_fingerprint(reg.latest_root())]) == 2
    err = capsys.readouterr().err
    assert "not trusted" in err and "mismatch" in err, err
    assert written(tmp_path / "gw-h") == []


def test_plain_http_is_refused_unless_insecure_http(tmp_path: Path,
                                                   fleet: tuple[Registry, Pki, str],
                                                   capsys: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    reg, _, db = fleet
    with EnrolmentEndpoint(db, insecure=True) as ep:
        assert ep.url.startswith("http://")
        assert "PLAIN HTTP" in caplog.text and "in clear" in caplog.text  # serve warns
        token = ops.issue_token(reg, "gw-p", "north", [])
        base = ["--fleet", ep.url, "--token", token, "--state-dir", str(tmp_path / "gw-p"),
                "--root-sha256", root_fingerprint(reg.latest_root())]
        assert enroll_main(base) == 2
        err = capsys.readouterr().err
        assert "refusing plain HTTP" in err and "--insecure-http" in err, err
        assert enroll_main([*base, "--insecure-http", "--ca-file", str(tmp_path)]) == 2
        assert "--ca-file is for an https://" in capsys.readouterr().err
        assert written(tmp_path / "gw-p") == [] and ep.stats.connections == 0
        assert enroll_main([*base, "--insecure-http"]) == 0
        err = capsys.readouterr().err
        assert "warning: plain HTTP (--insecure-http)" in err and "in clear" in err, err
        assert load_trust(tmp_path / "gw-p").gateway_id == "gw-p"


def test_the_root_fingerprint_is_required_unless_trust_first_use(
        tmp_path: Path, fleet: tuple[Registry, Pki, str], tls_files: TlsFiles,
        endpoint: EnrolmentEndpoint, capsys: pytest.CaptureFixture[str]) -> None:
    reg, _, _ = fleet
    fp = root_fingerprint(reg.latest_root())

    def args(gw: str, token: str, *extra: str) -> list[str]:
        return ["--fleet", endpoint.url, "--token", token, "--state-dir", str(tmp_path / gw),
                "--ca-file", str(tls_files.ca_cert), *extra]

    token = ops.issue_token(reg, "gw-t", "north", [])
    assert enroll_main(args("gw-t", token)) == 2
    err = capsys.readouterr().err
    assert "--root-sha256 FP is required" in err and "--trust-first-use" in err, err
    assert enroll_main(args("gw-t", token, "--root-sha256", "12ab")) == 2
    assert "64 hex digits" in capsys.readouterr().err
    assert endpoint.stats.connections == 0  # refused before any network: the token is unspent
    with pytest.raises(SystemExit):  # both at once is a contradiction argparse refuses
        enroll_main(args("gw-t", token, "--root-sha256", fp, "--trust-first-use"))
    capsys.readouterr()
    # A fleet (or someone in its place) answering with another root: refused, nothing written.
    assert enroll_main(args("gw-t", token, "--root-sha256", "0" * 64)) == 2
    err = capsys.readouterr().err
    assert f"has fingerprint {fp}" in err and "nothing written" in err, err
    assert written(tmp_path / "gw-t") == []
    # Trust on first use, asked for by name, works and warns.
    other = ops.issue_token(reg, "gw-u", "north", [])
    assert enroll_main(args("gw-u", other, "--trust-first-use")) == 0
    err = capsys.readouterr().err
    assert "warning: --trust-first-use" in err and "pin its own root" in err, err
    assert root_fingerprint(load_trust(tmp_path / "gw-u").root) == fp


def test_the_token_comes_from_a_file_and_on_the_command_line_it_warns(
        tmp_path: Path, fleet: tuple[Registry, Pki, str], tls_files: TlsFiles,
        endpoint: EnrolmentEndpoint, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    reg, _, _ = fleet

    def args(gw: str, *token: str) -> list[str]:
        return ["--fleet", endpoint.url, *token, "--state-dir", str(tmp_path / gw),
                "--ca-file", str(tls_files.ca_cert),
                "--root-sha256", root_fingerprint(reg.latest_root())]

    # A file the token cannot be read from is refused before any network: no token spent.
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "two").write_text("one\ntwo\n")
    (tmp_path / "big").write_text("x" * (MAX_TOKEN + 1))
    (tmp_path / "latin1").write_bytes(b"tok\xe9n\n")
    for name, why in (("empty", "on one line, found 0 lines"), ("two", "found 2 lines"),
                      ("big", f"over {MAX_TOKEN} bytes"), ("latin1", "not UTF-8"),
                      ("missing", "No such file"), (".", "Is a directory")):
        assert enroll_main(args("gw-bad", "--token-file", str(tmp_path / name))) == 2, name
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, (name, err)
    assert endpoint.stats.connections == 0 and written(tmp_path / "gw-bad") == []
    with pytest.raises(SystemExit):  # one source of the token, not two
        enroll_main(args("gw-bad", "--token", "t", "--token-file", str(tmp_path / "two")))
    with pytest.raises(SystemExit):
        enroll_main(args("gw-bad"))
    capsys.readouterr()
    # From a file (surrounding blank space ignored), and from standard input: no warning.
    token = ops.issue_token(reg, "gw-file", "north", [])
    (tmp_path / "token").write_text(f"  {token}\n\n")
    assert enroll_main(args("gw-file", "--token-file", str(tmp_path / "token"))) == 0
    assert "warning" not in capsys.readouterr().err
    token = ops.issue_token(reg, "gw-stdin", "north", [])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{token}\n".encode())))
    assert enroll_main(args("gw-stdin", "--token-file", "-")) == 0
    assert "warning" not in capsys.readouterr().err
    # On the command line it still works, and says where it shows.
    token = ops.issue_token(reg, "gw-argv", "north", [])
    assert enroll_main(args("gw-argv", "--token", token)) == 0
    err = capsys.readouterr().err
    assert "warning: --token" in err and "ps" in err and "--token-file" in err, err
    for gw in ("gw-file", "gw-stdin", "gw-argv"):
        assert load_trust(tmp_path / gw).gateway_id == gw


@pytest.mark.parametrize(("field", "value"), [
    ("gateway_id", "gw-a\nfleet"), ("gateway_id", "fleet"), ("gateway_id", "edge-ingest"),
    ("gateway_id", "GW-A"), ("gateway_id", "x" * 65), ("gateway_id", 7), ("gateway_id", "../x"),
    ("site", "north\nsouth"), ("tags", ["lamps", "a b"])])
def test_an_answer_with_a_bad_id_writes_nothing(tmp_path: Path, fleet: tuple[Registry, Pki, str],
                                                field: str, value: object) -> None:
    reg, _, _ = fleet
    root = reg.latest_root()
    answer: dict[str, object] = {
        "gateway_id": "gw-a", "site": "north", "tags": ["lamps"], "root": root,
        "mqtt": {"url": "mqtts://b:8883", "username": "gw-a", "password": "pw",
                 "topic_prefix": "edge"}}
    write_enrolment(tmp_path / "good", dict(answer), root_sha256=root_fingerprint(root))
    assert written(tmp_path / "good") == ["identity.json", "mqtt.password", "trust.json"]
    answer[field] = value
    with pytest.raises(EdgeError, match="enrolment answer refused, nothing written"):
        write_enrolment(tmp_path / "gw", answer, root_sha256=root_fingerprint(root))
    assert not (tmp_path / "gw").exists()


def test_serve_refuses_to_start_without_tls_or_insecure_http(
        tmp_path: Path, tls_files: TlsFiles, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["serve", "--db", f"sqlite:///{tmp_path / 'fleet.db'}", "--broker",
            "mqtt://127.0.0.1:9"]
    cert, key = ["--tls-cert", str(tls_files.cert)], ["--tls-key", str(tls_files.key)]
    cases = [
        (["--http", "127.0.0.1:0"], "--tls-cert FILE --tls-key FILE"),
        (["--http", "127.0.0.1:0", *cert], "go together"),
        (["--http", "127.0.0.1:0", *cert, *key, "--insecure-http"], "contradicts"),
        ([*cert, *key], "need --http"),
        (["--http", "127.0.0.1:0", "--tls-cert", str(tmp_path / "none.pem"), *key],
         f"--tls-cert {tmp_path / 'none.pem'}: No such file"),
        (["--http", "127.0.0.1:0", "--tls-cert", str(tls_files.ca_cert), *key],
         "not a PEM certificate and its private key"),
        (["--http", "127.0.0.1:99999", *cert, *key], "expected HOST:PORT"),
    ]
    for extra, words in cases:
        assert fleet_main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (extra, err)
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        with pytest.raises(ConfigError, match="needs TLS"):
            FleetService(reg, "mqtt://127.0.0.1:9", http_host="127.0.0.1")
    finally:
        reg.close()
