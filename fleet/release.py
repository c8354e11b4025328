"""Release bundles: build the agent's wheelhouse, sign its manifest, read releases back.

``build_release`` runs pip (the operator's, ``python -m pip``) three times at most:

1. ``pip wheel --no-deps --no-build-isolation`` of the source tree: the agent's wheel, with its
   Cython fast path compiled for this interpreter and platform (a wheel without the compiled
   module is refused: the gateway would silently run the pure-Python codec);
2. ``pip wheel`` of that wheel and of pip itself: every dependency's wheel, from the local
   wheel caches (``--find-links``) or the package index, for the same Python and platform;
3. nothing else: the wheelhouse is packed as one uncompressed, deterministic tar (wheels are
   already compressed) beside the signed manifest (``edge_agent.protocol.release``).

A release directory ``RELEASES/<version>/`` then holds ``wheelhouse.tar``, ``manifest.json``
and ``software.bundle`` (the manifest signed as a bundle of kind ``software``). The gateway
installs the wheelhouse with ``pip install --no-index --find-links`` into a fresh virtualenv,
using the pip wheel inside it, so it needs neither an index nor a pip of its own.

Releases are built for the machine that builds them (its Python and platform tags): build on
a host of the gateways' kind (e.g. an arm64 Raspberry Pi OS builder for arm64 gateways).
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.protocol.bundle import make_bundle, read_envelope
from edge_agent.protocol.errors import CommandError, VerificationError
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.release import (
    Artefact,
    Manifest,
    host_target,
    parse_manifest,
    version_number,
    version_text,
)

WHEELHOUSE = "wheelhouse.tar"
MANIFEST = "manifest.json"
BUNDLE = "software.bundle"
_IGNORED = shutil.ignore_patterns(".venv", "build", ".git", "*.egg-info", "__pycache__",
                                  "*.so", ".mypy_cache", ".ruff_cache", ".pytest_cache")
_PYPROJECT_VERSION = re.compile(r'^version = "[^"]*"$', re.M)
_INIT_VERSION = re.compile(r'^__version__ = "[^"]*"$', re.M)


@dataclass(frozen=True, slots=True)
class Release:
    """A built release on the fleet's disk."""

    path: Path
    manifest: Manifest

    @property
    def wheelhouse(self) -> Path:
        """The artefact the gateways download."""
        return self.path / WHEELHOUSE

    @property
    def bundle(self) -> Path:
        """The signed software bundle."""
        return self.path / BUNDLE


def source_version(src: Path) -> str:
    """The version a source tree declares in pyproject.toml."""
    m = re.search(r'^version = "([^"]*)"$', (src / "pyproject.toml").read_text(), re.M)
    if m is None:
        raise CommandError(f"{src}/pyproject.toml declares no version")
    return m.group(1)


def _tree_at_version(src: Path, version: str, scratch: Path) -> Path:
    """``src`` itself, or a copy of it whose pyproject and package say ``version``."""
    if source_version(src) == version:
        return src
    tree = scratch / "src"
    shutil.copytree(src, tree, ignore=_IGNORED, symlinks=True)
    for rel, pattern, line in (("pyproject.toml", _PYPROJECT_VERSION, f'version = "{version}"'),
                               ("edge_agent/__init__.py", _INIT_VERSION,
                                f'__version__ = "{version}"')):
        path = tree / rel
        text, n = pattern.subn(line, path.read_text(), count=1)
        if n != 1:
            raise CommandError(f"{path}: no version line to set to {version}")
        path.write_text(text)
    return tree


def _pip(args: Sequence[str], python: str, what: str) -> None:
    cmd = [python, "-m", "pip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise CommandError(f"{what} failed ({' '.join(cmd)}):\n{tail}")


def _pack(wheels: Path) -> bytes:
    """The wheelhouse as a deterministic tar: sorted names, fixed owner, time and modes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(wheels.glob("*.whl")):
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mode, info.mtime, info.uname, info.gname = 0o644, 0, "root", "root"
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def build_wheelhouse(src: Path, version: str, wheels: Path, *, python: str = sys.executable,
                     find_links: Iterable[Path] = (), offline: bool = False) -> Path:
    """Build the agent's wheel at ``version`` and every dependency's wheel into ``wheels``."""
    wheels.mkdir(parents=True, exist_ok=True)
    links = [a for d in find_links for a in ("--find-links", str(d))]
    with tempfile.TemporaryDirectory(prefix="edge-release-") as scratch:
        tree = _tree_at_version(src, version, Path(scratch))
        _pip(["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
              str(tree)], python, "building the agent's wheel")
    agent = [w for w in wheels.glob("edge_agent-*.whl") if f"-{version}-" in w.name]
    if len(agent) != 1:
        raise CommandError(f"expected one edge_agent-{version} wheel in {wheels}, found "
                           f"{[w.name for w in agent]}")
    import zipfile
    with zipfile.ZipFile(agent[0]) as zf:
        if not any(n.startswith("edge_agent/fastpath/_codec") and n.endswith(".so")
                   for n in zf.namelist()):
            raise CommandError(f"{agent[0].name} lacks the compiled fast path "
                               "(edge_agent/fastpath/_codec*.so): is Cython installed?")
    _pip(["wheel", "-q", "-w", str(wheels), *links, *(["--no-index"] if offline else []),
          str(agent[0]), "pip"], python, "collecting the dependencies' wheels")
    return agent[0]


def build_release(src: Path, releases: Path, keys: Sequence[PrivateKey], *,
                  version: str | None = None, min_from: str = "0.0.0", issued: int,
                  expires: int, gateways: Iterable[str] = (), sites: Iterable[str] = (),
                  tags: Iterable[str] = (), python: str = sys.executable,
                  find_links: Iterable[Path] = (), offline: bool = False) -> Release:
    """Build, pack, describe and sign a release into ``releases/<version>/``."""
    version = version or source_version(src)
    if version_number(min_from) >= version_number(version):
        raise CommandError(f"--min-from {min_from} must be below the release {version}")
    if (releases / version).exists():
        raise CommandError(f"{releases / version} exists; releases are immutable (bump the "
                           "version)")
    with tempfile.TemporaryDirectory(prefix="edge-wheels-") as scratch:
        wheels = Path(scratch)
        build_wheelhouse(src, version, wheels, python=python, find_links=find_links,
                         offline=offline)
        return write_release(wheels, releases, keys, version=version, min_from=min_from,
                             issued=issued, expires=expires, gateways=gateways, sites=sites,
                             tags=tags)


def write_release(wheels: Path, releases: Path, keys: Sequence[PrivateKey], *, version: str,
                  min_from: str, issued: int, expires: int, gateways: Iterable[str] = (),
                  sites: Iterable[str] = (), tags: Iterable[str] = (),
                  target: tuple[str, str] | None = None) -> Release:
    """Pack a directory of wheels, describe and sign it into ``releases/<version>/``."""
    number = version_number(version)
    out = releases / version
    tar = _pack(wheels)
    py_tag, platform = target or host_target()
    manifest = Manifest(version, min_from, py_tag, (platform,),
                        (Artefact(WHEELHOUSE, len(tar), hashlib.sha256(tar).hexdigest()),))
    payload = manifest.to_bytes()
    blob = make_bundle("software", number, payload, keys, issued=issued, expires=expires,
                       gateways=gateways, sites=sites, tags=tags)
    staging = releases / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / WHEELHOUSE).write_bytes(tar)
    (staging / MANIFEST).write_bytes(payload)
    (staging / BUNDLE).write_bytes(blob)
    staging.rename(out)  # a release directory is complete or absent
    return Release(out, manifest)


def load_release(path: Path) -> Release:
    """A release directory read back; CommandError naming what is wrong."""
    try:
        manifest = parse_manifest((path / MANIFEST).read_bytes())
    except (OSError, VerificationError) as exc:
        raise CommandError(f"{path}: not a release ({exc})") from exc
    return Release(path, manifest)


def list_releases(releases: Path) -> list[Release]:
    """Every release under ``releases``, oldest first."""
    if not releases.is_dir():
        return []
    found = [load_release(p) for p in releases.iterdir()
             if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()]
    return sorted(found, key=lambda r: r.manifest.number)


def find_release(releases: Path, version: str) -> Release:
    """The release ``version`` (``X.Y.Z`` or its number); CommandError if absent."""
    if version.isdigit():
        version = version_text(int(version))
    path = releases / version
    if not (path / MANIFEST).exists():
        raise CommandError(f"no release {version} in {releases}")
    return load_release(path)


def describe(release: Release) -> dict[str, Any]:
    """What ``release show`` prints: the manifest, the bundle's signed fields, files on disk."""
    info: dict[str, Any] = {"path": str(release.path), "manifest": release.manifest.to_json()}
    try:
        env, _ = read_envelope(release.bundle.read_bytes(), 256 * 1024)
        signed = env["signed"]
        info["bundle"] = {k: signed[k] for k in ("kind", "version", "targets", "issued",
                                                 "expires")}
        info["bundle"]["keyids"] = [s["keyid"] for s in env["signatures"]]
    except (OSError, VerificationError, KeyError, TypeError) as exc:
        info["bundle"] = f"unreadable: {exc}"
    checks = {}
    for art in release.manifest.artefacts:
        path = release.path / art.name
        if not path.exists():
            checks[art.name] = "missing"
            continue
        ok = (path.stat().st_size == art.length
              and hashlib.sha256(path.read_bytes()).hexdigest() == art.sha256)
        checks[art.name] = "ok" if ok else "DIFFERS from the signed length/hash"
    info["files"] = checks
    return info
