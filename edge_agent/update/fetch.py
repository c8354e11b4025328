"""Download one signed artefact: capped, resumable with ``Range``, paced, checked. Stdlib only.

The length and SHA-256 come from the signed manifest, so the cap is known before the first
byte: a server that sends more than the signed length is cut off there, and a file whose length
or hash differs is deleted before anything is unpacked. A cut connection leaves
``<sha256>.part`` on disk; the next attempt asks for ``Range: bytes=N-`` and appends, and starts
over only if the server ignores the range (200 instead of 206).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHUNK = 64 * 1024
TIMEOUT_S = 30.0


class FetchError(Exception):
    """A download failed or its bytes are not the signed ones."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, length: int, sha256: str, *,
          context: ssl.SSLContext | None = None, rate_bps: float | None = None,
          max_bytes: int | None = None, progress: Callable[[int], None] | None = None,
          stop_after: int | None = None) -> Path:
    """``dest`` holding exactly the signed bytes; FetchError (and the part kept) otherwise.

    ``rate_bps`` paces the download; ``max_bytes`` is the gateway's own cap, checked against
    the signed length before anything is fetched; ``stop_after`` (tests, figures) cuts the
    transfer after that many bytes of this attempt, as a dropped link would.
    """
    if max_bytes is not None and length > max_bytes:
        raise FetchError(f"artefact declares {length} bytes; this gateway takes at most "
                         f"{max_bytes}")
    if dest.exists() and dest.stat().st_size == length and _file_sha256(dest) == sha256:
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    if have < length:
        have = _transfer(url, part, have, length, context, rate_bps, progress, stop_after)
    if have != length:
        raise FetchError(f"download cut at {have} of {length} bytes (resumes next time)")
    if _file_sha256(part) != sha256:
        part.unlink()  # a resumed file from another server's bytes: start over next time
        raise FetchError("downloaded artefact's SHA-256 differs from the signed one")
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, have: int, length: int, context: ssl.SSLContext | None,
              rate_bps: float | None, progress: Callable[[int], None] | None,
              stop_after: int | None) -> int:
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S, context=context)
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: {exc}") from exc
    with resp:
        if have and resp.status == 200:
            have = 0  # the server ignored the range: whole file again
        elif resp.status not in (200, 206):
            raise FetchError(f"{url}: HTTP {resp.status}")
        started, sent = time.monotonic(), 0
        with part.open("r+b" if have else "wb") as fh:
            fh.seek(have)
            fh.truncate()
            while have < length:
                want = min(CHUNK, length - have)
                if stop_after is not None:
                    want = min(want, stop_after - sent)
                    if want <= 0:
                        break
                try:
                    block = resp.read(want)
                except (OSError, ValueError) as exc:
                    raise FetchError(f"{url}: cut at {have} bytes ({exc})") from exc
                if not block:
                    break
                fh.write(block)
                have += len(block)
                sent += len(block)
                if progress is not None:
                    progress(have)
                if rate_bps:
                    # Pacing: never ahead of rate_bps since this attempt began.
                    ahead = sent / rate_bps - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            fh.flush()
            os.fsync(fh.fileno())
    return have
