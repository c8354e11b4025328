"""Software updates end to end: real releases, a real broker and device, the real supervisor.

The session builds real releases once (``tests/support/releasekit.py``: the current tree, the
same tree one minor version up, and three broken ones derived from it) and installs the first
once; each test copies that install root. The supervisor runs from the installed release's own
virtualenv; the agent it starts polls a simulated Modbus TCP device and reports to mosquitto,
and writes the health file the supervisor gates on. Releases are served over HTTPS (Range).

The kill-9 matrix: ``EDGE_OTA_FULL_MATRIX=1`` runs every step, once and "forever"; by default
an essential subset runs. After each kill the test restarts what died as systemd would
(``Restart=always``, the whole process group killed with the main process) and checks that the
gateway comes back on a working release, healthy, with a settled, consistent journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.control.truststore import save_trust
from edge_agent.fleet.httpd import server_tls_context
from edge_agent.fleet.release_http import ReleaseServer
from edge_agent.update.journal import CRASH_ENV, load_journal
from edge_agent.update.releases import current_version
from edge_agent.update.supervisor import read_health
from tests.support.brokers import Mosquitto
from tests.support.otakit import Fleet, Gateway, Supervised, settle, supervised
from tests.support.releasekit import Kit, load_or_build_kit
from tests.support.stopkit import tcp_simulator, tcp_site
from tests.support.tlskit import make_tls

# one xdist worker for the whole module (make test: --dist loadgroup): the releases are built once
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ota")]
FULL = os.environ.get("EDGE_OTA_FULL_MATRIX") == "1"


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    # Built once per session even when xdist runs these tests on both workers: the base temp
    # directory's parent is shared by the workers, and a lock makes the second one wait and
    # reuse the first one's build (the pattern pytest-xdist documents).
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's
    with (shared / "ota-kit.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        k = load_or_build_kit(shared / "ota-kit")
    print(f"\nreleases built in {k.build_s:.1f} s, first installed in {k.install_s:.1f} s; "
          f"wheelhouse {(k.releases / k.bumped / 'wheelhouse.tar').stat().st_size} bytes")
    return k


@pytest.fixture(scope="module")
def fleet(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tls = make_tls(tmp_path_factory.mktemp("ota-tls"))
    server = ReleaseServer(kit.releases, "127.0.0.1", 0,
                           server_tls_context(tls.cert, tls.key)).start()
    try:
        yield Fleet(f"https://127.0.0.1:{server.port}/releases", tls.ca_cert, server)
    finally:
        server.close()


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One simulated Modbus TCP device the agents of this module poll; its port."""
    tmp = tmp_path_factory.mktemp("ota-sim")
    site = tcp_site(tmp, n=1, poll_s=0.5)
    port = int(site.read_text().split("port = ")[1].split("\n")[0])
    with tcp_simulator(site, tmp / "sim.log"):
        yield port


@pytest.fixture
def gateway(kit: Kit, device: int, tmp_path: Path) -> Gateway:
    state = tmp_path / "state"
    site = tcp_site(tmp_path, n=1, poll_s=0.5, state_dir=state, ports=[device])
    trust_dir = tmp_path / "trust"
    save_trust(trust_dir, kit.trust, fsync=False)
    return Gateway(kit.new_root(tmp_path / "root"), state, trust_dir, site, tmp_path)


def stage(gw: Gateway, kit: Kit, fleet: Fleet, version: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``edge-agent update stage`` as a process (the fault hook kills it)."""
    bundle = gw.tmp / f"{version}.bundle"
    bundle.write_bytes(kit.bundle(version))
    return subprocess.run([sys.executable, "-m", "edge_agent", "update", "stage", "--root",
                           str(gw.root), "--state-dir", str(gw.trust_dir), "--bundle",
                           str(bundle), "--url", fleet.url, "--cafile", str(fleet.cafile)],
                          capture_output=True, text=True, env=env, check=False, timeout=300)


def test_a_good_release_commits_and_becomes_the_floor(kit: Kit, fleet: Fleet, gateway: Gateway,
                                                      broker: Mosquitto) -> None:
    gw = gateway
    with supervised(gw, broker, env={"EDGE_SUPERVISOR_NO_REEXEC": "0"}) as sup:
        first = settle(gw, sup, kit.first)
        exe = Path(f"/proc/{sup.proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert f"releases/{kit.first}/" in os.path.realpath(exe) or "current" in exe
        staged = stage(gw, kit, fleet, kit.bumped)
        assert staged.returncode == 0, staged.stdout + staged.stderr
        report = json.loads(staged.stdout)
        assert report["result"] == "switched" and report["previous"] == kit.first
        switched = time.monotonic()
        health = settle(gw, sup, kit.bumped)
        print(f"\nstaged {report['bytes']} bytes in {report['staged_s']} s; switch to "
              f"healthy+committed in {time.monotonic() - switched:.1f} s")
        j = load_journal(gw.root)
        assert (j.step, j.committed, j.previous) == ("commit", kit.bumped, kit.first)
        assert health["pid"] != first["pid"] and sup.deaths == []
        # the floor moved: the first release is now refused, and nothing is touched
        again = stage(gw, kit, fleet, kit.first)
        assert again.returncode == 1 and "older than the committed" in again.stdout
        assert current_version(gw.root) == kit.bumped
        # The supervisor updates itself only with a committed release: when its agent next
        # exits, it re-executes from the new release's venv (same pid, new code).
        os.kill(int(health["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        again_healthy = settle(gw, sup, kit.bumped, not_pid=health["pid"])
        exe = Path(f"/proc/{sup.proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert exe == str(gw.root / "releases" / kit.bumped / "venv" / "bin" / "python"), exe
        assert "re-executing the committed release" in (gw.tmp / "supervisor.log").read_text()
        assert again_healthy["version"] == kit.bumped and sup.deaths == []
    assert sorted(p.name for p in (gw.root / "releases").iterdir()) == [kit.first, kit.bumped]


def test_broken_releases_are_rolled_back_by_the_gateway_itself(
        kit: Kit, gateway: Gateway, own_broker: Mosquitto) -> None:
    """The network is cut after each download: the release server is gone and the broker is
    down while the new release fails and the supervisor switches back on its own."""
    gw = gateway
    tls = make_tls(gw.tmp / "tls")
    with supervised(gw, own_broker, deadline_s=3.0) as sup:
        before = settle(gw, sup, kit.first)
        for kind in ("crash", "never-healthy", "hang"):
            bad = kit.broken[kind]
            server = ReleaseServer(kit.releases, "127.0.0.1", 0,
                                   server_tls_context(tls.cert, tls.key)).start()
            fleet = Fleet(f"https://127.0.0.1:{server.port}/releases", tls.ca_cert, server)
            try:
                staged = stage(gw, kit, fleet, bad)
                switched = time.monotonic()  # stage returns once `current` is switched
            finally:
                server.close()
            own_broker.stop()   # the network is cut: no fleet, no broker
            assert staged.returncode == 0, staged.stdout + staged.stderr
            wait_for(lambda: load_journal(gw.root).step == "rolled_back"
                     and current_version(gw.root) == kit.first, 60, "the rollback, offline")
            offline_s = time.monotonic() - switched
            own_broker.start()
            before = settle(gw, sup, kit.first, not_pid=before["pid"])
            print(f"\n{kind}: switched back offline {offline_s:.1f} s after the switch")
            print(f"{kind}: back on {kit.first} and healthy {time.monotonic() - switched:.1f} "
                  "s after the switch (2 starts, 3 s gate; broker restarted on the way)")
            j = load_journal(gw.root)
            assert j.step == "rolled_back" and j.committed == kit.first and bad in j.failed
            assert j.attempts == 2, j.to_json()
            if kind == "crash":
                assert "exited with code 3" in j.reason
                assert any("crashing at start" in line for line in j.log_tail)
            elif kind == "never-healthy":
                assert "not healthy within" in j.reason
                assert any("never healthy" in line for line in j.log_tail)
            else:
                assert "no health report" in j.reason
            again = stage(gw, kit, fleet, bad)
            assert again.returncode == 1 and "was rolled back here" in again.stdout
    assert sup.deaths == []


STEPS = ["download", "verify", "unpack", "install", "switch", "start", "health", "commit"]
ESSENTIAL = [("switch", "once"), ("start", "forever"), ("download", "forever")]
MATRIX = [(s, m) for s in STEPS for m in ("once", "forever")] if FULL else ESSENTIAL


@pytest.mark.parametrize(("step", "mode"), MATRIX)
def test_kill_9_at_every_step(kit: Kit, fleet: Fleet, gateway: Gateway, broker: Mosquitto,
                              step: str, mode: str) -> None:
    gw = gateway
    env = {**os.environ, CRASH_ENV: step + (":once" if mode == "once" else "")}
    with supervised(gw, broker, env=env) as sup:
        before = settle(gw, sup, kit.first)
        codes = []
        for _ in range(5):  # the retained bundle is offered again after each restart
            done = stage(gw, kit, fleet, kit.bumped, env)
            codes.append(done.returncode)
            if done.returncode != -9:
                break
        assert -9 in codes or step in ("start", "health", "commit"), codes
        # where it comes back: the new release if the trial could run, else the old one
        if step in STAGING_STEPS and mode == "forever":
            want = kit.first
        elif step == "start" and mode == "forever":
            want = kit.first    # every start kills the supervisor: the loop guard rolls back
        else:
            want = kit.bumped
        switched = not (step in STAGING_STEPS and mode == "forever")
        settle(gw, sup, want, not_pid=before["pid"] if switched else None)
        j = load_journal(gw.root)
        if want == kit.bumped:
            assert (j.step, j.committed) == ("commit", kit.bumped), j.to_json()
        elif step == "start":
            assert j.step == "rolled_back" and kit.bumped in j.failed, j.to_json()
        else:
            assert j.step == "refused" and "given up" in j.reason, j.to_json()
        print(f"\nkill -9 at {step} ({mode}): stage exits {codes}, supervisor deaths "
              f"{sup.deaths}, settled on {want} at step {j.step}")


STAGING_STEPS = ("download", "verify", "unpack", "install")


def test_a_release_rolls_out_in_waves_through_the_fleet(
        kit: Kit, fleet: Fleet, device: int, broker: Mosquitto, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``rollout start --release``: the fleet signs the manifest for its gateways, publishes it
    on desired/software, each supervised agent stages it, and the committed reports end the
    rollout; ``edge-fleet rollout status`` shows each gateway's software state and version."""
    from edge_agent.fleet import actions as ops
    from edge_agent.fleet import rollout as ro
    from edge_agent.fleet.cli import main as fleet_cli
    from edge_agent.fleet.registry import Registry
    from edge_agent.fleet.rollout_driver import RolloutStore
    from edge_agent.protocol.release import parse_manifest
    from tests.support.fleetkit import Pki, enrol_direct, running, serve_args, wait_until

    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    reg = Registry(db)
    pki = Pki.from_seed(11)
    pki.init(reg)
    gws = ["gw-ota-0", "gw-ota-1"]
    enrol_direct(reg, tmp_path / "gw", gws, "north", broker.url)
    sups, gateways = [], []
    reports: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(watch_reports(broker, reports))
        stack.enter_context(running(serve_args(db, broker.url, "--tick-s", "0.2"),
                                    tmp_path / "serve.log"))
        for gw_id in gws:
            home = tmp_path / gw_id
            home.mkdir()
            state = tmp_path / "gw" / gw_id
            site = tcp_site(home, n=1, poll_s=0.5, state_dir=state, ports=[device])
            site.write_text(site.read_text().replace('id = "gw-test"', f'id = "{gw_id}"'))
            gw = Gateway(kit.new_root(home / "root"), state, state, site, home)
            sup = Supervised(gw, broker, release=fleet)
            stack.callback(sup.close)
            sups.append(sup)
            gateways.append(gw)
        for gw, sup in zip(gateways, sups, strict=True):
            settle(gw, sup, kit.first)
        manifest = parse_manifest((kit.releases / kit.bumped / "manifest.json").read_bytes())
        started = time.monotonic()
        ops.start_rollout(reg, manifest.to_bytes(), ["site:north"], pki.release_keys,
                          kind="software", version=manifest.number, waves=[50, 100],
                          abort_above_pct=20, abort_min_count=1, wave_deadline_s=120,
                          rollout_id="sw")
        store = RolloutStore(reg)
        wait_until(lambda: store.load("sw")[0]["status"] == ro.SUCCEEDED, 150,
                   "the software rollout")
        took = time.monotonic() - started
        for gw, sup in zip(gateways, sups, strict=True):
            settle(gw, sup, kit.bumped)
            assert load_journal(gw.root).committed == kit.bumped
        with capsys.disabled():  # shown with -s: the figure, and what the operator sees
            print(f"\nrollout start to succeeded on {len(gws)} gateways: {took:.1f} s")
        capsys.readouterr()
        assert fleet_cli(["rollout", "status", "sw", "--db", db]) == 0
        out = capsys.readouterr().out
        with capsys.disabled():
            print(out)
        for gw_id in gws:  # "    gw-ota-0  applied  applied 0.2.0  running 0.2.0"
            line = next(x for x in out.splitlines() if x.split()[:1] == [gw_id])
            assert f"applied {kit.bumped}" in line and f"running {kit.bumped}" in line, out
        # A release that crashes at start: the first wave's gateway rolls it back by itself,
        # reports why, and the rollout aborts at its threshold before the second wave.
        crash = parse_manifest((kit.releases / kit.broken["crash"] / "manifest.json")
                               .read_bytes())
        before = {gw.root: read_health(gw.state) for gw in gateways}
        ops.start_rollout(reg, crash.to_bytes(), ["site:north"], pki.release_keys,
                          kind="software", version=crash.number, waves=[50, 100],
                          abort_above_pct=20, abort_min_count=1, wave_deadline_s=120,
                          rollout_id="crash")
        wait_until(lambda: store.load("crash")[0]["status"] not in ro.ACTIVE, 150,
                   "the crashing release's rollout to end")
        result = store.load("crash")[0]
        assert result["status"] == ro.ABORTED, result
        assert sorted(result["gw"].values()) == [ro.FAILED, ro.WAITING], result["gw"]
        failed_gw = next(g for g, st in result["gw"].items() if st == ro.FAILED)
        assert "rolled_back" in result["reasons"][failed_gw]
        # what went to reported: progress, commits, the rollback with its log ("switched"
        # races the supervisor stopping that agent, so it is not required here)
        seen = {(r.get("result"), r.get("release")) for r in reports if r.get("kind") == "software"}
        for want in (("downloading", kit.bumped), ("applied", kit.bumped),
                     ("rolled_back", crash.version)):
            assert want in seen, (want, sorted(map(str, seen)))
        rolled = next(r for r in reports if r.get("result") == "rolled_back")
        # the rollback, its reason and the failed release's last lines, as the operator sees it
        capsys.readouterr()
        assert fleet_cli(["rollout", "status", "crash", "-v", "--db", db]) == 0
        out = capsys.readouterr().out
        with capsys.disabled():
            print(out)
        line = next(x for x in out.splitlines() if x.split()[:1] == [failed_gw])
        assert f"rolled_back {crash.version}" in line and f"running {kit.bumped}" in line, out
        assert f"reason: {str(rolled['reason'])[:40]}" in out and "crashing at start" in out, out
        assert rolled["version"] == crash.number and "crashing at start" in str(rolled["log_tail"])
        for gw, sup in zip(gateways, sups, strict=True):
            settle(gw, sup, kit.bumped)
            j = load_journal(gw.root)
            if gw.state.name == failed_gw:
                assert j.step == "rolled_back" and crash.version in j.failed
                assert read_health(gw.state)["pid"] != before[gw.root]["pid"]
            else:
                assert j.step == "commit"  # never offered: the abort came first
    reg.close()


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` on timeout."""
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def watch_reports(broker: Mosquitto, into: list[dict[str, object]]) -> Iterator[None]:
    """Collect every document published on ``edge/+/reported`` and ``reported/software``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: into.append(json.loads(msg.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe("edge/+/reported/#", qos=1)  # config and software
    client.loop_start()
    try:
        yield
    finally:
        client.loop_stop()
        client.disconnect()
