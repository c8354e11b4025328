"""Stage a signed release on the gateway: verify, download, check, unpack, install, switch.

``stage_release`` takes the wire bytes of a ``software`` bundle and returns a report (what went
to ``reported``). Everything that can refuse a release runs before the first byte is written:
signature, kind, target, expiry and version floor (``protocol.verify``); the manifest's schema,
Python and platform tags, the minimum version it upgrades from, a release rolled back before,
and the signed size against this gateway's cap. A refused release changes nothing on disk.

Then each step is persisted in the journal (``edge_agent.update.journal``) after it is done:
download (resumed after a cut), verify (length and SHA-256 of the artefact, before anything is
unpacked), unpack (plain wheels only), install (a fresh virtualenv, offline), switch (the
journal first, then the ``current`` link). The supervisor takes it from there.

The anti-rollback floor of software is the journal's committed release: the verifier is given
it as the ``software`` floor, so an older or equal release is refused whatever ``trust.json``
says, and it moves only when the supervisor commits a release that passed its health gate.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.release import (
    MAX_MANIFEST,
    Manifest,
    host_target,
    parse_manifest,
    refusal,
    version_number,
)
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import verify_bundle
from edge_agent.update.fetch import FetchError, fetch
from edge_agent.update.journal import (
    MAX_STAGE_ATTEMPTS,
    STAGING,
    load_journal,
    persist,
)
from edge_agent.update.releases import (
    InstallError,
    current_version,
    install,
    release_dir,
    switch_current,
    unpack,
)

MAX_DOWNLOAD = 256 * 1024 * 1024   # a gateway's own cap on a release (signed sizes above: refused


def _refused(version: str | None, why: str) -> dict[str, Any]:
    named = {} if version is None else {"version": version}  # None: no manifest to name it
    return {"kind": "software", "result": "refused", **named, "reason": why}


def software_trust(trust: TrustedState, root: Path) -> TrustedState:
    """``trust`` with the software floor of the update journal (the committed release)."""
    j = load_journal(root)
    running = current_version(root) or __version__
    floor = max(j.committed_number, version_number(j.committed or running))
    return replace(trust, floors={**trust.floors, "software": floor},
                   committed_sha256={**trust.committed_sha256,
                                     "software": j.committed_sha256})


def check_release(blob: bytes, trust: TrustedState, root: Path, now: float, *,
                  max_bytes: int = MAX_DOWNLOAD,
                  target: tuple[str, str] | None = None) -> tuple[Manifest | None, dict[str, Any]]:
    """The manifest if the release may be staged, else None and the refusal. Writes nothing."""
    verdict = verify_bundle(blob, software_trust(trust, root), "software", now,
                            max_payload=MAX_MANIFEST)
    if not verdict.accepted or verdict.bundle is None:
        return None, {"kind": "software", "result": verdict.code, "reason": verdict.reason}
    try:
        manifest = parse_manifest(verdict.bundle.payload)
    except VerificationError as exc:
        return None, _refused(None, str(exc))
    if manifest.number != verdict.bundle.version:
        return None, _refused(manifest.version, f"bundle v{verdict.bundle.version} carries "
                                                f"release {manifest.version}")
    j = load_journal(root)
    if j.in_trial:
        # Not a refusal of this release (the agent on trial gets the retained offer of its own
        # release): "release", not "version", so a fleet rollout does not count it.
        return None, {"kind": "software", "result": "on_trial", "release": manifest.version,
                      "reason": f"release {j.target} is on trial; try again once it is settled"}
    running = current_version(root) or __version__
    python, platform = target or host_target()
    why = refusal(manifest, running, python, platform)
    if why is None and manifest.version in j.failed:
        why = f"release {manifest.version} was rolled back here: {j.failed[manifest.version]}"
    if why is None and manifest.size > max_bytes:
        why = f"release {manifest.version} is {manifest.size} bytes; cap is {max_bytes}"
    if (why is None and j.target == manifest.version and j.step in STAGING
            and j.stage_attempts >= MAX_STAGE_ATTEMPTS):
        why = (f"staging release {manifest.version} was interrupted {j.stage_attempts} times "
               f"(last step {j.step}); given up")
    if why is None and j.step == "refused" and j.target == manifest.version:
        why = f"staging release {manifest.version} was given up: {j.reason}"
    if why is not None:
        return None, _refused(manifest.version, why)
    return manifest, {"kind": "software", "result": "accepted", "version": manifest.version,
                      "sha256": verdict.bundle.sha256, "issued": verdict.bundle.issued}


def stage_release(blob: bytes, trust: TrustedState, root: Path, base_url: str, now: float, *,
                  max_bytes: int = MAX_DOWNLOAD, rate_bps: float | None = None,
                  context: ssl.SSLContext | None = None, base_python: str = sys.executable,
                  stop_after: int | None = None, target: tuple[str, str] | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Stage a release up to the switch; the report for ``reported``.

    ``progress(release, bytes, total)`` is called as the download goes (from this thread).
    """
    manifest, report = check_release(blob, trust, root, now, max_bytes=max_bytes,
                                     target=target)
    if manifest is None:
        j = load_journal(root)
        if report.get("version") == j.target and j.step in STAGING and \
                j.stage_attempts >= MAX_STAGE_ATTEMPTS:
            j.reason = str(report["reason"])  # the loop guard gave up: say so durably
            persist(root, j, "refused")
        return report
    root.mkdir(parents=True, exist_ok=True)
    j = load_journal(root)
    if j.target != manifest.version or j.step not in STAGING:
        j.stage_attempts = 0
    j.target, j.target_number = manifest.version, manifest.number
    j.target_sha256, j.target_issued = report["sha256"], report["issued"]
    j.previous = current_version(root) or ""
    j.attempts, j.reason, j.log_tail = 0, "", []
    j.stage_attempts += 1
    persist(root, j, "download")
    started = time.monotonic()
    rdir = release_dir(root, manifest.version)
    try:
        files: list[Path] = []
        for art in manifest.artefacts:
            dest = root / "downloads" / f"{art.sha256}-{art.name}"
            done = sum(f.stat().st_size for f in files)
            tick = None if progress is None else (
                lambda n, done=done: progress(manifest.version, done + n, manifest.size))
            files.append(fetch(f"{base_url.rstrip('/')}/{manifest.version}/{art.name}", dest,
                               art.length, art.sha256, context=context, rate_bps=rate_bps,
                               max_bytes=max_bytes, stop_after=stop_after, progress=tick))
        j.downloaded = sum(f.stat().st_size for f in files)
        # fetch checked length and hash; checked again here, on the final files, before unpack
        for art, f in zip(manifest.artefacts, files, strict=True):
            if f.stat().st_size != art.length or _sha256(f) != art.sha256:
                f.unlink()
                raise FetchError(f"{art.name}: length or SHA-256 differs from the signed one")
        persist(root, j, "verify")
        wheels = rdir / "wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        for f in files:
            unpack(f, wheels)
        persist(root, j, "unpack")
        install(root, manifest.version, wheels, base_python=base_python)
        shutil.rmtree(wheels, ignore_errors=True)
        for f in files:
            f.unlink(missing_ok=True)
        persist(root, j, "install")
    except (FetchError, InstallError, OSError) as exc:
        return {"kind": "software", "result": "failed", "version": manifest.version,
                "step": j.step, "reason": str(exc)}
    persist(root, j, "switch")       # the supervisor finishes a switch the journal announced
    switch_current(root, manifest.version)
    return {"kind": "software", "result": "switched", "version": manifest.version,
            "previous": j.previous, "bytes": j.downloaded,
            "staged_s": round(time.monotonic() - started, 1)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
