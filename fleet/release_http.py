"""Serve release artefacts over HTTPS with ``Range`` requests: ``GET /releases/VER/NAME``.

Only files a release's signed manifest names are served (``wheelhouse.tar``, the bundle and
the manifest); any other path is 404, whatever the file system holds. ``Range: bytes=N-`` and
``bytes=N-M`` answer 206 with ``Content-Range`` (a gateway resumes a cut download), an
unsatisfiable range 416. Threads (one per connection) because each response is a file copy.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edge_agent.fleet.release import BUNDLE, MANIFEST, list_releases

_PATH = re.compile(r"/releases/([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})/([A-Za-z0-9._-]{1,100})")
_RANGE = re.compile(r"bytes=([0-9]{1,15})-([0-9]{0,15})")


def _handler(releases: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-fleet-releases"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return  # quiet: one line per request would drown the service's log

        def _file(self) -> Path | None:
            m = _PATH.fullmatch(self.path)
            if m is None:
                return None
            version, name = m.groups()
            rel = next((r for r in list_releases(releases) if r.manifest.version == version),
                       None)
            if rel is None:
                return None
            allowed = {a.name for a in rel.manifest.artefacts} | {BUNDLE, MANIFEST}
            return rel.path / name if name in allowed else None

        def _error(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            path = self._file()
            if path is None or not path.is_file():
                self._error(404)
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            wanted = self.headers.get("Range")
            if wanted is not None:
                m = _RANGE.fullmatch(wanted.strip())
                if m is None or int(m.group(1)) >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            length = end - start + 1
            self.send_response(206 if wanted is not None else 200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            if wanted is not None:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            with path.open("rb") as fh:
                fh.seek(start)
                # the gateway going away is no error: it resumes with a Range next time
                with contextlib.suppress(OSError):  # reset, broken pipe, TLS EOF
                    _copy(fh, self.wfile, length)

    return Handler


def _copy(src: object, dst: object, length: int) -> None:
    left = length
    while left > 0:
        block = src.read(min(64 * 1024, left))  # type: ignore[attr-defined]
        if not block:
            break
        dst.write(block)  # type: ignore[attr-defined]
        left -= len(block)


class ReleaseServer:
    """A running release server (``start``/``close``), HTTPS unless no TLS context is given."""

    def __init__(self, releases: Path, host: str, port: int,
                 tls: ssl.SSLContext | None) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _handler(releases))
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="releases",
                                        daemon=True)

    def start(self) -> ReleaseServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5.0)


def serve_releases(releases: Path, host: str, port: int, tls: ssl.SSLContext | None) -> None:
    """Serve until interrupted (``edge-fleet release serve``)."""
    server = ReleaseServer(releases, host, port, tls)
    print(f"serving {releases} on {'https' if tls else 'http'}://{host}:{server.port}/releases/",
          flush=True)
    try:
        server.httpd.serve_forever()
    finally:
        server.httpd.server_close()
