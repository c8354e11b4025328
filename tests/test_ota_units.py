"""Software updates without builds: manifests, refusals (nothing changes on disk), the journal's
fault hook, the atomic switch, pruning, and resumable, capped downloads over HTTPS.

Refused releases are refused before their first byte is fetched, so their bundles carry signed
manifests of wheelhouses that were never built.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.fleet.httpd import server_tls_context
from edge_agent.fleet.release import BUNDLE, MANIFEST, WHEELHOUSE
from edge_agent.fleet.release_http import ReleaseServer
from edge_agent.protocol.bundle import make_bundle
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.release import (
    Artefact,
    Manifest,
    host_target,
    parse_manifest,
    version_number,
)
from edge_agent.update.fetch import FetchError, fetch
from edge_agent.update.journal import CRASH_ENV, UpdateJournal, load_journal, persist
from edge_agent.update.releases import current_version, prune, switch_current
from edge_agent.update.stage import stage_release
from tests.support.releasekit import TAG, _key, trust_state
from tests.support.tlskit import make_tls

KEYS = [_key("release")]
TRUST = trust_state(KEYS, _key("root"))
PY, PLATFORM = host_target()


def _bundle(version: str, *, min_from: str = "0.0.0", python: str = PY,
            platforms: tuple[str, ...] = (PLATFORM,), length: int = 1000,
            number: int | None = None, tags: tuple[str, ...] = (TAG,)) -> bytes:
    man = Manifest(version, min_from, python, platforms,
                   (Artefact(WHEELHOUSE, length, "ab" * 32),))
    now = int(time.time())
    return make_bundle("software", number or man.number, man.to_bytes(), KEYS, issued=now - 5,
                       expires=now + 3600, tags=tags)


def _installed_root(tmp: Path, versions: tuple[str, ...] = ("0.1.0",)) -> Path:
    root = tmp / "root"
    for v in versions:
        rdir = root / "releases" / v
        (rdir / "venv" / "bin").mkdir(parents=True)
        (rdir / ".installed").write_text(v)
    switch_current(root, versions[-1])
    j = load_journal(root)
    j.committed = j.target = versions[-1]
    j.committed_number = version_number(versions[-1])
    persist(root, j, "commit", fsync=False)
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_versions_and_manifest_round_trip() -> None:
    assert version_number("0.1.0") == 1000 and version_number("2.10.3") == 2_010_003
    for bad in ("1.2", "01.2.3", "1.2.3a", "1000.0.0", 3):
        with pytest.raises(VerificationError):
            version_number(bad)  # type: ignore[arg-type]
    man = Manifest("0.2.0", "0.1.0", PY, (PLATFORM,), (Artefact("wheelhouse.tar", 5, "0" * 64),))
    assert parse_manifest(man.to_bytes()) == man
    doc = json.loads(man.to_bytes())
    for change in ({"number": 2001}, {"min_from": "0.2.0"}, {"extra": 1},
                   {"artefacts": [{"name": "../x", "length": 5, "sha256": "0" * 64}]},
                   {"artefacts": [{"name": "a", "length": 0, "sha256": "0" * 64}]}):
        with pytest.raises(VerificationError):
            parse_manifest(json.dumps({**doc, **change}).encode())


REFUSALS = {
    "tampered": lambda: _bundle("0.2.0")[:-3] + b"xyz",
    "unsigned": lambda: make_bundle("software", 2000, Manifest(
        "0.2.0", "0.1.0", PY, (PLATFORM,), (Artefact(WHEELHOUSE, 9, "ab" * 32),)).to_bytes(),
        [_key("someone-else")], issued=int(time.time()), expires=int(time.time()) + 60,
        tags=[TAG]),
    "older": lambda: _bundle("0.0.9"),
    "same": lambda: _bundle("0.1.0"),
    "below-minimum": lambda: _bundle("0.5.0", min_from="0.2.0"),
    "wrong-platform": lambda: _bundle("0.2.0", platforms=("linux_riscv64",)),
    "wrong-python": lambda: _bundle("0.2.0", python="cp39"),
    "oversized": lambda: _bundle("0.2.0", length=1 << 31),
    "not-for-us": lambda: _bundle("0.2.0", tags=("elsewhere",)),
    "number-mismatch": lambda: _bundle("0.2.0", number=2500),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_release_changes_nothing_on_disk(tmp_path: Path, case: str) -> None:
    root = _installed_root(tmp_path)
    before = _snapshot(root)
    # the URL is never reached: a refusal happens before the first byte is fetched
    report = stage_release(REFUSALS[case](), TRUST, root, "https://127.0.0.1:9/releases",
                           time.time(), max_bytes=64 << 20)
    assert report["result"] in ("rejected", "refused", "current"), report
    assert _snapshot(root) == before, case
    assert current_version(root) == "0.1.0"


def test_the_release_on_trial_offered_again_is_not_a_refusal(tmp_path: Path) -> None:
    """The agent on trial gets its own release's retained offer: "on_trial", naming it in
    ``release`` only (a fleet rollout does not count it as a failure); nothing on disk moves."""
    root = _installed_root(tmp_path, ("0.1.0", "0.2.0"))
    j = load_journal(root)
    j.committed, j.committed_number, j.previous = "0.1.0", 1000, "0.1.0"
    j.target, j.target_number = "0.2.0", 2000
    persist(root, j, "health", fsync=False)
    before = _snapshot(root)
    report = stage_release(_bundle("0.2.0"), TRUST, root, "https://127.0.0.1:9/releases",
                           time.time())
    assert report["result"] == "on_trial" and report["release"] == "0.2.0", report
    assert "version" not in report and _snapshot(root) == before


def test_switch_is_atomic_and_prune_keeps_current_and_previous(tmp_path: Path) -> None:
    root = _installed_root(tmp_path, ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"))
    assert os.readlink(root / "current") == "releases/0.5.0"
    switch_current(root, "0.1.0")
    assert current_version(root) == "0.1.0" and not (root / ".current.new").exists()
    removed = prune(root, {"0.5.0"}, keep=3)
    assert removed == ["0.2.0", "0.3.0"]
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["0.1.0", "0.4.0", "0.5.0"]


def test_the_fault_hook_kills_after_the_sync_once_or_forever(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from edge_agent.update.journal import "
            "UpdateJournal, persist; persist(Path(sys.argv[1]), UpdateJournal(target='9.9.9'), "
            "'install')")
    for mode, first, second in (("once", -9, 0), ("forever", -9, -9)):
        root = tmp_path / mode
        root.mkdir()
        env = {**os.environ, CRASH_ENV: "install" + (":once" if mode == "once" else "")}
        runs = [subprocess.run([sys.executable, "-c", code, str(root)], env=env,
                               check=False).returncode for _ in range(2)]
        assert runs == [first, second]
        j = load_journal(root)  # the step was durable before the kill
        assert (j.step, j.target) == ("install", "9.9.9")
    assert UpdateJournal.from_json(load_journal(tmp_path / "once").to_json()).step == "install"


Served = tuple[str, bytes, ssl.SSLContext, Path]


@pytest.fixture
def release_server(tmp_path: Path) -> Iterator[Served]:
    rel = tmp_path / "rels" / "0.2.0"
    rel.mkdir(parents=True)
    data = os.urandom(300_000)
    (rel / WHEELHOUSE).write_bytes(data)
    man = Manifest("0.2.0", "0.1.0", PY, (PLATFORM,),
                   (Artefact(WHEELHOUSE, len(data), hashlib.sha256(data).hexdigest()),))
    (rel / MANIFEST).write_bytes(man.to_bytes())
    (rel / BUNDLE).write_bytes(b"")
    tls = make_tls(tmp_path / "tls")
    server = ReleaseServer(tmp_path / "rels", "127.0.0.1", 0,
                           server_tls_context(tls.cert, tls.key)).start()
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    try:
        yield f"https://127.0.0.1:{server.port}/releases/0.2.0/{WHEELHOUSE}", data, ctx, rel
    finally:
        server.close()


def test_a_cut_download_resumes_with_a_range(tmp_path: Path, release_server: Served) -> None:
    url, data, ctx, _ = release_server
    sha = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "dl" / "w.tar"
    with pytest.raises(FetchError, match="cut at 100000"):
        fetch(url, dest, len(data), sha, context=ctx, stop_after=100_000)
    assert (dest.parent / "w.tar.part").stat().st_size == 100_000 and not dest.exists()
    seen: list[int] = []
    fetch(url, dest, len(data), sha, context=ctx, progress=seen.append)
    assert dest.read_bytes() == data
    assert seen[0] > 100_000 and seen[-1] == len(data)   # it went on from the cut
    assert seen[-1] - 100_000 <= len(data) - 100_000      # only the rest was transferred


def test_signed_length_caps_hash_checks_and_paths_are_refused(tmp_path: Path,
                                                              release_server: Served) -> None:
    url, data, ctx, rel = release_server
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(FetchError, match="at most"):
        fetch(url, tmp_path / "a", len(data), sha, context=ctx, max_bytes=len(data) - 1)
    # the server holds more than was signed: reading stops at the signed length, hash fails
    (rel / WHEELHOUSE).write_bytes(data + b"more")
    with pytest.raises(FetchError, match="SHA-256"):
        fetch(url, tmp_path / "b", len(data), "cd" * 32, context=ctx)
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.part").exists()
    fetch(url, tmp_path / "c", len(data), sha, context=ctx)  # only the signed bytes were read
    assert (tmp_path / "c").read_bytes() == data
    for path in ("/releases/0.2.0/../../etc/passwd", "/releases/0.2.0/other.tar",
                 "/releases/9.9.9/wheelhouse.tar"):
        with pytest.raises(FetchError, match="404"):
            fetch(url.split("/releases/")[0] + path, tmp_path / "d", 10, sha, context=ctx)


@pytest.mark.serial
def test_pacing_slows_the_download(tmp_path: Path, release_server: Served) -> None:
    url, data, ctx, _ = release_server
    started = time.monotonic()
    fetch(url, tmp_path / "p", len(data), hashlib.sha256(data).hexdigest(), context=ctx,
          rate_bps=1_000_000)
    assert time.monotonic() - started >= 0.25  # 300 kB at 1 MB/s: a floor, never a ceiling


def test_the_supervisor_imports_nothing_but_the_standard_library() -> None:
    code = ("import sys; before = set(sys.modules); import edge_agent.update.supervisor; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'edge_agent'}))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True, cwd="/").stdout.strip()
    assert out == "[]", out


def test_install_service_runs_the_supervisor_over_the_update_root() -> None:
    from edge_agent.tools.service import UnitSpec, render_unit

    unit = render_unit(UnitSpec(exec_start=["/usr/bin/edge-agent"],
                                config=Path("/etc/edge-agent/site.toml"),
                                update_root=Path("/opt/edge-agent")))
    assert ("ExecStart=/opt/edge-agent/current/venv/bin/python -m edge_agent supervise --root "
            "/opt/edge-agent --state-dir /var/lib/edge-agent -- run /etc/edge-agent/site.toml"
            in unit)
    assert "NotifyAccess=all" in unit and "ReadWritePaths=/var/lib/edge-agent /opt/edge-agent" \
        in unit
    with_url = render_unit(UnitSpec(
        exec_start=["/usr/bin/edge-agent"], config=Path("/etc/edge-agent/site.toml"),
        update_root=Path("/opt/edge-agent"),
        release_args=("--release-url", "https://fleet:8443/releases", "--release-ca",
                      "/etc/edge-agent/fleet-ca.pem")))
    assert ("--state-dir /var/lib/edge-agent --release-url https://fleet:8443/releases "
            "--release-ca /etc/edge-agent/fleet-ca.pem -- run" in with_url)
    plain = render_unit(UnitSpec(exec_start=["/usr/bin/edge-agent"],
                                 config=Path("/etc/edge-agent/site.toml")))
    assert "ExecStart=/usr/bin/edge-agent run" in plain and "NotifyAccess=main" in plain


def test_release_list_and_show_read_releases_back(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from edge_agent.fleet.cli import main
    from edge_agent.fleet.release import write_release

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "edge_agent-0.2.0-cp311-cp311-linux_x86_64.whl").write_bytes(b"not a real one")
    now = int(time.time())
    rel = write_release(wheels, tmp_path / "rels", KEYS, version="0.2.0", min_from="0.1.0",
                        issued=now, expires=now + 60, tags=[TAG])
    assert main(["release", "list", "--releases", str(tmp_path / "rels")]) == 0
    assert "0.2.0" in capsys.readouterr().out
    assert main(["release", "show", "0.2.0", "--releases", str(tmp_path / "rels")]) == 0
    out = capsys.readouterr().out
    assert "software v2000" in out and "[ok]" in out and "upgrades from 0.1.0" in out
    (rel.path / WHEELHOUSE).write_bytes(b"changed")
    assert main(["release", "show", "0.2.0", "--releases", str(tmp_path / "rels")]) == 0
    assert "DIFFERS" in capsys.readouterr().out
    assert main(["release", "show", "9.9.9", "--releases", str(tmp_path / "rels")]) != 0
