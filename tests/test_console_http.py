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
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.fleet.console.accounts import Accounts
from edge_agent.fleet.registry import Registry
from tests.support.brokers import free_port
from tests.support.fleetkit import running
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
