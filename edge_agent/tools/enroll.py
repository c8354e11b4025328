"""``edge-agent enroll --fleet https://... --token-file F --root-sha256 FP``: exchange a
single-use token for an identity.

The token is read from ``--token-file`` (``-`` for standard input). ``--token T`` still works
but warns: a command line is readable by every user in ``ps`` and ``/proc/PID/cmdline`` while
the enrolment runs, and stays in shell history.

The fleet's enrolment endpoint answers with the gateway id, site, tags, broker credentials and
the current root metadata. Two things make that answer trustworthy, and both are required by
default. The channel: the URL must be ``https://``, and the fleet's certificate must chain to
``--ca-file`` (or, without it, the system's CA store) and name the URL's host; the token and
the broker password never cross the network in clear, and no one on the path can answer in
the fleet's place. The root: it must be self-consistent (a threshold of its own root keys
signed it) and exactly the root whose fingerprint the operator printed with ``edge-fleet root
show`` (``--root-sha256``), so even a fleet certificate obtained by an attacker cannot pin a
root of the attacker's. ``--insecure-http`` (an ``http://`` URL) and ``--trust-first-use``
(pin whatever root is answered) waive these, each by name and with a warning.

The answer's gateway id, site and tags are checked with the one id rule
(``edge_agent.protocol.ids``) before anything is written: the id becomes a file's content, a
broker user name, a topic level and a client id. Everything is written 0600, atomically:
``identity.json`` (id, site, tags, broker URL and credentials), ``mqtt.password`` (for a site
config's ``password_file``) and ``trust.json`` (the pinned root; version floors start at 0).
Nothing is written unless every check passed. A gateway that is already enrolled is not
re-enrolled without ``--force`` (checked before the token is spent): re-enrolling resets its
version floors, which must be a deliberate act.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.control.truststore import TRUST_FILE, save_trust
from edge_agent.protocol.bundle import root_fingerprint
from edge_agent.protocol.errors import CommandError, ConfigError, EdgeError, VerificationError
from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.ids import check_gateway_id, check_site, check_tag
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict
from edge_agent.protocol.shell import cli_command
from edge_agent.protocol.tomlcheck import read_regular_file
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import check_self_signed_root

PROG = "edge-agent enroll"
IDENTITY_FILE = "identity.json"
PASSWORD_FILE = "mqtt.password"
MAX_ANSWER = 1 << 20
MAX_TOKEN = 4096  # bytes of a token file; the fleet's tokens are 43 characters
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def check_root(root: Any) -> dict[str, Any]:
    """A root envelope that a threshold of its own root keys signed; VerificationError if not."""
    if not isinstance(root, dict):
        raise VerificationError("enrolment answer has no root metadata")
    return check_self_signed_root(root, "the fleet's root")


def check_fingerprint(value: str) -> str:
    """``value`` as 64 lower-case hex digits (what ``edge-fleet root show`` prints)."""
    fp = value.strip().lower()
    if not _FINGERPRINT.fullmatch(fp):
        raise CommandError(f"--root-sha256 {value!r}: expected the 64 hex digits "
                           "`edge-fleet root show` prints")
    return fp


def client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A TLS (>= 1.2) client context that verifies the server's certificate and host name
    against ``ca_file``'s CA certificates, or the system store if None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is None:
        ctx.load_default_certs()
    else:
        pem = ca_file.read_text(errors="replace")  # an OSError names the file
        # Checked first: create_default_context(cadata="") would quietly use the system store.
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise ConfigError(f"--ca-file {ca_file}: holds no PEM CA certificate")
        try:
            ctx.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            raise ConfigError(f"--ca-file {ca_file}: not a PEM CA certificate "
                              f"({exc.reason or exc})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def fleet_endpoint(fleet_url: str, *, ca_file: Path | None = None,
                   insecure_http: bool = False) -> tuple[str, ssl.SSLContext | None]:
    """The enrolment URL and the TLS context to reach it with (None: plain HTTP, which only
    ``insecure_http`` allows); CommandError for any other URL."""
    try:
        parts = urlsplit(fleet_url.strip())
        host = parts.hostname
        _ = parts.port  # a port that is not a number raises here, not at connect time
    except ValueError as exc:
        raise CommandError(f"--fleet {fleet_url!r}: not a URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise CommandError(f"--fleet {fleet_url!r}: expected https://HOST:PORT")
    if parts.username is not None or parts.password is not None:
        raise CommandError("--fleet: credentials do not go in the URL")
    url = fleet_url.strip().rstrip("/")
    url = url if parts.path.rstrip("/").endswith("/v1/enroll") else url + "/v1/enroll"
    if parts.scheme == "https":
        return url, client_tls_context(ca_file)
    if not insecure_http:
        raise CommandError(f"--fleet {fleet_url}: refusing plain HTTP: the token and the "
                           "broker password would cross the network in clear and anyone on "
                           "the path could answer; use https:// (with --ca-file), or "
                           "--insecure-http to accept that")
    if ca_file is not None:
        raise CommandError("--ca-file is for an https:// --fleet URL")
    return url, None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: one could lead the token to another host or to plain HTTP."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        return None


def _reason(exc: urllib.error.HTTPError) -> str:
    """The fleet's ``error`` text of a refusal, bounded and printable."""
    try:
        doc = loads_strict(exc.read(4096), max_bytes=4096, max_depth=4, max_items=32,
                           max_str=1024)
    except (UnsafeJsonError, OSError, http.client.HTTPException):
        return ""
    text = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(text, str):
        return ""
    return "".join(c if c.isprintable() else "?" for c in text[:300])


def request_enrolment(url: str, tls: ssl.SSLContext | None, token: str,
                      timeout_s: float = 10.0) -> dict[str, Any]:
    """POST the token to the enrolment ``url`` (from fleet_endpoint); the answer; EdgeError
    with the reason (the fleet's, or the TLS check's) if there is none."""
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, data=json.dumps({"token": token}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            raw = resp.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise EdgeError(f"{url}: the fleet answered a redirect ({exc.code}), which is not "
                            "followed; give the enrolment URL itself") from None
        raise EdgeError(f"{url}: enrolment refused ({exc.code}): {_reason(exc)}") from None
    except urllib.error.URLError as exc:
        why = exc.reason
        if isinstance(why, ssl.SSLCertVerificationError):
            raise EdgeError(f"{url}: the fleet's TLS certificate is not trusted: "
                            f"{why.verify_message}; check --ca-file (the CA that issued the "
                            "fleet's certificate) and that the URL's host is named in the "
                            "certificate") from None
        if isinstance(why, ssl.SSLError):
            raise EdgeError(f"{url}: TLS with the fleet failed: {why.reason or why}") from None
        raise EdgeError(f"{url}: cannot reach the fleet: {why}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise EdgeError(f"{url}: cannot reach the fleet: {exc!r}") from None
    if len(raw) > MAX_ANSWER:
        raise EdgeError(f"{url}: answer over {MAX_ANSWER} bytes")
    try:
        answer = loads_strict(raw, max_bytes=MAX_ANSWER, max_depth=10, max_items=1024,
                              max_str=4096)
    except UnsafeJsonError as exc:
        raise EdgeError(f"{url}: answer refused at {exc.path}: {exc.problem}") from None
    if not isinstance(answer, dict):
        raise EdgeError(f"{url}: answer is not a JSON object")
    return answer


def check_not_enrolled(state_dir: Path, force: bool) -> None:
    """ConfigError if ``state_dir`` holds an enrolment and ``force`` is not given."""
    if (state_dir / TRUST_FILE).exists() and not force:
        raise ConfigError(f"{state_dir}: this gateway is already enrolled (use --force to "
                          "re-enrol; that resets its version floors)")


def write_enrolment(state_dir: Path, answer: dict[str, Any], *, root_sha256: str | None,
                    trust_first_use: bool = False, force: bool = False) -> TrustedState:
    """Check the answer (root pinned by ``root_sha256``, or by ``trust_first_use`` only) and
    write identity, password and trust files (0600); nothing is written if a check fails."""
    check_not_enrolled(state_dir, force)
    if root_sha256 is None and not trust_first_use:
        raise ConfigError("the fleet's root fingerprint (--root-sha256) is needed to pin it")
    root = check_root(answer.get("root"))
    if root_sha256 is not None and root_fingerprint(root) != root_sha256.strip().lower():
        raise VerificationError(f"the fleet's root has fingerprint {root_fingerprint(root)}, "
                                f"expected {root_sha256}: not the fleet's root, nothing written")
    try:
        mqtt = answer["mqtt"]
        trust = TrustedState(gateway_id=check_gateway_id(answer["gateway_id"]),
                             site=check_site(answer["site"]),
                             tags=tuple(check_tag(t) for t in answer["tags"]), root=root)
        identity: dict[str, Any] = {"gateway_id": trust.gateway_id, "site": trust.site,
                    "tags": list(trust.tags),
                    "mqtt": {k: str(mqtt[k]) for k in ("url", "username", "password",
                                                       "topic_prefix")}}
    except (KeyError, TypeError) as exc:
        raise EdgeError(f"enrolment answer is missing {exc}") from exc
    except ValueError as exc:  # an id, site or tag outside the id rule
        raise EdgeError(f"enrolment answer refused, nothing written: {exc}") from None
    # The state dir holds credentials and the pinned root: nobody else may even list it.
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    atomic_write(state_dir / PASSWORD_FILE, identity["mqtt"]["password"].encode() + b"\n")
    atomic_write(state_dir / IDENTITY_FILE, json.dumps(identity, indent=1).encode())
    save_trust(state_dir, trust)
    return trust


def _warn(text: str) -> None:
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``edge-agent enroll``."""
    ap = argparse.ArgumentParser(prog=PROG, description="Enrol this gateway with the fleet.")
    ap.add_argument("--fleet", required=True, metavar="URL",
                    help="the fleet's enrolment URL, https://HOST:PORT")
    token = ap.add_mutually_exclusive_group(required=True)
    token.add_argument("--token-file", type=Path, metavar="FILE",
                       help="file holding the single-use enrolment token ('-': standard input)")
    token.add_argument("--token", help="the token itself: visible in ps and shell history, "
                                       "prefer --token-file")
    ap.add_argument("--state-dir", type=Path, default=Path("/var/lib/edge-agent"))
    ap.add_argument("--ca-file", type=Path, metavar="FILE",
                    help="PEM CA certificate(s) the fleet's certificate must chain to "
                         "(default: the system's CA store)")
    pin = ap.add_mutually_exclusive_group()
    pin.add_argument("--root-sha256", metavar="FP",
                     help="the root fingerprint `edge-fleet root show` prints (required)")
    pin.add_argument("--trust-first-use", action="store_true",
                     help="pin whatever root the fleet answers with, without --root-sha256: "
                          "an active attacker on the path could pin its own root")
    ap.add_argument("--insecure-http", action="store_true",
                    help="allow an http:// --fleet URL: the token and the broker password "
                         "cross the network in clear")
    ap.add_argument("--force", action="store_true", help="re-enrol an enrolled gateway")
    return ap


def _joined_token(argv: list[str]) -> list[str]:
    """``argv`` with ``--token T`` as ``--token=T``: a token may begin with "-" (one in 64
    does), which argparse would otherwise take for an option."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--token" and out[i + 1].startswith("-"):
            out[i:i + 2] = [f"--token={out[i + 1]}"]
            break
    return out


def read_token(path: Path) -> str:
    """The token in ``path`` (``-``: standard input): one line, stripped; CommandError if the
    file is empty, holds more than one line or more than MAX_TOKEN bytes."""
    raw = sys.stdin.buffer.read(MAX_TOKEN + 1) if str(path) == "-" \
        else read_regular_file(path, MAX_TOKEN)
    if len(raw) > MAX_TOKEN:
        raise CommandError(f"--token-file {path}: over {MAX_TOKEN} bytes; a token is one line")
    try:
        lines = raw.decode().strip().splitlines()
    except UnicodeDecodeError:
        raise CommandError(f"--token-file {path}: not UTF-8 text") from None
    if len(lines) != 1 or not lines[0].strip():
        raise CommandError(f"--token-file {path}: expected the token on one line, found "
                           f"{len(lines)} lines")
    return lines[0].strip()


@cli_command(PROG)
def enroll_main(argv: list[str]) -> int:
    """``edge-agent enroll``: 0 on success, 2 with a reason on stderr otherwise."""
    args = build_parser().parse_args(_joined_token(argv))
    # Every check that needs no network comes first: a refusal spends no token.
    if args.root_sha256 is None and not args.trust_first_use:
        raise CommandError("--root-sha256 FP is required: the fingerprint `edge-fleet root "
                           "show` prints, compared out of band; or --trust-first-use to pin "
                           "whatever root the fleet answers with")
    fp = check_fingerprint(args.root_sha256) if args.root_sha256 is not None else None
    token: str = read_token(args.token_file) if args.token_file is not None else args.token
    url, tls = fleet_endpoint(args.fleet, ca_file=args.ca_file,
                              insecure_http=args.insecure_http)
    check_not_enrolled(args.state_dir, args.force)
    if tls is None:
        _warn("plain HTTP (--insecure-http): the token and the broker password cross the "
              "network in clear, and anyone on the path can answer in the fleet's place")
    if fp is None:
        _warn("--trust-first-use: the root is pinned without a fingerprint check; an active "
              "attacker on the path could pin its own root, and with it control this gateway")
    if args.token is not None:
        _warn("--token: the token is visible to every user in ps (and stays in shell history) "
              "until it is spent; use --token-file FILE (or - for standard input)")
    answer = request_enrolment(url, tls, token)
    trust = write_enrolment(args.state_dir, answer, root_sha256=fp,
                            trust_first_use=args.trust_first_use, force=args.force)
    print(f"enrolled as {trust.gateway_id} (site {trust.site}, tags {list(trust.tags)}); "
          f"root v{trust.root_version} pinned; files in {args.state_dir}")
    return 0
