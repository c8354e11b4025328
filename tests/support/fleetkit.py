"""Harness for fleet tests and the benchmark: a PKI, enrolled gateway state dirs, and the service
and simulated gateways as real subprocesses (context managers that always stop them)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_agent.fleet import actions as ops
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.keys import PrivateKey
from edge_agent.tools.enroll import write_enrolment
from edge_agent.tools.procs import stop_process

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
    for gw in gateways:
        token = ops.issue_token(registry, gw, site, tags)
        answer = ops.enroll(registry, token, broker_url=broker_url)
        write_enrolment(state_root / gw, answer, force=True)


@contextmanager
def running(args: Sequence[str], log_path: Path, *, ready: str | None = None,
            timeout_s: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """Run a Python module as a subprocess logging to ``log_path``; wait for ``ready`` in it."""
    log: IO[bytes] = log_path.open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([PY, "-m", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if ready is not None:
            deadline = time.monotonic() + timeout_s
            while ready not in log_path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{args[0]} not ready: {log_path.read_text()[-3000:]}")
                time.sleep(0.05)
        yield proc
    finally:
        stop_process(proc)
        log.close()


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
