"""Console accounts: scrypt password hashes, signed session cookies, CSRF tokens, the login
rate limit and the audit log, all kept in the registry's database.

A session is a cookie the console signs with HMAC-SHA256 under a key stored once in the
database, so any instance behind a load balancer accepts a session another one issued; the
user's role is read from the database on every request, so disabling a user or changing a
role takes effect at once. A CSRF token is an HMAC of the session's random id: a page embeds
it and every state-changing request must send it back (form field or X-CSRF-Token header).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from edge_agent.fleet.console.schema import ensure
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict

ROLES = ("viewer", "operator")
NAME_RE = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
# scrypt at n=2^14, r=8, p=1 (RFC 7914 section 2's interactive-login parameters): 16 MiB and
# some tens of milliseconds per attempt, which the login rate limit multiplies out of reach.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
MIN_PASSWORD, MAX_PASSWORD = 8, 256
SESSION_MAX_AGE_S = 12 * 3600
MAX_COOKIE = 512
LOGIN_WINDOW_MS = 5 * 60 * 1000
LOGIN_MAX_PER_USER = 5      # failures per user name per window
LOGIN_MAX_PER_ADDRESS = 20  # failures per client address per window


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A self-describing scrypt hash: scrypt$n$r$p$salt$hash (hex)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=SCRYPT_LEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash from ``hash_password`` (constant-time compare)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, want = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want),
                             maxmem=256 * 1024 * 1024)
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


# Compared against when the user does not exist, so a login takes as long either way.
_DUMMY_HASH = hash_password("not a password", b"\0" * 16)


def check_name(name: str) -> str:
    """A user name (lower-case letters, digits, _ . -; 1..32); ConfigError if not."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"user name {name[:40]!r}: 1 to 32 of a-z 0-9 _ . - starting with a "
                          "letter")
    return name


def check_new_password(password: str) -> str:
    """A password a user may set; ConfigError if too short or too long."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ConfigError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in user as a request sees them."""

    user: str
    role: str
    sid: str
    csrf: str

    @property
    def operator(self) -> bool:
        """Whether this user may change anything (pause, resume, abort, acknowledge, start)."""
        return self.role == "operator"


class Accounts:
    """Users, sessions, CSRF, login limits and the audit log over the registry's database."""

    def __init__(self, registry: Registry) -> None:
        self.db = registry
        ensure(registry)
        registry.execute("INSERT INTO console_secrets (name, value) VALUES ('session', ?) "
                         "ON CONFLICT (name) DO NOTHING", (secrets.token_hex(32),))
        row = registry.fetchone("SELECT value FROM console_secrets WHERE name = 'session'")
        assert row is not None
        self._key = bytes.fromhex(str(row[0]))

    # ------------------------------------------------------------------ users

    def add_user(self, name: str, role: str, password: str, now_ms: int) -> None:
        """Create a user or replace its role and password."""
        check_name(name)
        if role not in ROLES:
            raise ConfigError(f"role {role!r}: expected one of {ROLES}")
        check_new_password(password)
        self.db.execute("INSERT INTO console_users (name, role, password_hash, created_ms) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET role = "
                        "excluded.role, password_hash = excluded.password_hash, disabled = 0",
                        (name, role, hash_password(password), now_ms))

    def role_of(self, name: str) -> str | None:
        """The role of an enabled user, or None."""
        row = self.db.fetchone("SELECT role FROM console_users WHERE name = ? AND disabled = 0",
                               (name,))
        return None if row is None or row[0] not in ROLES else str(row[0])

    def users(self) -> list[tuple[str, str]]:
        """(name, role) of every enabled user."""
        return [(str(n), str(r)) for n, r in self.db.fetchall(
            "SELECT name, role FROM console_users WHERE disabled = 0 ORDER BY name")]

    # ------------------------------------------------------------------ login

    def _limited(self, key: str, limit: int, now_ms: int) -> bool:
        row = self.db.fetchone("SELECT window_ms, failures FROM console_logins WHERE key = ?",
                               (key,))
        return row is not None and now_ms - int(row[0]) < LOGIN_WINDOW_MS and int(row[1]) >= limit

    def _failed(self, key: str, now_ms: int) -> None:
        # A window older than LOGIN_WINDOW_MS starts again at one failure.
        self.db.execute(
            "INSERT INTO console_logins (key, window_ms, failures) VALUES (?, ?, 1) "
            "ON CONFLICT (key) DO UPDATE SET failures = CASE WHEN ? - console_logins.window_ms "
            "< ? THEN console_logins.failures + 1 ELSE 1 END, window_ms = CASE WHEN ? - "
            "console_logins.window_ms < ? THEN console_logins.window_ms ELSE ? END",
            (key, now_ms, now_ms, LOGIN_WINDOW_MS, now_ms, LOGIN_WINDOW_MS, now_ms))

    def login(self, name: str, password: str, address: str, now_ms: int) -> tuple[str, str]:
        """(cookie value, message): the cookie is empty when refused; the message says why."""
        keys = ((f"user:{name[:64]}", LOGIN_MAX_PER_USER),
                (f"addr:{address[:64]}", LOGIN_MAX_PER_ADDRESS))
        if any(self._limited(k, limit, now_ms) for k, limit in keys):
            return "", "too many failed logins: wait a few minutes"
        row = self.db.fetchone("SELECT password_hash, role FROM console_users WHERE name = ? "
                               "AND disabled = 0", (name,)) if NAME_RE.fullmatch(name) else None
        ok = check_password(password, str(row[0]) if row else _DUMMY_HASH) and row is not None
        if not ok:
            for k, _ in keys:
                self._failed(k, now_ms)
            return "", "wrong user name or password"
        self.db.execute("DELETE FROM console_logins WHERE key = ?", (keys[0][0],))
        return self.issue(name, now_ms), f"signed in as {name}"

    def issue(self, name: str, now_ms: int) -> str:
        """A signed session cookie for ``name``."""
        body = _b64(json.dumps({"u": name, "iat": now_ms, "sid": secrets.token_hex(16)},
                               separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(body))}"

    def _mac(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode(), hashlib.sha256).digest()

    def session(self, cookie: str | None, now_ms: int) -> Session | None:
        """The session a cookie carries if it is ours, unexpired and its user still enabled."""
        if not cookie or len(cookie) > MAX_COOKIE or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body)):
                return None
            doc = loads_strict(_unb64(body), max_bytes=MAX_COOKIE, max_depth=2, max_items=8,
                               max_str=64)
        except (ValueError, UnsafeJsonError):
            return None
        if not isinstance(doc, dict):
            return None
        user, iat, sid = doc.get("u"), doc.get("iat"), doc.get("sid")
        if not (isinstance(user, str) and type(iat) is int and isinstance(sid, str)):
            return None
        if not 0 <= now_ms - iat <= SESSION_MAX_AGE_S * 1000:
            return None
        role = self.role_of(user)
        if role is None:
            return None
        return Session(user, role, sid, self.csrf_for(sid))

    def csrf_for(self, nonce: str) -> str:
        """The CSRF token bound to a session id (or to a login page's nonce)."""
        return self._mac(f"csrf:{nonce}").hex()[:32]

    def csrf_ok(self, nonce: str, token: str | None) -> bool:
        """Whether ``token`` is the CSRF token of ``nonce``."""
        return bool(token) and hmac.compare_digest(self.csrf_for(nonce), str(token)[:64])

    # ------------------------------------------------------------------ audit

    def audit(self, actor: str, action: str, target: str, detail: str, now_ms: int) -> None:
        """Record an operator action."""
        self.db.execute("INSERT INTO console_audit (ts_ms, actor, action, target, detail) "
                        "VALUES (?, ?, ?, ?, ?)", (now_ms, actor, action, target[:200],
                                                   detail[:500]))

    def audit_log(self, limit: int = 100) -> list[tuple[int, str, str, str, str]]:
        """The newest audit entries: (ts_ms, actor, action, target, detail)."""
        return [(int(t), str(a), str(c), str(g), str(d)) for t, a, c, g, d in self.db.fetchall(
            "SELECT ts_ms, actor, action, target, detail FROM console_audit "
            "ORDER BY id DESC LIMIT ?", (limit,))]
