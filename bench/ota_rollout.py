"""Time from ``rollout start --release`` to every gateway committed, on N real gateways.

Each gateway is a real install root (a copy of one installed release), a real supervisor and
agent polling a simulated Modbus TCP device and reporting to a private mosquitto; the fleet
service runs the rollout; the release is served over HTTPS. Prints figures, never fails on
timing. Usage::

    .venv/bin/python -m bench.ota_rollout --gateways 20 --waves 10,50,100
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from edge_agent.fleet import actions as ops
from edge_agent.fleet import rollout as ro
from edge_agent.fleet.httpd import server_tls_context
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.release_http import ReleaseServer
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.protocol.release import parse_manifest
from edge_agent.update.journal import load_journal
from tests.support.brokers import Mosquitto
from tests.support.fleetkit import Pki, enrol_direct, running, serve_args, wait_until
from tests.support.otakit import Fleet, Gateway, Supervised, settle
from tests.support.releasekit import build_kit
from tests.support.stopkit import tcp_simulator, tcp_site
from tests.support.tlskit import make_tls


def main() -> None:
    """Run one rollout over N gateways and print its figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--waves", default="10,50,100")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ota-bench-") as scratch, \
            contextlib.ExitStack() as stack:
        tmp = Path(scratch)
        kit = build_kit(tmp / "kit")
        bundle = kit.releases / kit.bumped / "software.bundle"
        print(f"releases built in {kit.build_s:.1f} s; first installed in {kit.install_s:.1f} s; "
              f"wheelhouse {(kit.releases / kit.bumped / 'wheelhouse.tar').stat().st_size} B, "
              f"signed bundle {bundle.stat().st_size} B")
        broker = Mosquitto()
        broker.start()
        stack.callback(broker.close)
        tls = make_tls(tmp / "tls")
        server = ReleaseServer(kit.releases, "127.0.0.1", 0,
                               server_tls_context(tls.cert, tls.key)).start()
        stack.callback(server.close)
        fleet = Fleet(f"https://127.0.0.1:{server.port}/releases", tls.ca_cert, server)
        (tmp / "sim").mkdir()
        sim_site = tcp_site(tmp / "sim", n=1, poll_s=1.0)
        port = int(sim_site.read_text().split("port = ")[1].split("\n")[0])
        stack.enter_context(tcp_simulator(sim_site, tmp / "sim" / "sim.log"))
        db = f"sqlite:///{tmp / 'fleet.db'}"
        reg = Registry(db)
        pki = Pki.from_seed(5)
        pki.init(reg)
        ids = [f"gw-{i:03d}" for i in range(args.gateways)]
        enrol_direct(reg, tmp / "gw", ids, "north", broker.url)
        stack.enter_context(running(serve_args(db, broker.url, "--tick-s", "0.2"),
                                    tmp / "serve.log"))
        pairs = []
        for gid in ids:
            home = tmp / gid
            home.mkdir()
            state = tmp / "gw" / gid
            site = tcp_site(home, n=1, poll_s=1.0, state_dir=state, ports=[port])
            site.write_text(site.read_text().replace('id = "gw-test"', f'id = "{gid}"'))
            gw = Gateway(kit.new_root(home / "root"), state, state, site, home)
            sup = Supervised(gw, broker, release=fleet, deadline_s=120.0)
            stack.callback(sup.close)
            pairs.append((gw, sup))
        for gw, sup in pairs:
            settle(gw, sup, kit.first, timeout_s=300)
        print(f"{len(pairs)} gateways running {kit.first}, healthy")
        manifest = parse_manifest((kit.releases / kit.bumped / "manifest.json").read_bytes())
        started = time.monotonic()
        ops.start_rollout(reg, manifest.to_bytes(), ["site:north"], pki.release_keys,
                          kind="software", version=manifest.number,
                          waves=ops.parse_waves(args.waves), abort_above_pct=20,
                          abort_min_count=3, wave_deadline_s=600, rollout_id="bench")
        store = RolloutStore(reg)
        wait_until(lambda: store.load("bench")[0]["status"] not in ro.ACTIVE, 1200,
                   "the rollout")
        took = time.monotonic() - started
        final = store.load("bench")[0]
        committed = [load_journal(gw.root).committed == kit.bumped for gw, _ in pairs]
        staged = [gw.tmp.joinpath("supervisor.log").stat().st_size for gw, _ in pairs]
        print(f"rollout {final['status']}: {sum(committed)}/{len(pairs)} committed "
              f"{kit.bumped}; rollout start -> {final['status']} in {took:.1f} s "
              f"(waves {args.waves}); supervisor log median {statistics.median(staged)} B")
        reg.close()


if __name__ == "__main__":
    main()
