"""The enrolment endpoint's intake is total (issue "nothing stops silently", deliverable 1).

Head parsing and body rules are checked as functions; then the real endpoint (FleetService's,
over TLS with a throw-away CA, in a thread of this process) gets hostile requests, a slow
client, clients that never finish the TLS handshake and more connections than it takes: each
is answered 4xx with a reason (or cut), counted, and a genuine enrolment succeeds afterwards.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.fleet import actions as ops
from edge_agent.fleet.httpd import (
    HttpLimits,
    Refused,
    body_length,
    parse_body,
    parse_head,
    server_tls_context,
)
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.bundle import root_fingerprint
from edge_agent.tools.enroll import enroll_main
from tests.support.fleetkit import EnrolmentEndpoint, Pki
from tests.support.tlskit import TlsFiles, make_tls

SEED = 31
print(f"test_fleet_httpd: key seed {SEED}")
LIMITS = HttpLimits()
FAST = HttpLimits(read_timeout_s=1.0, max_connections=4)


def refused(fn: object, *args: object) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


# ------------------------------------------------------------------ the rules, as functions

def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_a_well_formed_head_is_parsed() -> None:
    method, target, version, headers = parse_head(
        head(b"POST /v1/enroll?x=1 HTTP/1.1", b"Host: fleet", b"Content-Length:  12 ",
             b"X-A: 1", b"x-a: 2"), LIMITS)
    assert (method, target, version) == ("POST", "/v1/enroll?x=1", "HTTP/1.1")
    assert headers == {"host": "fleet", "content-length": "12", "x-a": "1, 2"}


@pytest.mark.parametrize(("raw", "key"), [
    (head(b"POST /v1/enroll"), "bad-request-line"),
    (head(b"POST  /v1/enroll HTTP/1.1", b"Host: f"), "bad-request-line"),
    (head(b"P\x00ST /v1/enroll HTTP/1.1", b"Host: f"), "bad-method"),
    (head(b"POST * HTTP/1.1", b"Host: f"), "bad-target"),
    (head(b"POST http://evil/v1/enroll HTTP/1.1", b"Host: f"), "bad-target"),
    (head(b"POST /v1/\xff HTTP/1.1", b"Host: f"), "bad-target"),
    (head(b"POST /" + b"a" * 3000 + b" HTTP/1.1", b"Host: f"), "line-too-long"),
    (head(b"POST /v1/enroll HTTP/2.0", b"Host: f"), "bad-version"),
    (head(b"POST /v1/enroll HTTP/1.1"), "no-host"),
    (head(b"POST /v1/enroll HTTP/1.1", b"Host: f", b"Content-Length : 5"), "bad-header"),
    (head(b"POST /v1/enroll HTTP/1.1", b"Host: f", b" folded: yes"), "bad-header"),
    (head(b"POST /v1/enroll HTTP/1.1", b"Host: f", b"no colon"), "bad-header"),
    (head(b"POST /v1/enroll HTTP/1.1", b"Host: f", b"X: a\x01b"), "bad-header"),
    (head(b"POST /v1/enroll HTTP/1.1", b"Host: f", b"Content-Length: 5",
          b"Content-Length: 6"), "repeated-header"),
    (head(b"POST /v1/enroll HTTP/1.1", b"Host: f", *[b"X: y"] * 40), "too-many-headers"),
])
def test_a_malformed_head_is_refused_with_a_reason(raw: bytes, key: str) -> None:
    refusal = refused(parse_head, raw, LIMITS)
    assert refusal.status == 400 and refusal.key == key, refusal
    assert refusal.reason


@pytest.mark.parametrize(("method", "headers", "status", "key"), [
    ("POST", {}, 411, "no-length"),
    ("POST", {"content-length": "0"}, 400, "no-body"),
    ("POST", {"content-length": "99999999999"}, 413, "too-large"),
    ("POST", {"content-length": str(64 * 1024 + 1)}, 413, "too-large"),
    ("POST", {"content-length": "+5"}, 400, "bad-length"),
    ("POST", {"content-length": "1_0"}, 400, "bad-length"),
    ("POST", {"content-length": "\u00b2"}, 400, "bad-length"),  # str.isdigit says yes
    ("POST", {"content-length": "-1"}, 400, "bad-length"),
    ("POST", {"content-length": "5", "transfer-encoding": "chunked"}, 400, "transfer-encoding"),
    ("POST", {"content-length": "5"}, 415, "not-json"),
    ("POST", {"content-length": "5", "content-type": "text/plain"}, 415, "not-json"),
    ("POST", {"content-length": "5", "content-type": "application/json; charset=latin-1"},
     415, "not-json"),
    ("GET", {"content-length": "5"}, 400, "unexpected-body"),
])
def test_body_rules(method: str, headers: dict[str, str], status: int, key: str) -> None:
    refusal = refused(body_length, method, headers, LIMITS)
    assert (refusal.status, refusal.key) == (status, key), refusal


def test_a_declared_json_body_is_accepted() -> None:
    assert body_length("POST", {"content-length": "20",
                                "content-type": "application/json; charset=UTF-8"}, LIMITS) == 20
    assert body_length("GET", {}, LIMITS) == 0


@pytest.mark.parametrize(("raw", "words"), [
    (b"{token: nope", "not valid JSON"),
    (b'{"token": "\xff"}', "not UTF-8"),
    (b'{"token": "\\ud800"}', "lone surrogate"),
    (b'{"token":' + b"[" * 50 + b"]" * 50 + b"}", "nesting deeper"),
    (b'{"token": "a", "token": "b"}', "repeats a key"),
    (b'{"token": NaN}', "NaN"),
    (b'{"token": "' + b"a" * 2000 + b'"}', "the limit is 1024"),
])
def test_a_body_is_strict_json(raw: bytes, words: str) -> None:
    refusal = refused(parse_body, raw, LIMITS)
    assert refusal.status == 400 and refusal.key == "bad-json" and words in refusal.reason


# ------------------------------------------------------------------ the running endpoint

@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def fleet_db(tmp_path: Path) -> Iterator[tuple[Registry, str]]:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    Pki.from_seed(SEED).init(reg)
    yield reg, db
    reg.close()


def client_ctx(tls: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca_cert))


def connect(port: int, tls: TlsFiles | None, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    if tls is None:
        return sock
    return client_ctx(tls).wrap_socket(sock, server_hostname="localhost")


def read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, ssl.SSLError):
        pass  # the server may close without a TLS close_notify once it has answered
    return b"".join(chunks)


def exchange(port: int, raw: bytes, tls: TlsFiles | None) -> bytes:
    with connect(port, tls) as sock:
        sock.sendall(raw)
        if tls is None:
            sock.shutdown(socket.SHUT_WR)  # TLS has no half-close: there, EOF means gone
        return read_all(sock)


def status_of(answer: bytes) -> int | None:
    parts = answer.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) >= 2 and parts[0] == b"HTTP/1.1" else None


def error_of(answer: bytes) -> str:
    doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return str(doc["error"])


def post(body: bytes, *, length: bytes | None = None, path: bytes = b"/v1/enroll",
         method: bytes = b"POST", extra: bytes = b"") -> bytes:
    cl = str(len(body)).encode() if length is None else length
    return (method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
            b"application/json\r\n" + extra + b"Content-Length: " + cl + b"\r\n\r\n" + body)


def genuine(reg: Registry, ep: EnrolmentEndpoint, tmp_path: Path, tls: TlsFiles | None,
            gw: str) -> None:
    """A real ``edge-agent enroll`` against the endpoint succeeds and writes its files."""
    token = ops.issue_token(reg, gw, "north", [])
    args = ["--fleet", ep.url, "--token", token, "--state-dir", str(tmp_path / gw),
            "--root-sha256", root_fingerprint(reg.latest_root())]
    args += ["--ca-file", str(tls.ca_cert)] if tls is not None else ["--insecure-http"]
    assert enroll_main(args) == 0
    assert (tmp_path / gw / "trust.json").exists()


HOSTILE: dict[str, tuple[bytes, int, str]] = {
    "huge-content-length": (post(b"", length=b"1000000000"), 413, "too-large"),
    "body-over-64-KiB": (post(b'{"token": "' + b"a" * 70_000 + b'"}'), 413, "too-large"),
    "no-content-length": (b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\n\r\n", 411, "no-length"),
    "missing-body": (post(b""), 400, "no-body"),
    "bad-json": (post(b"{token: nope"), 400, "bad-json"),
    "lone-surrogate": (post(b'{"token": "\\ud800"}'), 400, "bad-json"),
    "not-utf8": (post(b'{"token": "\xff\xfe"}'), 400, "bad-json"),
    "deep-nesting": (post(b'{"token":' + b"[" * 2000 + b"]" * 2000 + b"}"), 400, "bad-json"),
    "chunked": (post(b"5\r\n{}...", extra=b"Transfer-Encoding: chunked\r\n"), 400,
                "transfer-encoding"),
    "head-over-8-KiB": (post(b"{}", extra=b"X-Pad: " + b"p" * 9000 + b"\r\n"), 400,
                        "head-too-long"),
    "bad-request-line": (b"POST /v1/enroll\r\n\r\n", 400, "bad-request-line"),
    "wrong-method": (post(b"", method=b"GET"), 405, "wrong-method"),
    "wrong-path": (post(b'{"token": "t"}', path=b"/v1/enrol/../../etc"), 404, "no-path"),
    "unknown-expect": (post(b'{"token": "t"}', extra=b"Expect: magic\r\n"), 417, "bad-expect"),
}


def test_hostile_requests_are_answered_counted_and_enrolment_goes_on(
        tmp_path: Path, tls: TlsFiles, fleet_db: tuple[Registry, str]) -> None:
    reg, db = fleet_db
    with EnrolmentEndpoint(db, tls=server_tls_context(tls.cert, tls.key)) as ep:
        for case, (raw, status, key) in HOSTILE.items():
            answer = exchange(ep.port, raw, tls)
            assert status_of(answer) == status, f"{case}: {answer[:300]!r}"
            assert error_of(answer), case
            assert ep.stats.refused[key] >= 1, (case, ep.stats.snapshot())
        assert "Allow: POST" in exchange(ep.port, HOSTILE["wrong-method"][0], tls).decode()
        # Well-formed JSON that is not a token request: the handler's 400 and 403.
        for body, status in ((b'["token"]', 400), (b'{"token": ["t"]}', 400),
                             (b'{"token": "t", "extra": 1}', 400),
                             (b'{"token": "' + b"a" * 300 + b'"}', 400),
                             (b'{"token": "made-up"}', 403)):
            assert status_of(exchange(ep.port, post(body), tls)) == status, body
        refusals = sum(ep.stats.refused.values())
        assert refusals >= len(HOSTILE), ep.stats.snapshot()
        genuine(reg, ep, tmp_path, tls, "gw-after-hostile")
        assert ep.stats.answered[200] == 1


def test_plain_http_endpoint_has_the_same_intake(tmp_path: Path,
                                                 fleet_db: tuple[Registry, str]) -> None:
    reg, db = fleet_db
    with EnrolmentEndpoint(db, insecure=True) as ep:
        for case in ("huge-content-length", "lone-surrogate", "missing-body", "bad-json"):
            raw, status, _ = HOSTILE[case]
            assert status_of(exchange(ep.port, raw, None)) == status, case
        # Over plain TCP a client can end its side early; over TLS that is the slow client.
        answer = exchange(ep.port, post(b'{"tok', length=b"400"), None)
        assert status_of(answer) == 400 and "ended after 5 of 400" in error_of(answer)
        assert exchange(ep.port, b"", None) == b""  # connected and left: nothing to answer
        assert ep.stats.cut["empty"] == 1, ep.stats.snapshot()
        genuine(reg, ep, tmp_path, None, "gw-plain")


def test_a_slow_client_is_cut_at_the_deadline_and_does_not_hold_the_endpoint(
        tmp_path: Path, tls: TlsFiles, fleet_db: tuple[Registry, str]) -> None:
    reg, db = fleet_db
    with EnrolmentEndpoint(db, tls=server_tls_context(tls.cert, tls.key), limits=FAST) as ep:
        answers: list[bytes] = []
        took: list[float] = []

        def slowloris() -> None:
            with connect(ep.port, tls) as sock:
                t0 = time.monotonic()
                sock.sendall(b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\n")
                try:
                    for _ in range(40):  # a header byte every 0.2 s: 8 s if never cut
                        sock.sendall(b"X")
                        time.sleep(0.2)
                except OSError:
                    pass  # the server closed the connection: what is wanted
                answers.append(read_all(sock))
                took.append(time.monotonic() - t0)

        slow = threading.Thread(target=slowloris)
        slow.start()
        time.sleep(0.2)
        genuine(reg, ep, tmp_path, tls, "gw-beside-slowloris")  # served meanwhile
        slow.join(20)
        assert not slow.is_alive()
        assert took[0] < FAST.read_timeout_s + 3, took
        assert status_of(answers[0]) == 408, answers
        assert ep.stats.refused["timeout"] == 1, ep.stats.snapshot()


def test_no_tls_handshake_plain_talk_and_too_many_connections_are_cut(
        tmp_path: Path, tls: TlsFiles, fleet_db: tuple[Registry, str]) -> None:
    reg, db = fleet_db
    with EnrolmentEndpoint(db, tls=server_tls_context(tls.cert, tls.key), limits=FAST) as ep:
        # Plain HTTP spoken to the TLS port: the handshake fails, the endpoint stays.
        plain = exchange(ep.port, post(b'{"token": "t"}'), None)
        assert status_of(plain) is None
        # Connections that never start the handshake, more than the endpoint takes at once.
        idle = [socket.create_connection(("127.0.0.1", ep.port), timeout=10)
                for _ in range(FAST.max_connections)]
        try:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as extra:
                assert read_all(extra) == b""  # closed at once: "busy"
            deadline = time.monotonic() + FAST.read_timeout_s + 5
            for sock in idle:  # each is cut when the request deadline passes
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                assert read_all(sock) == b""
        finally:
            for sock in idle:
                sock.close()
        snap = ep.stats.snapshot()
        assert snap["cut"].get("busy", 0) >= 1, snap
        assert snap["cut"].get("tls-timeout", 0) >= FAST.max_connections, snap
        assert snap["cut"].get("tls-failed", 0) >= 1, snap
        genuine(reg, ep, tmp_path, tls, "gw-after-idle")
