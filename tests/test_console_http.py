"""The console as an HTTP intake: hostile and malformed requests are refused with a reason,
counted, and change nothing; the console process keeps serving. A real ``edge-fleet console``
process, spoken to over raw sockets and http.client."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.fleet import actions as ops
from edge_agent.fleet.console.accounts import Accounts
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.keys import write_private
from tests.support.brokers import Mosquitto, free_port
from tests.support.fleetkit import Pki, running, wait_until
from tests.support.tlskit import make_tls

# one worker runs the module: its stack (and browser) is built once
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("console-http")]
PASSWORD = "http-test-password"


class Console:
    def __init__(self, port: int, reg: Registry) -> None:
        self.port, self.reg = port, reg

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, body, headers or {})
        r = conn.getresponse()
        got: dict[str, str] = {}
        for k, v in r.getheaders():  # several Set-Cookie headers: one per line
            got[k.lower()] = f"{got[k.lower()]}\n{v}" if k.lower() in got else v
        out = r.status, got, r.read().decode()
        conn.close()
        return out

    def raw(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def login(self, user: str = "olga", password: str = PASSWORD) -> tuple[int, str]:
        status, headers, page = self.request("GET", "/login")
        nonce = headers["set-cookie"].split(";")[0]
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert token
        form = urllib.parse.urlencode({"user": user, "password": password,
                                       "csrf": token.group(1)}).encode()
        status, headers, _ = self.request("POST", "/login", form, {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": nonce})
        cookies = [c.split(";")[0] for c in headers.get("set-cookie", "").splitlines()]
        return status, next((c for c in cookies if c.startswith("edge_console=")), "")

    def rejected(self) -> dict[str, int]:
        doc: dict[str, int] = json.loads(self.request("GET", "/healthz")[2])["rejected"]
        return doc


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console-http")
    db = f"sqlite:///{tmp / 'fleet.db'}"
    reg = Registry(db)
    Accounts(reg).add_user("olga", "operator", PASSWORD, 0)
    port = free_port()
    with running(["edge_agent.fleet.cli", "console", "--db", db, "--ingest-db",
                  str(tmp / "ingest.db"), "--listen", f"127.0.0.1:{port}"],
                 tmp / "console.log", ready="console http://"):
        yield Console(port, reg)
    reg.close()


def test_a_session_is_needed_and_pages_carry_security_headers(console: Console) -> None:
    status, headers, _ = console.request("GET", "/fleet")
    assert status == 303 and headers["location"] == "/login"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert console.request("GET", "/events")[0] == 401
    status, _, _ = console.request("GET", "/fleet", headers={"Cookie": "edge_console=" + "A" * 600})
    assert status == 303  # an oversized or forged cookie is no session
    status, cookie = console.login()
    assert status == 303 and cookie.startswith("edge_console=")
    assert console.request("GET", "/fleet", headers={"Cookie": cookie})[0] == 200


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "key"), [
    ("POST", "/login", b"x" * 20_000, {"Content-Type": "application/x-www-form-urlencoded"},
     413, "too-large"),
    ("POST", "/login", b"user=a", {"Content-Type": "text/plain"}, 415, "not-form"),
    ("POST", "/login", b"user=a&user=b", {"Content-Type": "application/x-www-form-urlencoded"},
     400, "repeated-form-field"),
    ("POST", "/login", b"user=a&password=b", {"Content-Type":
                                              "application/x-www-form-urlencoded"},
     403, "csrf"),
    ("GET", "/login?next=/x", None, {}, 400, "unknown-query-field"),
    ("DELETE", "/fleet", None, {}, 405, "wrong-method"),
    ("GET", "/nowhere", None, {}, 404, "no-path"),
])
def test_malformed_requests_are_refused_and_counted(
        console: Console, method: str, path: str, body: bytes | None,
        headers: dict[str, str], status: int, key: str) -> None:
    before = console.rejected().get(key, 0)
    got, _, text = console.request(method, path, body, headers)
    assert got == status, text
    assert console.rejected().get(key, 0) == before + 1


def test_signed_in_requests_are_checked_too(console: Console) -> None:
    _, cookie = console.login()
    h = {"Cookie": cookie}
    assert console.request("GET", "/fleet?state=online&zzz=1", headers=h)[0] == 400
    assert console.request("GET", "/gateways/..%2Fetc", headers=h)[0] in (400, 404)
    assert console.request("GET", "/readings?start=99999999999999999999", headers=h)[0] == 200
    page = console.request("GET", "/alarms", headers=h)[2]
    token = re.search(r'name="csrf" content="([0-9a-f]+)"', page)
    assert token
    form = {"Content-Type": "application/x-www-form-urlencoded", **h}
    assert console.request("POST", "/alarms/abc/ack", f"csrf={token.group(1)}".encode(),
                           form)[0] == 400
    assert console.request("POST", "/rollouts/nope/pause", f"csrf={token.group(1)}".encode(),
                           form)[0] == 404
    assert console.request("POST", "/rollouts/upload", b"\x00" * 10, {
        "Content-Type": "application/octet-stream", "X-CSRF-Token": token.group(1), **h})[0] == 400
    # no Content-Length at all, on a raw socket
    reply = console.raw(b"POST /alarms/1/ack HTTP/1.1\r\nHost: x\r\nCookie: " + cookie.encode()
                        + b"\r\nConnection: close\r\n"
                        b"Content-Type: application/x-www-form-urlencoded\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411")
    assert console.request("GET", "/fleet", headers=h)[0] == 200  # still serving


def test_logins_are_rate_limited(console: Console) -> None:
    Accounts(console.reg).add_user("mallory", "viewer", PASSWORD, 0)
    for _ in range(5):
        assert console.login("mallory", "wrong password")[0] == 401
    status, cookie = console.login("mallory", PASSWORD)
    assert status == 401 and not cookie.startswith("edge_console=")
    assert console.login("olga")[0] == 303  # another user from the same address still can


def test_https_with_the_enrolment_certificate_options(tmp_path: Path) -> None:
    """--tls-cert/--tls-key as for enrolment: HTTPS, cookies marked Secure, HSTS; a listener
    beyond loopback without them is refused before anything is served."""
    tls = make_tls(tmp_path / "tls")
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    port = free_port()
    args = ["edge_agent.fleet.cli", "console", "--db", db, "--ingest-db",
            str(tmp_path / "ingest.db")]
    with running([*args, "--listen", f"127.0.0.1:{port}", "--tls-cert", str(tls.cert),
                  "--tls-key", str(tls.key)], tmp_path / "console.log",
                 ready="console https://"):
        ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/login")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        assert "Secure" in (r.getheader("set-cookie") or "")
        assert "max-age" in (r.getheader("strict-transport-security") or "")
        conn.close()
    out = subprocess.run([sys.executable, "-m", *args, "--listen", "0.0.0.0:0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "--tls-cert" in out.stderr


# --- The Commands page's POST: a total intake in front of the signing key -------------------

OP_SEED = 1616


class Published:
    """Every message on ``edge/+/cmd/+``: what the console published."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topics: list[str] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda _c, _u, msg: self.topics.append(msg.topic)
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_a: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("edge/+/cmd/+", qos=1)
        self.c.loop_start()
        assert subscribed.wait(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def sending(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Console, Published]]:
    """A console holding an operator key the root delegates, publishing to ``broker``."""
    tmp = tmp_path_factory.mktemp("console-send")
    db = f"sqlite:///{tmp / 'fleet.db'}"
    reg = Registry(db)
    pki, op = Pki.from_seed(OP_SEED), Pki.key(OP_SEED, "operator")
    ops.init_root(reg, [k.public for k in pki.roots], 2, [k.public for k in pki.releases], 2,
                  list(pki.roots), operator_keys=[op.public])
    write_private(tmp / "operator.key", op)
    reg.add_gateway("gw-a", "north", ["lamps"], 0)
    Accounts(reg).add_user("olga", "operator", PASSWORD, 0)
    published = Published(broker.port)
    port = free_port()
    try:
        with running(["edge_agent.fleet.cli", "console", "--db", db, "--ingest-db",
                      str(tmp / "ingest.db"), "--listen", f"127.0.0.1:{port}",
                      "--operator-key", str(tmp / "operator.key"), "--broker", broker.url],
                     tmp / "console.log", ready="console http://"):
            yield Console(port, reg), published
    finally:
        published.close()
        reg.close()


GOOD = {"action": "dim", "value": "40", "lamps": "lamp-1", "target": "gw:gw-a"}
FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(("fields", "raw", "ctype", "status", "key"), [
    ({**GOOD, "zzz": "1"}, None, FORM, 400, "unknown-form-field"),
    (None, b"action=dim&action=plan&csrf=TOKEN", FORM, 400, "repeated-form-field"),
    ({**GOOD, "lamps": "l" * 2000}, None, FORM, 400, "bad-form-value"),
    ({**GOOD, "lamps": "lamp-1\x00"}, None, FORM, 400, "bad-form-value"),
    (None, b"csrf=TOKEN&lamps=\xff\xfe", FORM, 400, "bad-form"),
    (None, b"csrf=TOKEN&lamps=" + b"x" * 20_000, FORM, 413, "too-large"),
    (GOOD, None, "text/plain", 415, "not-form"),
    ({**GOOD, "csrf": "0" * 32}, None, FORM, 403, "csrf"),
    ({**GOOD, "action": "reboot"}, None, FORM, 400, "bad-command"),
    ({**GOOD, "target": "all"}, None, FORM, 400, "bad-command"),
    ({**GOOD, "target": "gw:nobody"}, None, FORM, 400, "bad-command"),
    ({**GOOD, "value": "140"}, None, FORM, 400, "bad-command"),
    ({**GOOD, "value": "\u00b2"}, None, FORM, 400, "bad-command"),
    ({**GOOD, "lamps": ""}, None, FORM, 400, "bad-command"),
    ({**GOOD, "lamps": ",".join(["l"] * 300)}, None, FORM, 400,
     "bad-command"),  # more lamps than a command may name
    ({**GOOD, "for": "2 weeks"}, None, FORM, 400, "bad-command"),
    ({**GOOD, "for": "99999999d"}, None, FORM, 400, "bad-command"),
    ({"action": "plan", "value": "1e3", "device": "signal-1", "target": "gw:gw-a"}, None, FORM,
     400, "bad-command"),
    ({"action": "flash", "value": "maybe", "device": "signal-1", "target": "site:north"}, None,
     FORM, 400, "bad-command"),
])
def test_hostile_command_forms_are_refused_counted_and_publish_nothing(
        sending: tuple[Console, Published], fields: dict[str, str] | None, raw: bytes | None,
        ctype: str, status: int, key: str) -> None:
    console, published = sending
    _, cookie = console.login()
    page = console.request("GET", "/commands", headers={"Cookie": cookie})[2]
    token = re.search(r'name="csrf" content="([0-9a-f]+)"', page)
    assert token and 'id="command-form"' in page
    body = raw.replace(b"TOKEN", token.group(1).encode()) if raw is not None else \
        urllib.parse.urlencode({"csrf": token.group(1), **(fields or {})}).encode()
    before = console.rejected().get(key, 0)
    got, _, text = console.request("POST", "/commands", body,
                                   {"Content-Type": ctype, "Cookie": cookie})
    assert got == status, text
    assert console.rejected().get(key, 0) == before + 1
    assert console.reg.fetchone("SELECT COUNT(*) FROM commands") == (0,)
    assert published.topics == []


def test_a_good_command_form_is_signed_published_and_audited(
        sending: tuple[Console, Published]) -> None:
    console, published = sending
    _, cookie = console.login()
    page = console.request("GET", "/commands", headers={"Cookie": cookie})[2]
    token = re.search(r'name="csrf" content="([0-9a-f]+)"', page)
    assert token
    body = urllib.parse.urlencode({"csrf": token.group(1), **GOOD, "for": "2h"}).encode()
    status, headers, _ = console.request("POST", "/commands", body,
                                         {"Content-Type": FORM, "Cookie": cookie})
    assert status == 303 and headers["location"].startswith("/commands?sent=")
    cid = headers["location"].split("sent=")[1].split("&")[0]
    wait_until(lambda: published.topics, 10, "the published command")
    assert published.topics == [f"edge/gw-a/cmd/{cid}"]
    row = console.reg.fetchone("SELECT action, targets FROM commands WHERE id = ?", (cid,))
    assert row == ("dim", '["gw-a"]')
    audit = Accounts(console.reg).audit_log()[0]
    assert audit[1:4] == ("olga", "command send", cid) and "for=2h" in audit[4]
    page = console.request("GET", "/commands", headers={"Cookie": cookie})[2]
    assert f'data-command="{cid}"' in page and "no answer yet" in page
    published.topics.clear()


def test_without_an_operator_key_the_page_says_how_and_a_post_is_refused(
        console: Console) -> None:
    _, cookie = console.login()
    page = console.request("GET", "/commands", headers={"Cookie": cookie})[2]
    assert 'id="no-key"' in page and "--operator-key" in page and "command-form" not in page
    token = re.search(r'name="csrf" content="([0-9a-f]+)"', page)
    assert token
    body = urllib.parse.urlencode({"csrf": token.group(1), **GOOD}).encode()
    status, _, text = console.request("POST", "/commands", body,
                                      {"Content-Type": FORM, "Cookie": cookie})
    assert status == 503 and "--operator-key" in text


def test_a_key_file_other_users_can_read_is_refused(tmp_path: Path, broker: Mosquitto) -> None:
    key = tmp_path / "operator.key"
    write_private(key, Pki.key(OP_SEED, "operator"))
    key.chmod(0o640)
    base = [sys.executable, "-m", "edge_agent.fleet.cli", "console", "--db",
            f"sqlite:///{tmp_path / 'fleet.db'}", "--ingest-db", str(tmp_path / "i.db"),
            "--listen", "127.0.0.1:0", "--operator-key", str(key)]
    out = subprocess.run([*base, "--broker", broker.url], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode != 0 and "chmod 600" in out.stderr and "0640" in out.stderr
    key.chmod(0o600)
    out = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "needs --broker" in out.stderr


def test_a_broker_it_cannot_reach_is_a_502_with_nothing_stored(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    pki, op = Pki.from_seed(OP_SEED), Pki.key(OP_SEED, "operator")
    ops.init_root(reg, [k.public for k in pki.roots], 2, [k.public for k in pki.releases], 2,
                  list(pki.roots), operator_keys=[op.public])
    write_private(tmp_path / "operator.key", op)
    reg.add_gateway("gw-a", "north", [], 0)
    Accounts(reg).add_user("olga", "operator", PASSWORD, 0)
    port = free_port()
    try:
        with running(["edge_agent.fleet.cli", "console", "--db", db, "--ingest-db",
                      str(tmp_path / "ingest.db"), "--listen", f"127.0.0.1:{port}",
                      "--operator-key", str(tmp_path / "operator.key"), "--broker",
                      f"mqtt://127.0.0.1:{free_port()}"], tmp_path / "console.log",
                     ready="console http://"):
            console = Console(port, reg)
            _, cookie = console.login()
            page = console.request("GET", "/commands", headers={"Cookie": cookie})[2]
            token = re.search(r'name="csrf" content="([0-9a-f]+)"', page)
            assert token
            body = urllib.parse.urlencode({"csrf": token.group(1), **GOOD}).encode()
            status, _, text = console.request("POST", "/commands", body,
                                              {"Content-Type": FORM, "Cookie": cookie})
            assert status == 502 and "did not take it" in text
            assert console.rejected().get("broker") == 1
            assert reg.fetchone("SELECT COUNT(*) FROM commands") == (0,)
    finally:
        reg.close()
