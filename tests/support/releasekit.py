"""Real releases for the update tests: built once per session, installed once, copied per test.

``build_kit`` builds the current tree (its own version) and the same tree at a bumped version
with ``edge-fleet``'s own builder (the agent's wheel with its Cython fast path, every
dependency's wheel, pip's wheel), then derives broken releases from the bumped one by rewriting
its agent wheel (version, ``edge_agent/__main__.py``, RECORD): one that crashes at start, one
that runs but never reports healthy, one that hangs silently. Each is packed and signed like any
release. The first release is installed once (a real offline install) into a template root;
each test copies it (a venv run as ``venv/bin/python -m edge_agent`` works from a copy).
"""

from __future__ import annotations

import base64
import hashlib
import pickle
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fleet.release import WHEELHOUSE, build_wheelhouse, source_version, write_release
from edge_agent.protocol.bundle import root_signed, sign_envelope
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.release import version_number
from edge_agent.protocol.trust import TrustedState
from edge_agent.update.journal import load_journal, persist
from edge_agent.update.releases import install, switch_current, unpack

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "gw-ota"
SITE = "test-site"
TAG = "ota"
CRASH = "import sys\nprint('release: crashing at start', flush=True)\nsys.exit(3)\n"
NEVER_HEALTHY = ("import time\nwhile True:\n    print('release: running, never healthy', "
                 "flush=True)\n    time.sleep(0.5)\n")
HANG = "import time\ntime.sleep(10**6)\n"
BROKEN = {"crash": CRASH, "never-healthy": NEVER_HEALTHY, "hang": HANG}


@dataclass
class Kit:
    """The session's releases, keys, trust and a template install root."""

    releases: Path
    template: Path            # an install root with the first release installed and committed
    first: str                # the current tree's version
    bumped: str               # the same tree, one minor version up
    broken: dict[str, str]    # "crash" | "never-healthy" | "hang" -> its release version
    keys: list[PrivateKey]
    trust: TrustedState
    build_s: float
    install_s: float

    def bundle(self, version: str) -> bytes:
        """The signed software bundle of a release."""
        return (self.releases / version / "software.bundle").read_bytes()

    def new_root(self, dest: Path) -> Path:
        """A fresh install root (a copy of the template) at ``dest``."""
        shutil.copytree(self.template, dest, symlinks=True)
        return dest


def _key(name: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(f"ota/{name}".encode()).digest())


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def rewrite_wheel(src: Path, dest_dir: Path, old: str, new: str, main_py: str) -> Path:
    """The agent wheel ``src`` as version ``new``, its ``edge_agent/__main__.py`` ``main_py``."""
    out = dest_dir / src.name.replace(f"-{old}-", f"-{new}-")
    old_info, new_info = f"edge_agent-{old}.dist-info", f"edge_agent-{new}.dist-info"
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(src) as zin:
        for name in zin.namelist():
            data = zin.read(name)
            name = name.replace(old_info, new_info)
            if name == "edge_agent/__main__.py":
                data = main_py.encode()
            elif name == "edge_agent/__init__.py":
                data = data.replace(f'"{old}"'.encode(), f'"{new}"'.encode())
            elif name == f"{new_info}/METADATA":
                data = data.replace(f"Version: {old}".encode(), f"Version: {new}".encode())
            files[name] = data
    record = f"{new_info}/RECORD"
    files[record] = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in files.items()
                            if n != record).encode() + f"{record},,\n".encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in files.items():
            zout.writestr(name, data)
    return out


def trust_state(keys: list[PrivateKey], root_key: PrivateKey) -> TrustedState:
    """The gateway's trust: root v1 (one root key), the release keys 1 of 1."""
    now = int(time.time())
    signed = root_signed(1, [root_key.public], 1, [k.public for k in keys], 1, issued=now - 60,
                         expires=now + 86_400)
    return TrustedState(GATEWAY, SITE, (TAG,), sign_envelope(signed, [root_key]))


def build_kit(tmp: Path) -> Kit:
    """Build every release of the session and the template root."""
    started = time.monotonic()
    keys = [_key("release")]
    releases = tmp / "releases"
    first = source_version(ROOT)
    major, minor, _ = (int(x) for x in first.split("."))
    bumped = f"{major}.{minor + 1}.0"
    now = int(time.time())

    def sign(wheels: Path, version: str, min_from: str) -> None:
        write_release(wheels, releases, keys, version=version, min_from=min_from,
                      issued=now - 60, expires=now + 86_400, tags=[TAG])

    wheels_a, wheels_b = tmp / "wheels-a", tmp / "wheels-b"
    build_wheelhouse(ROOT, first, wheels_a)
    sign(wheels_a, first, "0.0.0")
    # the bumped tree takes its dependencies from the first wheelhouse: no second download
    agent_b = build_wheelhouse(ROOT, bumped, wheels_b, find_links=[wheels_a])
    sign(wheels_b, bumped, first)
    broken = {}
    for i, (kind, main_py) in enumerate(BROKEN.items()):
        version = broken[kind] = f"{major}.{minor + 2}.{i}"
        wheels = tmp / f"wheels-{version}"
        wheels.mkdir()
        for whl in wheels_b.glob("*.whl"):
            if whl != agent_b:
                shutil.copy2(whl, wheels / whl.name)
        rewrite_wheel(agent_b, wheels, bumped, version, main_py)
        sign(wheels, version, first)
    build_s = time.monotonic() - started
    started = time.monotonic()
    template = tmp / "template"
    template.mkdir()
    staged = template / "releases" / first / "wheels"
    unpack(releases / first / WHEELHOUSE, staged)
    install(template, first, staged, base_python=sys.executable)
    shutil.rmtree(staged)
    switch_current(template, first)
    j = load_journal(template)
    j.target = j.committed = first
    j.target_number = j.committed_number = version_number(first)
    persist(template, j, "commit", fsync=False)
    return Kit(releases, template, first, bumped, broken, keys, trust_state(keys, _key("root")),
               build_s, time.monotonic() - started)


def load_or_build_kit(path: Path) -> Kit:
    """The kit built at ``path`` by an earlier caller of this session, or a new one there."""
    done = path / "kit.pickle"
    if done.exists():
        kit: Kit = pickle.loads(done.read_bytes())
        return kit
    path.mkdir(parents=True, exist_ok=True)
    kit = build_kit(path)
    done.write_bytes(pickle.dumps(kit))
    return kit
