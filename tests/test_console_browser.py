"""The web console in a real browser: Debian's headless chromium driven by Playwright, against
a simulated fleet (mosquitto, the fleet service, simulated gateways applying rollouts, a
simulated site polled by a real agent, the ingest and the console, all real processes).

One browser and one stack serve the whole module. Skipped, with the reason, where chromium or
the playwright package is missing (``make test`` installs both). With EDGE_CONSOLE_SCREENSHOTS=DIR
the tests also save a screenshot of each page there (docs/img/ is made that way).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

from edge_agent.fleet import actions as ops
from edge_agent.fleet.console.accounts import Accounts
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.protocol.bundle import make_bundle
from edge_agent.protocol.keys import write_private
from tests import conftest
from tests.support.brokers import Mosquitto, free_port
from tests.support.fleetkit import (
    Pki,
    enrol_direct,
    running,
    serve_args,
    simgateway_args,
    wait_until,
)
from tests.support.sitekit import agent, control, ingest_process, simulator, write_site

CHROMIUM = "/usr/bin/chromium"
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("the playwright package is not installed (pip install -e '.[test]')",
                allow_module_level=True)
if not Path(CHROMIUM).exists():  # pragma: no cover - make test installs it
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (scripts/system-deps.sh)",
                allow_module_level=True)

# one worker runs the module: its stack (and browser) is built once
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("console-browser")]
SEED = 16
SIMS = ["sim-01", "sim-02", "sim-03"]
PAYLOAD = b'[gateway]\nsite = "block-a"\n# console test config\n'
WAIT_MS = 60_000
SHOTS = os.environ.get("EDGE_CONSOLE_SCREENSHOTS")
OPERATOR, VIEWER, PASSWORD = "olga", "victor", "console-test-pw"
INTERLOCKS = """
[interlocks.cabinet]
plans = [1, 2, 3]
"""


def shot(page: Page, name: str) -> None:
    """Save a screenshot of the page when asked to (EDGE_CONSOLE_SCREENSHOTS)."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        # bytes written here: with path= Playwright writes from an executor thread that
        # outlives the test
        (Path(SHOTS) / f"console-{name}.png").write_bytes(page.screenshot())


class Stack:
    """The running fleet, its console's URL and the registry the test drives."""

    def __init__(self, url: str, reg: Registry, pki: Pki, sim_sock: Path, ingest: Path,
                 db: str, broker_url: str, operator_key: Path) -> None:
        self.url, self.reg, self.pki, self.sim_sock, self.ingest = url, reg, pki, sim_sock, ingest
        self.db, self.broker_url, self.operator_key = db, broker_url, operator_key


@pytest.fixture(scope="module")
def stack(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    db, ingest_db = f"sqlite:///{tmp / 'fleet.db'}", tmp / "ingest.db"
    reg = Registry(db)
    pki = Pki.from_seed(SEED)
    operator = Pki.key(SEED, "operator")  # root v1 delegates it: the console signs with it
    ops.init_root(reg, [k.public for k in pki.roots], 2, [k.public for k in pki.releases], 2,
                  list(pki.roots), operator_keys=[operator.public])
    write_private(tmp / "operator.key", operator)
    enrol_direct(reg, tmp / "gw", [*SIMS, "ghost-01"], "block-a", broker.url, tags=["roll"])
    # the agent's gateway is enrolled (it pins the root, so it takes signed commands)
    enrol_direct(reg, tmp / "gw", ["gw-test"], "test-site", broker.url, tags=["lamps"])
    accounts = Accounts(reg)
    accounts.add_user(OPERATOR, "operator", PASSWORD, 0)
    accounts.add_user(VIEWER, "viewer", PASSWORD, 0)
    site = write_site(tmp, [("lamp", "rs485", 3, "streetlight"),
                            ("cabinet", "lan", 1, "signal_cabinet")], health_s=1.0,
                      extra=INTERLOCKS)
    site.write_text(site.read_text().replace(f'state_dir = "{tmp / "state"}"',
                                             f'state_dir = "{tmp / "gw" / "gw-test"}"'))
    port = free_port()
    with ExitStack() as stack:
        stack.enter_context(running(serve_args(db, broker.url, "--tick-s", "0.1"),
                                    tmp / "serve.log"))
        stack.enter_context(running(simgateway_args(broker.url, tmp / "gw", SIMS, "--no-fsync"),
                                    tmp / "simgw.log", ready=f"ready {len(SIMS)}"))
        sock = stack.enter_context(simulator(site, tmp))
        stack.enter_context(agent(site, broker.url, tmp))
        stack.enter_context(ingest_process(broker.url, f"sqlite:///{ingest_db}", tmp))
        stack.enter_context(running(
            ["edge_agent.fleet.cli", "console", "--db", db, "--ingest-db", str(ingest_db),
             "--listen", f"127.0.0.1:{port}", "--alarm-delay-s", "1", "--evaluate-s", "0.5",
             "--operator-key", str(tmp / "operator.key"), "--broker", broker.url],
            tmp / "console.log", ready="console http://"))
        yield Stack(f"http://127.0.0.1:{port}", reg, pki, sock, ingest_db, db, broker.url,
                    tmp / "operator.key")
    reg.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    before = set(psutil.Process(os.getpid()).children())
    with sync_playwright() as p:
        # Chromium's renderers come and go between the tests: the Playwright driver's process
        # tree (the browser is in it) belongs to this module, which closes it at its end.
        driver = set(psutil.Process(os.getpid()).children()) - before
        conftest.OWNED_TREES.update(d.pid for d in driver)
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()
    conftest.OWNED_TREES.difference_update(d.pid for d in driver)


def signed_in(browser: Browser, stack: Stack, user: str) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 760}).new_page()
    page.goto(f"{stack.url}/login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/fleet")
    return page


def test_sign_in_and_see_the_gateways(browser: Browser, stack: Stack) -> None:
    page = browser.new_context().new_page()
    page.goto(f"{stack.url}/fleet")
    page.wait_for_url("**/login")  # no session: the sign-in page
    shot(page, "login")
    page.fill("input[name=user]", OPERATOR)
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    expect(page.locator("#login-message")).to_contain_text("wrong user name or password")
    page.context.close()
    page = signed_in(browser, stack, OPERATOR)
    for gw in [*SIMS, "ghost-01", "gw-test"]:
        expect(page.locator(f'tr[data-gateway="{gw}"]')).to_be_visible()
    # online from the retained state: poll the page until the agent and sims said so
    row = page.locator('tr[data-gateway="gw-test"] td.ok')
    for _ in range(60):
        if row.count():
            break
        page.wait_for_timeout(500)
        page.reload()
    expect(row).to_have_text("online")
    page.select_option("select[name=site]", "block-a")
    page.click(".filters button")
    expect(page.locator("#fleet tbody tr")).to_have_count(4)
    page.goto(f"{stack.url}/fleet")
    shot(page, "fleet")
    page.click('a[href="/gateways/gw-test"]')
    expect(page.locator("#devices")).to_contain_text("supply_voltage", timeout=WAIT_MS)
    shot(page, "gateway")
    page.context.close()


def _latest_value(ingest: Path, device: str, point: str) -> float:
    with sqlite3.connect(ingest) as conn:
        row = conn.execute("SELECT COALESCE(value_real, value_int) FROM readings WHERE device = "
                           "? AND point = ? AND quality = 'good' ORDER BY ts_ms DESC LIMIT 1",
                           (device, point)).fetchone()
    return float(row[0])


def test_a_chart_of_the_simulated_cabinet(browser: Browser, stack: Stack) -> None:
    page = signed_in(browser, stack, VIEWER)
    # the signal cabinet's cycle second counts up every second: a saw-tooth
    url = f"{stack.url}/readings?gw=gw-test&dev=cabinet&pt=cycle_second&range=1h"
    chart = page.locator("#chart")
    for _ in range(120):
        # zoomed to the last minute: a bucket per reading (the 1 h preset has 8 s buckets)
        now_ms = int(time.time() * 1000)
        page.goto(f"{url}&start={now_ms - 60_000}&end={now_ms + 1000}")
        if chart.count() and int(chart.get_attribute("data-count") or 0) >= 8:
            break
        page.wait_for_timeout(500)
    assert int(chart.get_attribute("data-count") or 0) >= 8
    assert len((page.locator("#chart polyline.line").get_attribute("points") or "").split()) >= 4
    # the latest value shown is the simulator's, as the ingest stored it
    cell = page.locator("#latest tr", has_text="cycle_length").locator("td").nth(1)
    assert float(cell.inner_text()) == _latest_value(stack.ingest, "cabinet", "cycle_length")
    expect(page.locator("#latest")).to_contain_text("good")
    shot(page, "readings")
    for preset in ("6h", "24h", "7d", "30d"):
        page.click(f'.ranges a:text-is("{preset}")')
        expect(page.locator(".ranges a.here")).to_have_text(preset)
    page.context.close()


def _rollout(stack: Stack, targets: list[str], rid: str, waves: list[int]) -> None:
    ops.start_rollout(stack.reg, PAYLOAD, targets, stack.pki.release_keys, waves=waves,
                      wave_deadline_s=600, rollout_id=rid)


def test_a_rollout_fills_its_waves_live_and_an_operator_pauses_another(
        browser: Browser, stack: Stack) -> None:
    page = signed_in(browser, stack, OPERATOR)
    page.goto(f"{stack.url}/rollouts")
    _rollout(stack, [f"gw:{g}" for g in SIMS], "fills", [34, 100])
    section = page.locator('section[data-rollout="fills"]')
    expect(section).to_be_visible(timeout=WAIT_MS)  # drawn when the event stream saw it
    expect(section.locator('[data-field="status"]')).to_have_text("succeeded", timeout=WAIT_MS)
    applied = section.locator('[data-count="applied"]')
    expect(applied.nth(0)).to_have_text("2")
    expect(applied.nth(1)).to_have_text("1")
    # ghost-01 never answers: this rollout waits in its first waves until paused
    _rollout(stack, ["gw:ghost-01", "gw:sim-01"], "waits", [50, 100])
    waits = page.locator('section[data-rollout="waits"]')
    expect(waits).to_be_visible(timeout=WAIT_MS)
    shot(page, "rollouts")
    # the page is the one the event stream drew (no reload under way) before it is clicked
    expect(page.locator('body[data-live="open"]')).to_have_count(1, timeout=WAIT_MS)
    waits.locator('button[data-verb="pause"]').click()
    expect(page.locator('section[data-rollout="waits"] [data-field="status"]')).to_have_text(
        "paused", timeout=WAIT_MS)
    # the audit row is written after the command is queued: it may trail the status
    wait_until(lambda: any(e[2] == "rollout pause" and e[3] == "waits"
                           for e in Accounts(stack.reg).audit_log()), 30, "the audit entry")
    page.context.close()


def test_an_operator_starts_a_rollout_from_a_signed_bundle_file(
        browser: Browser, stack: Stack, tmp_path: Path) -> None:
    row = stack.reg.fetchone("SELECT last FROM versions WHERE kind = 'config'")
    version = (int(row[0]) if row else 0) + 1
    now = int(time.time())
    bundle = tmp_path / "site.bundle"
    bundle.write_bytes(make_bundle("config", version, PAYLOAD + b"# uploaded\n",
                                   stack.pki.release_keys, issued=now, expires=now + 3600,
                                   gateways=["sim-02"]))
    page = signed_in(browser, stack, OPERATOR)
    page.goto(f"{stack.url}/rollouts")
    page.click(".upload summary")
    page.set_input_files("input[name=bundle]", str(bundle))
    page.fill("input[name=waves]", "100")
    page.click("#upload button[type=submit]")
    expect(page.locator("#upload-result")).to_contain_text(f"config v{version} to 1 gateways")
    rid = (page.locator("#upload-result").inner_text()).split()[1]
    section = page.locator(f'section[data-rollout="{rid}"]')
    expect(section.locator('[data-field="status"]')).to_have_text("succeeded", timeout=WAIT_MS)
    # the same file again is refused: its version is no longer above the fleet's
    expect(page.locator('body[data-live="open"]')).to_have_count(1, timeout=WAIT_MS)
    page.click(".upload summary")  # the page was drawn again with the new rollout
    page.set_input_files("input[name=bundle]", str(bundle))
    page.click("#upload button[type=submit]")
    expect(page.locator("#upload-result")).to_contain_text("not above")
    page.context.close()


def _csrf(page: Page) -> str:
    return page.locator('meta[name="csrf"]').get_attribute("content") or ""


def test_a_viewer_cannot_pause(browser: Browser, stack: Stack) -> None:
    _rollout(stack, ["gw:ghost-01"], "viewer-try", [100])
    page = signed_in(browser, stack, VIEWER)
    page.goto(f"{stack.url}/rollouts")
    expect(page.locator('section[data-rollout="viewer-try"]')).to_be_visible()
    expect(page.locator('button[data-verb="pause"]')).to_have_count(0)
    r = page.request.post(f"{stack.url}/rollouts/viewer-try/pause",
                          form={"csrf": _csrf(page)}, max_redirects=0)
    assert r.status == 403 and "viewer" in r.text()
    assert RolloutStore(stack.reg).load("viewer-try")[2] is None  # nothing queued
    page.context.close()


def test_a_request_without_its_csrf_token_is_refused(browser: Browser, stack: Stack) -> None:
    _rollout(stack, ["gw:ghost-01"], "csrf-try", [100])  # its own: tests may run in any order
    page = signed_in(browser, stack, OPERATOR)
    page.goto(f"{stack.url}/rollouts")
    forms: list[dict[str, str | float | bool]] = [{}, {"csrf": "0" * 32}]
    for form in forms:
        r = page.request.post(f"{stack.url}/rollouts/csrf-try/abort", form=form,
                              max_redirects=0)
        assert r.status == 403 and "CSRF" in r.text()
    r = page.request.post(f"{stack.url}/rollouts/upload", data=b"x", max_redirects=0,
                          headers={"Content-Type": "application/octet-stream"})
    assert r.status == 403
    assert RolloutStore(stack.reg).load("csrf-try")[2] is None
    r = page.request.post(f"{stack.url}/rollouts/csrf-try/abort",
                          form={"csrf": _csrf(page)}, max_redirects=0)
    assert r.status == 303  # the same request with its token is taken
    page.context.close()


def test_a_silent_lamp_raises_an_alarm_that_clears_when_it_answers(
        browser: Browser, stack: Stack) -> None:
    page = signed_in(browser, stack, OPERATOR)
    page.goto(f"{stack.url}/alarms")
    alarm = page.locator('#open-alarms tr[data-source="gw-test/lamp"]'
                         '[data-kind="device_offline"]')
    expect(alarm).to_have_count(0)
    control(stack.sim_sock, {"device": "lamp", "fault": "silent"})
    expect(alarm).to_be_visible(timeout=WAIT_MS)  # live: the page is not reloaded
    alarm.locator("button").click()               # acknowledge
    expect(page.locator('#open-alarms tr[data-source="gw-test/lamp"]')).to_contain_text(
        OPERATOR)
    shot(page, "alarms")
    control(stack.sim_sock, {"device": "lamp", "fault": "none"})
    expect(alarm).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator('#alarm-history tr[data-source="gw-test/lamp"]').first).to_be_visible()
    page.goto(f"{stack.url}/audit")
    expect(page.locator("#audit")).to_contain_text("alarm ack")
    shot(page, "audit")
    page.context.close()


def _commands(stack: Stack) -> int:
    row = stack.reg.fetchone("SELECT COUNT(*) FROM commands")
    return int(row[0]) if row else 0


def _send(page: Page, target: str, action: str, value: str, *, lamps: str = "",
          device: str = "") -> None:
    page.select_option("select[name=target]", target)
    page.select_option("select[name=action]", action)
    page.fill("input[name=value]", value)
    page.fill("input[name=lamps]", lamps)
    page.fill("input[name=device]", device)
    with page.expect_navigation():  # the form's POST, then the page it leads to
        page.click("#command-form button[type=submit]")


def test_an_operator_dims_a_lamp_and_sees_the_result_and_refusals(
        browser: Browser, stack: Stack) -> None:
    page = signed_in(browser, stack, OPERATOR)
    page.goto(f"{stack.url}/commands")
    expect(page.locator("#key-problem")).to_have_count(0)  # the root delegates the key
    _send(page, "gw:gw-test", "dim", "40", lamps="lamp")
    cid = page.url.split("sent=")[1].split("&")[0]
    row = page.locator(f'section[data-command="{cid}"] tr[data-gateway="gw-test"]')
    # the answer reaches the registry through the fleet service; the page follows live
    expect(row.locator('[data-field="status"]')).to_have_text("done", timeout=WAIT_MS)
    expect(row.locator('[data-readback="lamp.dim_command"]')).to_have_text("40")
    assert control(stack.sim_sock, {"cmd": "registers", "device": "lamp"})["values"][
        "dim_command"] == 40
    # a plan the cabinet's interlocks do not allow: refused by the gateway, with the reason
    _send(page, "gw:gw-test", "plan", "4", device="cabinet")
    cid = page.url.split("sent=")[1].split("&")[0]
    row = page.locator(f'section[data-command="{cid}"] tr[data-gateway="gw-test"]')
    expect(row.locator('[data-field="status"]')).to_have_text("refused", timeout=WAIT_MS)
    expect(row.locator('[data-field="reason"]')).to_contain_text("not in the allow-list")
    shot(page, "commands")
    # a level outside 0-100: refused by the console before anything is signed or stored
    before = _commands(stack)
    _send(page, "gw:gw-test", "dim", "140", lamps="lamp")
    expect(page.locator("#command-error")).to_contain_text("level 0-100")
    expect(page.locator("input[name=value]")).to_have_value("140")  # the form keeps it
    assert _commands(stack) == before
    sent = [e for e in Accounts(stack.reg).audit_log() if e[2] == "command send"]
    assert len(sent) == 2 and sent[0][1] == OPERATOR and "action=plan" in sent[0][4]
    # one sent by `edge-fleet cmd send` appears on the open page, live (no reload)
    page.evaluate("window.notReloaded = true")
    cli = subprocess.run(
        [sys.executable, "-m", "edge_agent.fleet.cli", "cmd", "send", "--db", stack.db,
         "--gateway", "gw-test", "dim", "60", "--lamps", "lamp", "--key",
         str(stack.operator_key), "--broker", stack.broker_url, "--id", "from-cli"],
        capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    row = page.locator('section[data-command="from-cli"] tr[data-gateway="gw-test"]')
    expect(row.locator('[data-readback="lamp.dim_command"]')).to_have_text("60",
                                                                          timeout=WAIT_MS)
    expect(page.locator('section[data-command="from-cli"]')).to_contain_text("cmd send")
    assert page.evaluate("window.notReloaded") is True
    page.context.close()


def test_a_viewer_sees_commands_but_cannot_send(browser: Browser, stack: Stack) -> None:
    page = signed_in(browser, stack, VIEWER)
    page.goto(f"{stack.url}/commands")
    expect(page.locator("#command-list")).to_be_visible()
    expect(page.locator("#command-form")).to_have_count(0)
    before = _commands(stack)
    forged: dict[str, str | float | bool] = {"csrf": _csrf(page), "action": "dim", "value": "5",
                                             "lamps": "lamp", "target": "gw:gw-test"}
    r = page.request.post(f"{stack.url}/commands", form=forged, max_redirects=0)
    assert r.status == 403 and "viewer" in r.text()
    page.context.close()
    page = signed_in(browser, stack, OPERATOR)  # an operator's, without its token
    page.goto(f"{stack.url}/commands")
    r = page.request.post(f"{stack.url}/commands", form={**forged, "csrf": "0" * 32},
                          max_redirects=0)
    assert r.status == 403 and "CSRF" in r.text()
    assert _commands(stack) == before
    page.context.close()


def test_the_pages_need_no_network(stack: Stack) -> None:
    """The page names nothing outside the console (no CDN): every asset is under /static."""
    import urllib.request

    html = urllib.request.urlopen(f"{stack.url}/login").read().decode()
    assert "http://" not in html and "https://" not in html
    static = Path(__file__).parents[1] / "fleet" / "console" / "static"
    assert {p.name for p in static.iterdir()} == {"console.js", "console.css"}
