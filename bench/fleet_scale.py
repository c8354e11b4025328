"""Fleet rollout at scale: N simulated gateways take a config in waves through a real broker.

Every gateway is its own MQTT connection running the real gateway-side code (verifier, control
plane, trusted state and journal files; tests.support.simgateway), several gateways per
process. The fleet service (``edge-fleet serve``) runs as its own process against a SQLite (or
PostgreSQL) registry. Measured: time from ``rollout start`` to every gateway applied (the
rollout "succeeded"), and the service's CPU time over that span. Waves 1, 10, 50, 100 %, no
health-gate hold ("no wave waits").

With ``--instances N`` (N > 1) N services share the database and split the reports and
health through one ``$share/`` group; ``--db postgresql`` uses a throw-away schema on the test
PostgreSQL, ``--db postgresql://...`` one on that server. ``--profile DIR`` runs each service
under cProfile and prints its top entries. ``--starve-s S`` stops (SIGSTOP) every service for S
seconds right after the rollout starts, a service starved of CPU: the failed count must stay 0.

Usage: python bench/fleet_scale.py [--gateways 1000] [--procs 4] [--instances 1]
       [--db sqlite|postgresql|postgresql://...] [--hold-s 0] [--fail-pct 0] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

# Run as a script, Python puts bench/ first on sys.path, not the repository root where the
# test harness shared with the tests (tests.support) lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.fleet import actions as ops
from edge_agent.fleet import rollout as ro
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.tools.devbroker import Mosquitto
from tests.support.fleetkit import Pki, enrol_direct, running, serve_args, simgateway_args
from tests.support.pgdb import pg_schema

SEED = 1000


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def main() -> int:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="simulated-gateway processes")
    ap.add_argument("--db", default="sqlite",
                    help="sqlite, postgresql (the test server) or a postgresql:// URL")
    ap.add_argument("--instances", type=int, default=1, help="fleet service instances")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="run the services under cProfile, write and summarise DIR/svcN.prof")
    ap.add_argument("--keep-logs", type=Path, metavar="DIR",
                    help="copy the services' and simulated gateways' logs here")
    ap.add_argument("--starve-s", type=float, default=0.0,
                    help="SIGSTOP the services this long once the rollout has started")
    ap.add_argument("--hold-s", type=float, default=0.0, help="gateway health-gate hold")
    ap.add_argument("--fail-pct", type=float, default=0.0,
                    help="share of gateways whose health gate fails (abort test)")
    ap.add_argument("--timeout-s", type=float, default=300.0)
    args = ap.parse_args()
    if args.db not in ("sqlite", "postgresql") and not args.db.startswith("postgresql://"):
        ap.error("--db: expected sqlite, postgresql or a postgresql:// URL")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # mosquitto inherits this limit: one descriptor per connection, plus its own
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.gateways * 2 + 1024)),
                                                hard))
    print(f"seed {SEED}; {args.gateways} gateways in {args.procs} processes; db {args.db}; "
          f"{args.instances} service instance(s); "
          f"open files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; "
          f"{os.cpu_count()} CPUs")
    shm = Path("/dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-", dir=shm if shm.is_dir() else None))
    broker = Mosquitto()
    broker.start()
    try:
        with contextlib.ExitStack() as stack:
            if args.db == "postgresql":
                db = stack.enter_context(pg_schema())
            elif args.db.startswith("postgresql://"):
                db = stack.enter_context(pg_schema(args.db))
            else:
                db = f"sqlite:///{tmp / 'fleet.db'}"
            return run(args, tmp, broker, db, stack)
    finally:
        broker.close()
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, broker: Mosquitto, db: str,
        stack: contextlib.ExitStack) -> int:
    """The measured part."""
    reg = Registry(db)
    pki = Pki.from_seed(SEED)
    pki.init(reg)
    gws = [f"gw-{i:05d}" for i in range(args.gateways)]
    t = time.perf_counter()
    enrol_direct(reg, tmp / "gw", gws, "city", broker.url)
    print(f"enrolled {len(gws)} gateways in {time.perf_counter() - t:.1f} s "
          "(token, broker password hash, trust files)")
    n_fail = int(len(gws) * args.fail_pct / 100)
    failing = gws[::max(1, len(gws) // n_fail)][:n_fail] if n_fail else []
    svcs = []
    share = ("--share-group", "fleet") if args.instances > 1 else ()
    for i in range(args.instances):
        sargs = serve_args(db, broker.url, "--tick-s", "0.05", "--instance", f"bench-{i}",
                           *share)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            sargs = ["cProfile", "-o", str(args.profile / f"svc{i}.prof"), "-m", *sargs]
        svcs.append(stack.enter_context(running(sargs, tmp / f"serve{i}.log")))
    t = time.perf_counter()
    per = -(-len(gws) // args.procs)
    sims = []
    for i in range(args.procs):
        chunk = gws[i * per:(i + 1) * per]
        extra = ["--hold-s", str(args.hold_s)]
        if failing:
            extra += ["--fail", ",".join(set(failing) & set(chunk)) or "none"]
        simargs = simgateway_args(broker.url, tmp / "gw", chunk, *extra)
        sims.append(stack.enter_context(running(
            simargs, tmp / f"sim{i}.log",
            ready=f"ready {len(chunk)}", timeout_s=120)))
    print(f"{len(gws)} gateways connected and subscribed in {time.perf_counter() - t:.1f} s")
    payload = b'[gateway]\nsite = "city"\n' + (b"# filler\n" * 200)
    if failing:
        payload += b"# broken\n"
    cpu0 = sum(cpu_s(p.pid) for p in svcs)
    broker_cpu0 = cpu_s(broker.proc.pid) if broker.proc else 0.0
    sims_cpu0 = sum(cpu_s(p.pid) for p in sims)
    t0 = time.perf_counter()
    ops.start_rollout(reg, payload, ["all"], pki.release_keys, rollout_id="bench",
                      waves=[1, 10, 50, 100], abort_above_pct=5, abort_min_count=10,
                      wave_deadline_s=120)
    store = RolloutStore(reg)
    marks: dict[int, float] = {}
    if args.starve_s:
        for p in svcs:
            os.kill(p.pid, signal.SIGSTOP)
        time.sleep(args.starve_s)  # offers and reports pile up at the broker meanwhile
        for p in svcs:
            os.kill(p.pid, signal.SIGCONT)
    while True:
        state = store.core("bench")  # a short read: no per-gateway rows
        marks.setdefault(state["wave"], time.perf_counter() - t0)
        if state["status"] not in ro.ACTIVE:
            break
        if time.perf_counter() - t0 > args.timeout_s:
            print("timed out")
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    svc_cpu = sum(cpu_s(p.pid) for p in svcs) - cpu0
    broker_cpu = (cpu_s(broker.proc.pid) if broker.proc else 0.0) - broker_cpu0
    sims_cpu = sum(cpu_s(p.pid) for p in sims) - sims_cpu0
    counts = state["counts"]
    print(f"rollout {state['status']}: {counts}" +
          (f" ({state['abort_reason']})" if state["abort_reason"] else ""))
    print("wave starts (s after start): " +
          ", ".join(f"wave {w + 1} {s:.2f}" for w, s in sorted(marks.items())))
    what = "start to all applied" if state["status"] == ro.SUCCEEDED else "start to the end"
    print(f"{what}: {elapsed:.2f} s for {len(gws)} gateways "
          f"({len(gws) / elapsed:.0f} gateways/s)")
    print(f"failed: {counts.get(ro.FAILED, 0)}")
    for gw, why in reg.fetchall("SELECT gateway, reason FROM rollout_targets WHERE rollout = ? "
                                "AND status = ? ORDER BY gateway LIMIT 5", ("bench", ro.FAILED)):
        print(f"  {gw}: {why}")
    print(f"service CPU per gateway: {svc_cpu / len(gws) * 1000:.3f} ms "
          f"({args.instances} instance(s), db {args.db.split('?')[0]})")
    print(f"CPU during the rollout: service {svc_cpu:.2f} s, broker {broker_cpu:.2f} s, "
          f"simulated gateways {sims_cpu:.2f} s "
          f"({sims_cpu / len(gws) * 1000:.2f} ms per gateway verify-and-apply)")
    reg.close()
    if args.profile:
        for p in svcs:  # stopping writes the profile
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
        for i in range(len(svcs)):
            print(f"--- service {i}: top entries by own time")
            pstats.Stats(str(args.profile / f"svc{i}.prof")).sort_stats("tottime").print_stats(12)

    ok = state["status"] == (ro.SUCCEEDED if not failing else ro.ABORTED)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
