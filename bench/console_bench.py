"""The web console under a large fleet: page load time of /fleet for N gateways, the chart
query for 30 days of one point at 10 s resolution, and the console process's memory.

The registry is filled through the fleet's own intake (``record_state`` and ``record_health``
with an agent-shaped health document of 10 devices each), as N gateways reporting would leave
it; the ingest database gets 30 days of readings of one point every 10 s (259,200 rows) plus a
second point of the same device. The console runs as its own process (``edge-fleet console``);
times are wall-clock HTTP round trips from this process (login once, then GET), medians of
``--runs`` runs after one warm-up.

Usage: python bench/console_bench.py [--gateways 1000] [--days 30] [--runs 7]
       [--db sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.fleet.console.accounts import Accounts
from edge_agent.fleet.console.readings import ReadingsDb
from edge_agent.fleet.ingest.store import IngestStore
from edge_agent.fleet.registry import Registry
from edge_agent.tools.devbroker import free_port
from tests.support.fleetkit import running
from tests.support.pgdb import pg_schema

PASSWORD = "bench-password"


def health(i: int, now_ms: int) -> dict[str, object]:
    """A health document shaped like the agent's (edge_agent/runtime/agent.py)."""
    devices = {f"dev-{d}": {"status": "offline" if (i + d) % 97 == 0 else "online",
                            "unit_id": d + 1, "bus": "rs485-1", "polls": 1000 + d,
                            "good_polls": 990, "failed_polls": 10, "consecutive_failures": 0,
                            "last_good_ms": now_ms, "last_error": None,
                            "latency_ms": {"last": 12.5, "max": 40.1, "mean": 13.2}}
               for d in range(10)}
    return {"gateway": f"gw-{i:05d}", "site": f"site-{i % 40:02d}", "version": "0.1.0",
            "epoch": 3, "ts": now_ms, "uptime_s": 3600.0,
            "memory": {"rss_bytes": 40_000_000, "peak_rss_bytes": 42_000_000},
            "spool": {"batches": i % 7, "stored_bytes": 1000, "dropped_batches": i % 50 == 0},
            "buses": {"rs485-1": {"requests": 10000, "replies": 9990, "timeouts": 10}},
            "devices": devices}


def fill_registry(url: str, n: int) -> None:
    reg = Registry(url)
    now = int(time.time() * 1000)
    for i in range(n):
        gw = f"gw-{i:05d}"
        reg.add_gateway(gw, f"site-{i % 40:02d}", [f"zone-{i % 5}", "lamps" if i % 2 else
                                                   "pipes"], now)
        reg.record_state(gw, i % 23 != 0, now)
        reg.record_health(gw, health(i, now), now)
    Accounts(reg).add_user("bench", "viewer", PASSWORD, now)
    reg.close()


def fill_readings(url: str, days: int) -> int:
    IngestStore(url).close()
    db = ReadingsDb(url)
    end = int(time.time() * 1000)
    start = end - days * 86_400_000
    rows = [("gw-00001", 1, i // 30, "dev-1", point, t, "good", None, "f", None,
             230.0 + (i % 360) / 10 if point == "supply_voltage" else float(i % 100), None)
            for point in ("supply_voltage", "lamp_power")
            for i, t in enumerate(range(start, end, 10_000))]
    sql = ("INSERT INTO readings (gateway, epoch, seq, device, point, ts_ms, quality, "
           "exception_code, kind, value_int, value_real, value_text) VALUES "
           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    with db._lock:
        conn = db._conn
        if db.pg:
            with conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)
        else:
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
    db.close()
    return len(rows) // 2


def opener(base: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = op.open(f"{base}/login").read().decode()
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert token
    form = urllib.parse.urlencode({"user": "bench", "password": PASSWORD,
                                   "csrf": token.group(1)}).encode()
    op.open(f"{base}/login", form).read()
    return op


def timed(op: urllib.request.OpenerDirector, url: str, runs: int) -> tuple[float, int]:
    op.open(url).read()  # warm-up
    times, size = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        body = op.open(url).read()
        times.append(time.perf_counter() - t0)
        size = len(body)
    return statistics.median(times) * 1000, size


def browser_load(base: str, runs: int) -> None:
    """Page load in headless chromium (navigation start to the load event), medians."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                              args=["--no-sandbox"])
        page = b.new_page()
        page.goto(f"{base}/login")
        page.fill("input[name=user]", "bench")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/fleet")
        for path in ("/fleet", "/readings?gw=gw-00001&dev=dev-1&pt=supply_voltage&range=30d"):
            times = []
            for _ in range(runs + 1):
                page.goto(base + path, wait_until="load")
                times.append(page.evaluate(
                    "() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return n.loadEventEnd - n.startTime; }"))
            print(f"browser load of {path.split('?')[0]}: median "
                  f"{statistics.median(times[1:]):.0f} ms (navigation start to load event)")
        b.close()


def run(reg_url: str, ingest_url: str, args: argparse.Namespace, tmp: Path) -> None:
    t0 = time.perf_counter()
    fill_registry(reg_url, args.gateways)
    print(f"registry: {args.gateways} gateways with health in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    n = fill_readings(ingest_url, args.days)
    print(f"ingest: {n} readings of one point ({args.days} days at 10 s) and as many of a "
          f"second, in {time.perf_counter() - t0:.1f} s")
    db = ReadingsDb(ingest_url)
    end = int(time.time() * 1000)
    q = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        buckets = db.series("gw-00001", "dev-1", "supply_voltage", end - args.days * 86_400_000,
                            end, 450)
        q.append(time.perf_counter() - t0)
    db.close()
    print(f"chart query ({args.days} d of one point -> {len(buckets)} buckets): median "
          f"{statistics.median(q) * 1000:.0f} ms")
    port = free_port()
    with running(["edge_agent.fleet.cli", "console", "--db", reg_url, "--ingest-db", ingest_url,
                  "--listen", f"127.0.0.1:{port}"], tmp / "console.log",
                 ready="console http://") as proc:
        base = f"http://127.0.0.1:{port}"
        op = opener(base)
        # timed once the alarm evaluator is through its first passes (latest values, health
        # history), as in steady state
        for _ in range(600):
            if json.loads(op.open(base + "/healthz").read())["evaluator"]["cycles"] >= 3:
                break
            time.sleep(0.2)
        for name, path in (("fleet page", "/fleet"), ("fleet page, filtered", "/fleet?site=site-03"
                           "&state=online&q=gw-0"), ("alarms page", "/alarms"),
                           (f"readings page, {args.days} d chart",
                            "/readings?gw=gw-00001&dev=dev-1&pt=supply_voltage&range=30d")):
            ms, size = timed(op, base + path, args.runs)
            print(f"{name}: median {ms:.0f} ms, {size / 1024:.0f} KiB")
        if Path("/usr/bin/chromium").exists():
            browser_load(base, args.runs)
        health = op.open(base + "/healthz").read().decode()
        print(f"console health: {health}")
        rss = psutil.Process(proc.pid).memory_info().rss
        print(f"console process RSS after the runs: {rss / 2**20:.1f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="console-bench-") as d:
        tmp = Path(d)
        if args.db == "sqlite":
            run(f"sqlite:///{tmp / 'fleet.db'}", f"sqlite:///{tmp / 'ingest.db'}", args, tmp)
        else:
            with pg_schema() as reg_url, pg_schema() as ingest_url:
                run(reg_url, ingest_url, args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
