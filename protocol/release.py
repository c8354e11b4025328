"""Software release manifests: the payload of a signed ``software`` bundle. Pure, stdlib only.

A release is a wheelhouse (the agent's wheel with its compiled fast path, every dependency's
wheel and pip's own) packed as one uncompressed tar. The fleet signs a bundle of kind
``software`` whose payload is this manifest (canonical JSON)::

    {"_type": "release", "spec": 1, "package": "edge-agent", "version": "0.2.0",
     "number": 2000, "min_from": "0.1.0", "python": "cp311", "platforms": ["linux_x86_64"],
     "artefacts": [{"name": "wheelhouse.tar", "length": L, "sha256": HEX}]}

The bundle's version is ``number`` (``version_number(version)``), so the anti-rollback floor of
the verifier (``edge_agent.protocol.verify``, step 8) applies to releases as it does to configs.
The artefact lengths and hashes are signed, so a gateway caps a download from the envelope before
fetching a byte, and checks length and hash before anything is unpacked.

Parsing is total: any input either becomes a ``Manifest`` or raises VerificationError naming
what is wrong (used by the gateway on bytes that have already passed the signature check, and
by ``edge-fleet release show`` on files from disk).
"""

from __future__ import annotations

import re
import sys
import sysconfig
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol.canonical import canonical_bytes
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict, show

SPEC = 1
PACKAGE = "edge-agent"
MAX_MANIFEST = 64 * 1024
MAX_ARTEFACTS = 16
MAX_ARTEFACT_BYTES = 1 << 32      # 4 GiB: any real wheelhouse is far below; a gateway caps lower
_VERSION = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TAG = re.compile(r"[a-z0-9_.]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
FIELDS = ("_type", "spec", "package", "version", "number", "min_from", "python", "platforms",
          "artefacts")


def version_number(version: str) -> int:
    """``"X.Y.Z"`` (each 0..999) as the integer X*10**6 + Y*10**3 + Z; VerificationError else.

    Releases are ordered by this number: the bundle version and the anti-rollback floor.
    """
    m = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise VerificationError(f"release version {show(version)}: expected X.Y.Z, each "
                                "part 0..999 without leading zeros")
    major, minor, patch = (int(g) for g in m.groups())
    return major * 1_000_000 + minor * 1_000 + patch


def version_text(number: int) -> str:
    """The ``X.Y.Z`` spelling of a release number."""
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


@dataclass(frozen=True, slots=True)
class Artefact:
    """One file of a release, as signed: its name, exact length and SHA-256."""

    name: str
    length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """A release as the signed bundle describes it."""

    version: str
    min_from: str
    python: str
    platforms: tuple[str, ...]
    artefacts: tuple[Artefact, ...]
    package: str = PACKAGE

    @property
    def number(self) -> int:
        """The release number (bundle version)."""
        return version_number(self.version)

    @property
    def size(self) -> int:
        """Bytes to download: the sum of the artefacts' signed lengths."""
        return sum(a.length for a in self.artefacts)

    def to_json(self) -> dict[str, Any]:
        """The manifest document."""
        return {"_type": "release", "spec": SPEC, "package": self.package,
                "version": self.version, "number": self.number, "min_from": self.min_from,
                "python": self.python, "platforms": list(self.platforms),
                "artefacts": [{"name": a.name, "length": a.length, "sha256": a.sha256}
                              for a in self.artefacts]}

    def to_bytes(self) -> bytes:
        """The canonical bytes signed as the bundle payload."""
        return canonical_bytes(self.to_json())


def host_target() -> tuple[str, str]:
    """This interpreter's (python tag, platform tag), as release manifests spell them."""
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_").lower()
    return python, platform


def refusal(manifest: Manifest, running: str, python: str, platform: str) -> str | None:
    """Why this gateway (running ``running``, on ``python``/``platform``) must refuse the release.

    None when it may install it. The signed bundle's version has already passed the floor.
    """
    if manifest.python != python:
        return f"release {manifest.version} is built for {manifest.python}, this gateway runs " \
               f"{python}"
    if platform not in manifest.platforms:
        return f"release {manifest.version} is built for {', '.join(manifest.platforms)}, " \
               f"this gateway is {platform}"
    if version_number(running) < version_number(manifest.min_from):
        return f"release {manifest.version} upgrades from {manifest.min_from} or later; this " \
               f"gateway runs {running}"
    if version_number(running) >= manifest.number:
        return f"release {manifest.version} is not newer than the running {running}"
    return None


def _field(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc[key]
    if type(value) is not kind:
        raise VerificationError(f"{where}: {key} is {show(value)}, expected {kind.__name__}")
    return value


def _name(value: Any, where: str, pattern: re.Pattern[str] = _NAME) -> str:
    if type(value) is not str or not pattern.fullmatch(value):
        raise VerificationError(f"{where} is {show(value)}, expected {pattern.pattern}")
    return value


def parse_manifest(raw: bytes) -> Manifest:
    """A manifest from its bytes (strict JSON under limits, exact schema); VerificationError."""
    if len(raw) > MAX_MANIFEST:
        raise VerificationError(f"release manifest of {len(raw)} bytes exceeds {MAX_MANIFEST}")
    try:
        doc = loads_strict(raw, max_bytes=MAX_MANIFEST, max_depth=4, max_items=256,
                           max_str=128)
    except UnsafeJsonError as exc:
        raise VerificationError(f"release manifest: {exc}") from exc
    if not isinstance(doc, dict):
        raise VerificationError("release manifest is not a JSON object")
    missing = [k for k in FIELDS if k not in doc]
    unknown = [k for k in doc if k not in FIELDS]
    if missing or unknown:
        raise VerificationError(f"release manifest: missing {missing}, unknown {unknown}")
    if doc["_type"] != "release" or doc["spec"] != SPEC or doc["package"] != PACKAGE:
        raise VerificationError(f"release manifest: type {show(doc['_type'])}, spec "
                                f"{show(doc['spec'])}, package {show(doc['package'])}; expected "
                                f"release, {SPEC}, {PACKAGE}")
    version = _field(doc, "version", str, "release manifest")
    number = version_number(version)
    if _field(doc, "number", int, "release manifest") != number:
        raise VerificationError(f"release manifest: number {show(doc['number'])} is not "
                                f"{number} (version {version})")
    min_from = _field(doc, "min_from", str, "release manifest")
    if version_number(min_from) >= number:
        raise VerificationError(f"release manifest: min_from {min_from} is not below {version}")
    python = _name(doc["python"], "release manifest python", _TAG)
    platforms = _field(doc, "platforms", list, "release manifest")
    if not 1 <= len(platforms) <= 16:
        raise VerificationError(f"release manifest lists {len(platforms)} platforms, 1..16")
    arts = _field(doc, "artefacts", list, "release manifest")
    if not 1 <= len(arts) <= MAX_ARTEFACTS:
        raise VerificationError(f"release manifest lists {len(arts)} artefacts, 1.."
                                f"{MAX_ARTEFACTS}")
    artefacts = []
    for i, art in enumerate(arts):
        where = f"release manifest artefacts[{i}]"
        if not isinstance(art, dict) or set(art) != {"name", "length", "sha256"}:
            raise VerificationError(f"{where}: expected {{name, length, sha256}}")
        length = art["length"]
        if type(length) is not int or not 0 < length <= MAX_ARTEFACT_BYTES:
            raise VerificationError(f"{where}: length {show(length)} outside 1.."
                                    f"{MAX_ARTEFACT_BYTES}")
        artefacts.append(Artefact(_name(art["name"], f"{where} name"), length,
                                  _name(art["sha256"], f"{where} sha256", _HEX64)))
    if len({a.name for a in artefacts}) != len(artefacts):
        raise VerificationError("release manifest names an artefact twice")
    return Manifest(version, min_from, python,
                    tuple(_name(p, "release manifest platform", _TAG) for p in platforms),
                    tuple(artefacts))
