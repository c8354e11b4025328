"""Download of a release artefact over HTTPS: whole, and resumed after a cut. Prints figures.

Builds one real release (the current tree) and serves it with ``edge-fleet release serve``'s
server on loopback; each run downloads it whole, then cuts a second download half-way (as a
dropped link would) and resumes it with a ``Range`` request. Usage::

    .venv/bin/python -m bench.ota_fetch --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from edge_agent.fleet.httpd import server_tls_context
from edge_agent.fleet.release import build_wheelhouse, source_version, write_release
from edge_agent.fleet.release_http import ReleaseServer
from edge_agent.protocol.keys import PrivateKey
from edge_agent.update.fetch import FetchError, fetch
from tests.support.tlskit import make_tls

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rate-bps", type=float, help="pace the downloads")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ota-fetch-") as scratch:
        tmp = Path(scratch)
        version = source_version(ROOT)
        build_wheelhouse(ROOT, version, tmp / "wheels")
        now = int(time.time())
        rel = write_release(tmp / "wheels", tmp / "rels", [PrivateKey.generate()],
                            version=version, min_from="0.0.0", issued=now, expires=now + 600,
                            tags=["bench"])
        art = rel.manifest.artefacts[0]
        print(f"release {version}: wheelhouse {art.length} B, signed bundle "
              f"{rel.bundle.stat().st_size} B")
        tls = make_tls(tmp / "tls")
        server = ReleaseServer(tmp / "rels", "127.0.0.1", 0,
                               server_tls_context(tls.cert, tls.key)).start()
        ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
        url = f"https://127.0.0.1:{server.port}/releases/{version}/{art.name}"
        whole, resumed = [], []
        try:
            for i in range(args.runs):
                d = tmp / f"run{i}"
                started = time.monotonic()
                fetch(url, d / "a", art.length, art.sha256, context=ctx, rate_bps=args.rate_bps)
                whole.append(time.monotonic() - started)
                with contextlib.suppress(FetchError):  # the cut half-way
                    fetch(url, d / "b", art.length, art.sha256, context=ctx,
                          rate_bps=args.rate_bps, stop_after=art.length // 2)
                started = time.monotonic()
                fetch(url, d / "b", art.length, art.sha256, context=ctx, rate_bps=args.rate_bps)
                resumed.append(time.monotonic() - started)
                assert hashlib.sha256((d / "b").read_bytes()).hexdigest() == art.sha256
        finally:
            server.close()
        print(f"{args.runs} runs: whole download median {statistics.median(whole):.3f} s; "
              f"resume of the second half after a cut median {statistics.median(resumed):.3f} s "
              f"(then length and SHA-256 checked)")


if __name__ == "__main__":
    main()
