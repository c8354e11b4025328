"""Ed25519 keys: generate, save (private 0600), load, key ids, sign and verify raw bytes.

A key id is the SHA-256 of the raw 32-byte public key, in hex: the verifier recomputes it from
the key itself, so one key cannot be listed (and counted) under two ids.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.protocol.errors import ConfigError

KEYTYPE = "ed25519"


def key_id(public_raw: bytes) -> str:
    """The id of a public key: hex SHA-256 of its raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key with its id."""

    raw: bytes

    @property
    def keyid(self) -> str:
        """This key's id."""
        return key_id(self.raw)

    @property
    def hex(self) -> str:
        """The raw key in hex, as it appears in root metadata."""
        return self.raw.hex()

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True if ``signature`` is this key's signature over ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, str]:
        """The key as root metadata lists it."""
        return {"keytype": KEYTYPE, "public": self.hex}


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """An Ed25519 private key (the seed stays out of repr)."""

    seed: bytes

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh random key."""
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        return cls(raw)

    def __repr__(self) -> str:
        return f"PrivateKey(keyid={self.public.keyid[:12]}…)"

    @property
    def public(self) -> PublicKey:
        """The matching public key."""
        pub = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return PublicKey(pub.public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw))

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message``."""
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


def write_private(path: Path, key: PrivateKey) -> None:
    """Write a private key as hex, created 0600 (never world-readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{KEYTYPE}-private {key.seed.hex()}\n")


def write_public(path: Path, key: PublicKey) -> None:
    """Write a public key as hex."""
    path.write_text(f"{KEYTYPE}-public {key.hex}\n")


def _read(path: Path, tag: str) -> bytes:
    try:
        text = path.read_text().split()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file: {exc.strerror}") from exc
    if len(text) != 2 or text[0] != tag:
        raise ConfigError(f"{path}: not a key file: expected '{tag} HEX' on one line")
    try:
        raw = bytes.fromhex(text[1])
    except ValueError as exc:
        raise ConfigError(f"{path}: key is not hex") from exc
    if len(raw) != 32:
        raise ConfigError(f"{path}: key has {len(raw)} bytes, expected 32")
    return raw


def load_private(path: Path) -> PrivateKey:
    """Read a private key file written by ``write_private``."""
    return PrivateKey(_read(path, f"{KEYTYPE}-private"))


def load_public(path: Path) -> PublicKey:
    """Read a public key file (or derive it from a private key file)."""
    first = path.read_text().split()[:1] if path.exists() else []
    if first == [f"{KEYTYPE}-private"]:
        return load_private(path).public
    return PublicKey(_read(path, f"{KEYTYPE}-public"))
