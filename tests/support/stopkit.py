"""A many-device Modbus TCP site for the stop and switch tests, and what a stop must account for.

``tcp_site`` writes a site whose devices each sit on a bus of their own (one TCP port each,
served by one simulator), so one agent runs one poller task per device: the shape of a
40-device field site, where a stop that lands while the replies of every bus arrive together
is the moment a lost cancel needs. ``StopLine`` reads what the agent logged when it stopped,
``accounted`` checks that every batch it built was acknowledged or is in the spool, and
``sigterm_try`` is one start, SIGTERM and check (the stop test and bench/stop_bench.py).
"""

from __future__ import annotations

import math
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.codecs.batch import decode_batch
from edge_agent.codecs.schema import SchemaBook
from edge_agent.tools.devbroker import free_ports
from edge_agent.tools.procs import spawn_until_ready, stop_process
from tests.support.sitekit import PY, spool_batches

GATEWAY = "gw-test"


def site_head(state_dir: Path, ports: list[int], *, window_s: float = 0.5,
              health_s: float = 60.0, max_silence_s: float = 0.05) -> str:
    """Gateway, broker placeholder, batching and one TCP bus per port (``b00``, ``b01``...).

    ``max_silence_s`` shorter than any poll interval sends every reading (report by exception
    defeated), so the last window of a stop is never empty.
    """
    lines = ["[gateway]", f'id = "{GATEWAY}"', 'site = "test-site"',
             f'state_dir = "{state_dir}"', f"health_interval_s = {health_s}",
             "[mqtt]", 'url = "mqtt://127.0.0.1:1"', 'topic_prefix = "edge"',
             "[batch]", f"window_s = {window_s}", f"max_silence_s = {max_silence_s}"]
    for i, port in enumerate(ports):
        lines += [f"[buses.b{i:02d}]", 'type = "tcp"', 'host = "127.0.0.1"', f"port = {port}",
                  "timeout_ms = 1000", "retries = 0"]
    return "\n".join(lines) + "\n"


def site_devices(n: int, *, poll_s: float, profile: str = "streetlight") -> str:
    """One device ``dNN`` (unit 1) on each bus ``bNN``, polled every ``poll_s``."""
    return "".join(f'[devices.d{i:02d}]\nbus = "b{i:02d}"\nunit_id = 1\nprofile = "{profile}"\n'
                   f"poll_interval_s = {poll_s}\n" for i in range(n))


def tcp_site_part(tmp: Path, ports: list[int], part: int, parts: int, *, poll_s: float,
                  name: str) -> Path:
    """The buses ``i % parts == part`` of the site on ``ports`` (one simulator's share)."""
    path = tmp / name
    mine = [i for i in range(len(ports)) if i % parts == part]
    text = site_head(tmp / "state", ports).split("[buses.", 1)[0]
    for i in mine:
        text += (f'[buses.b{i:02d}]\ntype = "tcp"\nhost = "127.0.0.1"\nport = {ports[i]}\n'
                 f'[devices.d{i:02d}]\nbus = "b{i:02d}"\nunit_id = 1\n'
                 f'profile = "streetlight"\npoll_interval_s = {poll_s}\n')
    path.write_text(text)
    return path


def tcp_site(tmp: Path, n: int = 40, *, poll_s: float = 0.2, state_dir: Path | None = None,
             ports: list[int] | None = None, name: str = "site.toml") -> Path:
    """Write a site of ``n`` devices, each on its own TCP bus; returns its path."""
    ports = ports or free_ports(n)
    path = tmp / name
    path.write_text(site_head(state_dir or tmp / "state", ports)
                    + site_devices(n, poll_s=poll_s))
    return path


@contextmanager
def tcp_simulator(site: Path, log: Path, control: Path | None = None
                  ) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``edge-agent simulate`` on a TCP-only site until it says it serves every bus."""
    extra = ["--control", str(control)] if control is not None else []
    proc = spawn_until_ready([*PY, "simulate", str(site), *extra], log, "simulator ready",
                             timeout_s=60, what="the simulator")
    try:
        yield proc
    finally:
        stop_process(proc)


def sleep_to_mark(poll_s: float, offset_s: float) -> None:
    """Sleep until ``offset_s`` after the next wall-clock multiple of ``poll_s`` (a poll mark:
    every bus's slot starts there, so their replies arrive together just after it)."""
    now = time.time()
    mark = math.ceil(now / poll_s) * poll_s
    if mark - now < 0.02:  # too close to aim at: the next one
        mark += poll_s
    time.sleep(mark + offset_s - now)


_STOPPED = re.compile(r"agent (\S+) stopped(?: in (?P<took>[\d.]+) s)?: epoch (?P<epoch>\d+), "
                      r"(?P<built>\d+) batches built(?: \((?P<polled>\d+) readings polled, "
                      r"(?P<sent>\d+) sent\))?")


@dataclass(frozen=True)
class StopLine:
    """What the agent logged when it stopped: its epoch, batches built, readings sent."""

    epoch: int
    built: int
    sent: int | None      # readings put into batches (None from an agent that does not say)
    took_s: float | None  # the agent's own measure of its stop

    @classmethod
    def find(cls, log_text: str) -> StopLine | None:
        """The last stop line in ``log_text``, None if the agent never logged one."""
        found = list(_STOPPED.finditer(log_text))
        if not found:
            return None
        m = found[-1]
        return cls(int(m["epoch"]), int(m["built"]),
                   int(m["sent"]) if m["sent"] is not None else None,
                   float(m["took"]) if m["took"] is not None else None)


class Batches:
    """Subscribes to every gateway's data (and schema) topic and keeps (epoch, seq) -> readings."""

    def __init__(self, port: int, prefix: str = "edge") -> None:
        self.seen: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()
        self._book = SchemaBook()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe([(f"{prefix}/+/schema", 1), (f"{prefix}/+/data", 1)])
        self._client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        gateway, kind = msg.topic.split("/")[-2:]
        if kind == "schema":
            self._book.add(gateway, bytes(msg.payload))
            return
        batch = decode_batch(bytes(msg.payload), gateway=gateway, schemas=self._book.lookup)
        with self._lock:
            self.seen[(batch.epoch, batch.seq)] = len(batch.readings)

    def of(self, epoch: int) -> dict[int, int]:
        """seq -> readings of the batches of ``epoch`` received so far."""
        with self._lock:
            return {seq: n for (e, seq), n in self.seen.items() if e == epoch}

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.loop_stop()
        self._client.disconnect()


def accounted(stop: StopLine, spool: Path, data: Batches,
              wait_s: float = 3.0) -> tuple[set[int], int]:
    """Batches of ``stop.epoch`` neither received by ``data`` nor in ``spool`` (waiting up to
    ``wait_s`` for acknowledged ones still on their way to the subscriber), and the readings
    the received and spooled batches hold together."""
    stored = {seq: n for epoch, seq, n in spool_batches(spool) if epoch == stop.epoch}
    deadline = time.monotonic() + wait_s
    while True:
        received = data.of(stop.epoch)
        missing = set(range(stop.built)) - set(received) - set(stored)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # A batch both acknowledged and still on disk (its delete not yet committed) counts once.
    return missing, sum({**stored, **received}.values())


# Lines of a stop that had to force a step: a stop test counts them as failures.
FORCED = ("still running", "did not finish within", "stop was forced", "will not end")


@dataclass
class Try:
    """One start and SIGTERM: how long the stop took and what went wrong, if anything."""

    index: int
    took_s: float | None                  # None: it did not exit in time and was killed
    problems: list[str] = field(default_factory=list)
    last_window: int = 0                  # readings the agent flushed at its stop


def sigterm_try(i: int, tmp: Path, ports: list[int], broker_url: str, data: Batches,
                rng: random.Random, *, poll_s: float, deadline_s: float) -> Try:
    """Start ``edge-agent run`` on the site, let it poll, SIGTERM it a few ms after a poll mark,
    and check its exit (in time, status 0, nothing forced) and its batches (all kept)."""
    state = tmp / f"state{i}"
    site = tcp_site(tmp, len(ports), poll_s=poll_s, state_dir=state, ports=ports,
                    name=f"site{i}.toml")
    log = tmp / f"agent{i}.log"
    proc = spawn_until_ready([*PY, "run", str(site), "--broker", broker_url], log,
                             "agent gw-test starting", timeout_s=30, what=f"agent {i}")
    took: float | None = None
    try:
        time.sleep(rng.uniform(0.8, 1.6))  # polling, batching and publishing by now
        sleep_to_mark(poll_s, rng.uniform(0.001, 0.025))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(deadline_s)
            took = time.monotonic() - started
        except subprocess.TimeoutExpired:
            pass
    finally:
        stop_process(proc, timeout_s=1.0)   # kills one that overran: the try has failed
    text = log.read_text(errors="replace")
    result = Try(i, took)
    problems = result.problems
    if took is None:
        problems.append(f"no exit within {deadline_s:g} s (killed)")
    elif proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}")
    problems += [f"log: {line}" for line in text.splitlines()
                 if any(marker in line for marker in FORCED)][:5]
    window = re.findall(r"stopping: flushing (\d+) pending readings", text)
    result.last_window = int(window[-1]) if window else 0
    stop = StopLine.find(text)
    if stop is None:
        problems.append("no 'stopped' line in the log")
    else:
        missing, readings = accounted(stop, state / "spool.db", data)
        if missing:
            problems.append(f"batches built but neither acknowledged nor spooled: "
                            f"{sorted(missing)[:10]} of {stop.built}")
        if stop.sent is not None and readings != stop.sent:
            problems.append(f"{stop.sent} readings sent into batches, {readings} acknowledged "
                            f"or spooled")
    if problems:
        problems.append(f"end of {log}:\n{text[-2500:]}")
    return result
