"""Harness for fleet tests and the benchmark: a PKI, enrolled gateway state dirs, and the service
and simulated gateways as real subprocesses (context managers that always stop them), or the
service's enrolment endpoint in a thread of this process (``EnrolmentEndpoint``)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fleet import actions as ops
from edge_agent.fleet.httpd import HttpLimits, HttpStats
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.bundle import root_fingerprint
from edge_agent.protocol.keys import PrivateKey
from edge_agent.tools.enroll import write_enrolment
from edge_agent.tools.procs import spawn_until_ready, stop_process

PY = sys.executable


@dataclass(frozen=True)
class Pki:
    """Deterministic keys: root keys (2 of 2) and release keys (2 of 2 sign each bundle)."""

    roots: tuple[PrivateKey, PrivateKey]
    releases: tuple[PrivateKey, PrivateKey]

    @staticmethod
    def key(seed: int, name: str) -> PrivateKey:
        """A key derived from a seed and a name."""
        return PrivateKey(hashlib.sha256(f"{seed}/{name}".encode()).digest())

    @classmethod
    def from_seed(cls, seed: int) -> Pki:
        """Keys derived from ``seed`` (printed by callers so a failure reproduces)."""
        return cls((cls.key(seed, "root-1"), cls.key(seed, "root-2")),
                   (cls.key(seed, "release-1"), cls.key(seed, "release-2")))

    @property
    def release_keys(self) -> list[PrivateKey]:
        """The keys a bundle is signed with."""
        return list(self.releases)

    def init(self, registry: Registry) -> None:
        """Store root v1: 2 of 2 root keys, 2 of 2 release keys."""
        ops.init_root(registry, [k.public for k in self.roots], 2,
                      [k.public for k in self.releases], 2, list(self.roots))


def enrol_direct(registry: Registry, state_root: Path, gateways: Sequence[str], site: str,
                 broker_url: str, tags: Sequence[str] = ()) -> None:
    """Enrol gateways through the registry (token, redeem, write files) without HTTP."""
    fingerprint = root_fingerprint(registry.latest_root())
    for gw in gateways:
        token = ops.issue_token(registry, gw, site, tags)
        answer = ops.enroll(registry, token, broker_url=broker_url)
        write_enrolment(state_root / gw, answer, root_sha256=fingerprint, force=True)


@contextmanager
def running(args: Sequence[str], log_path: Path, *, ready: str | None = None,
            timeout_s: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """Run a Python module as a subprocess logging to ``log_path``; wait for ``ready`` in it."""
    proc = spawn_until_ready([PY, "-m", *args], log_path, ready, timeout_s=timeout_s,
                             what=args[0])
    try:
        yield proc
    finally:
        stop_process(proc)


def serve_args(db: str, broker_url: str, *extra: str) -> list[str]:
    """Arguments of ``edge-fleet serve`` as a module."""
    return ["edge_agent.fleet.cli", "serve", "--db", db, "--broker", broker_url, *extra]


def simgateway_args(broker_url: str, state_root: Path, gateways: Sequence[str],
                    *extra: str) -> list[str]:
    """Arguments of the simulated gateways' process."""
    return ["tests.support.simgateway", "--broker", broker_url, "--state-root",
            str(state_root), *extra, *gateways]


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate()`` until true; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class EnrolmentEndpoint:
    """``FleetService`` with its enrolment endpoint on 127.0.0.1, run in a thread with its own
    event loop (a context manager), so a test can talk to it with blocking clients.

    Its broker is unreachable on purpose: enrolment needs none, and the consumer only retries.
    """

    def __init__(self, db: str, *, tls: ssl.SSLContext | None = None, insecure: bool = False,
                 limits: HttpLimits | None = None) -> None:
        self.db = db
        self.tls = tls
        self.insecure = insecure
        self.limits = limits
        self.port = 0
        self.stats = HttpStats()
        self.scheme = "https" if tls is not None else "http"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()),
                                        name="enrolment-endpoint")

    @property
    def url(self) -> str:
        """The ``--fleet`` URL of the endpoint."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        from edge_agent.fleet.service import FleetService

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        registry = Registry(self.db)  # sqlite: opened in the thread that uses it
        try:
            svc = FleetService(registry, "mqtt://127.0.0.1:9", http_host="127.0.0.1",
                               http_tls=self.tls, http_insecure=self.insecure,
                               http_limits=self.limits)
            self.stats = svc.http_stats
            task = asyncio.create_task(svc.run(self._stop))
            await svc.http_ready.wait()
            self.port = svc.http_port
            self._ready.set()
            await task
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            registry.close()

    def __enter__(self) -> EnrolmentEndpoint:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the enrolment endpoint did not start within 30 s")
        if self._error is not None:
            self._thread.join(10)
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError("the enrolment endpoint did not stop within 30 s")
