"""`edge-agent tail`: readable, aligned output, and it never prints a traceback."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.codecs.batch import DataBatch
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.tools.tail import format_batch, format_health, format_state, render, tail, tail_main
from tests.support.brokers import Mosquitto
from tests.support.v1batch import encode_batch_v1

T0 = 1_764_331_205_000  # 2025-11-28 12:00:05 UTC

pytestmark = pytest.mark.timeout(120)


def readings() -> list[Reading]:
    """Two devices, interleaved, one bad reading of each kind."""
    return [
        Reading("meter1", "voltage_l1", T0, 230.10000610351562),
        Reading("lamp-12", "level", T0, 80),
        Reading("meter1", "frequency", T0, 50.0),
        Reading("meter1", "voltage_l1", T0 + 1000, None, Quality.DEVICE_EXCEPTION, 2),
        Reading("lamp-12", "on", T0 + 1000, True),
        Reading("meter1", "frequency", T0 + 1000, None, Quality.COMM_ERROR),
    ]


def test_batch_lines_are_grouped_by_device_in_time_order_and_aligned() -> None:
    lines = format_batch(DataBatch("gw1", 42, 7, readings(), 2))
    print("\n".join(lines))
    assert lines[0] == "12:00:05  gw1  data  epoch 42 seq 7, 6 readings"
    body = lines[1:]
    assert [line.split()[2] for line in body] == ["meter1"] * 4 + ["lamp-12"] * 2
    assert [line.split()[0] for line in body[:4]] == ["12:00:05", "12:00:05",
                                                      "12:00:06", "12:00:06"]
    assert body[0].split()[3:] == ["voltage_l1", "230.1"]
    assert "!! device_exception 02 illegal data address" in body[2]
    assert body[3].endswith("!! comm_error")
    assert body[5].split()[3:] == ["on", "true"]
    # the value column ends at the same place on every line
    end = len(body[0])
    assert all(line[end - 1] != " " and line[end:end + 1] in ("", " ") for line in body), body
    assert body[2].split()[4] == "--" and body[1].endswith(" 50")  # no ".0" added


def test_units_when_known() -> None:
    lines = format_batch(DataBatch("gw1", 1, 0, readings()[:1], 2), {("meter1", "voltage_l1"): "V"})
    assert lines[1].endswith("230.1 V")


def test_state_and_health_are_one_line_each() -> None:
    assert format_state("gw1", {"status": "offline", "version": "1.0", "epoch": 5, "ts": T0,
                                "reason": "connection lost"}) == (
        "12:00:05  gw1  state  OFFLINE (connection lost)  version 1.0  epoch 5")
    assert format_health("gw1", {"ts": T0, "uptime_s": 12.5, "spool": {"pending": 3}}) == (
        "12:00:05  gw1  health  uptime_s=12.5 spool.pending=3")


@pytest.mark.parametrize(("topic", "payload", "expected"), [
    ("edge/gw1/data", b"\x01\x00", "undecodable data batch (2 bytes): data batch v1"),
    ("edge/gw1/data", b"", "undecodable data batch (0 bytes): data batch is empty"),
    ("edge/gw1/health", b"{nope", "undecodable health document (5 bytes)"),
    ("edge/gw1/state", b"\xff\xfe", "undecodable state document"),
    ("edge/gw1/state", b"[1]", "expected a JSON object"),
])
def test_bad_payloads_give_one_warning_line(topic: str, payload: bytes, expected: str) -> None:
    lines, count = render(topic, payload, "edge")
    assert count == 0 and len(lines) == 1
    assert "gw1  warning  " in lines[0] and expected in lines[0], lines[0]


async def _wait_for_text(out: io.StringIO, text: str) -> None:
    while text not in out.getvalue():
        await asyncio.sleep(0.02)


def test_tail_prints_a_published_batch(broker: Mosquitto) -> None:
    async def main() -> str:
        out = io.StringIO()
        task = asyncio.create_task(tail(broker.url, gateway="gwtail", out=out, count=5))
        async with asyncio.timeout(30):
            await _wait_for_text(out, "# tail:")
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.publish("edge/gwtail/state", json.dumps(
                    {"status": "online", "version": "1.0", "epoch": 9, "ts": T0}), qos=1)
                await client.publish("edge/gwother/data", encode_batch_v1("gwother", 9, 0,
                                                                          readings()), qos=1)
                await client.publish("edge/gwtail/data", b"\x07junk", qos=1)
                await client.publish("edge/gwtail/data", encode_batch_v1("gwtail", 9, 0,
                                                                         readings()), qos=1)
            await task  # returns by itself after 5 readings
        return out.getvalue()

    text = asyncio.run(main())
    print(text)
    lines = text.splitlines()
    assert lines[1] == "12:00:05  gwtail  state  ONLINE  version 1.0  epoch 9"
    assert "warning  undecodable data batch (5 bytes): data batch has unknown version byte 7" \
        in lines[2]
    assert lines[3] == "12:00:05  gwtail  data  epoch 9 seq 0, 6 readings"
    assert len(lines) == 4 + 5  # --count 5 stops inside the batch
    assert "gwother" not in text


def test_tail_main_cli_in_a_subprocess(broker: Mosquitto) -> None:
    async def main() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; from edge_agent.tools.tail import tail_main; "
            "sys.exit(tail_main(sys.argv[1:]))", "--broker", broker.url, "--gateway", "gwcli",
            "--count", "2", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                first = await proc.stdout.readline()
                assert first.startswith(b"# tail:"), first
                async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                    await client.publish("edge/gwcli/data", b"garbage", qos=1)
                    await client.publish("edge/gwcli/data", encode_batch_v1(
                        "gwcli", 1, 3, readings()[:2]), qos=1)
                stdout, stderr = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, (first + stdout).decode(), stderr.decode()

    rc, stdout, stderr = asyncio.run(main())
    print(stdout)
    assert rc == 0, stderr
    assert "Traceback" not in stdout + stderr
    assert "undecodable data batch" in stdout
    assert [line.split()[2:] for line in stdout.splitlines()[-2:]] == [
        ["meter1", "voltage_l1", "230.1"], ["lamp-12", "level", "80"]]


def test_tail_main_reports_an_unreachable_broker_in_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    down = Mosquitto()  # for a free port only; never started
    try:
        assert tail_main(["--broker", down.url, "--count", "1"]) == 1
    finally:
        down.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and down.url in err and "Traceback" not in err, err


def test_tail_main_rejects_a_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert tail_main(["--broker", "http://x"]) == 1
    assert "scheme 'http'" in capsys.readouterr().err



@pytest.mark.parametrize("payload", [
    b"[" * 100_000,                                            # RecursionError in json.loads
    b'{"status": "online", "version": "\\ud800"}',              # a lone surrogate
    b'{"ts": 99999999999999999999, "status": "online"}',       # past the calendar
    b'{"status": "\\u001b[2J\\u001b[31mOWNED"}',                # terminal escapes
    b'{"a": ' * 30 + b"1" + b"}" * 30,                          # deeper than a document is
    b"\xff\xfe not utf-8",
])
@pytest.mark.parametrize("kind", ["state", "health"])
def test_hostile_documents_give_one_printable_line(kind: str, payload: bytes) -> None:
    lines, readings = render(f"edge/gw1/{kind}", payload, "edge")
    assert readings == 0 and len(lines) == 1
    line = lines[0]
    assert line.isprintable() and "\x1b" not in line, line
    line.encode("utf-8")  # printable to a UTF-8 terminal: no lone surrogate left


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300), st.sampled_from(["data", "state", "health", "other"]))
def test_render_never_raises_and_prints_safely(payload: bytes, kind: str) -> None:
    lines, _ = render(f"edge/gw1/{kind}", payload, "edge")
    assert lines and all(line.isprintable() for line in lines)


def test_a_version_3_batch_shows_after_its_schema_with_units() -> None:
    from edge_agent.codecs.batch import encode_batch_v3
    from edge_agent.codecs.schema import SchemaBook, SeriesDef, build_schema

    schema = build_schema("gw1", T0 - 5000, [
        SeriesDef("meter1", "voltage_l1", "float32", "V", 1.0, 0.0, 1000),
        SeriesDef("meter1", "frequency", "float32", "Hz", 1.0, 0.0, 1000),
        SeriesDef("lamp-12", "level", "uint16", "%", 1.0, 0.0, 1000),
        SeriesDef("lamp-12", "on", "bool", "", 1.0, 0.0, 1000)])
    blob = encode_batch_v3(schema, schema.epoch, 4, readings())
    book = SchemaBook()
    lines, count = render("edge/gw1/data", blob, "edge", book)
    assert count == 0 and f"needs schema {schema.hash.hex()}, not seen yet" in lines[0]
    lines, count = render("edge/gw1/schema", schema.raw, "edge", book)
    assert count == 0 and lines[0].endswith(
        f"gw1  schema  {schema.hash.hex()} epoch {schema.epoch}, 4 series, tick 1000 ms")
    lines, count = render("edge/gw1/data", blob, "edge", book)
    assert count == 6 and "data  epoch" in lines[0] and "seq 4, 6 readings" in lines[0]
    assert lines[1].endswith("lamp-12  level                   80 %"), lines[1]
    assert any(line.endswith("230.1 V") for line in lines), lines
    lines, _ = render("edge/gw2/schema", schema.raw, "edge", book)   # not gw2's schema
    assert "warning  undecodable schema message" in lines[0]


def test_decode_prints_a_version_3_batch_given_its_schema(tmp_path: Path) -> None:
    from edge_agent.codecs.batch import encode_batch_v3
    from edge_agent.codecs.schema import SeriesDef, build_schema

    schema = build_schema("gw1", T0, [SeriesDef("meter1", "frequency", "float32", "Hz", 1.0,
                                                0.0, 1000)])
    (tmp_path / "s.json").write_bytes(schema.raw)
    (tmp_path / "b.bin").write_bytes(encode_batch_v3(
        schema, schema.epoch, 7, [Reading("meter1", "frequency", T0 + 1000, 50.0)]))
    cmd = [sys.executable, "-m", "edge_agent", "decode", str(tmp_path / "b.bin")]
    bare = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bare.returncode != 0 and "names no gateway" in bare.stderr, bare.stderr
    ok = subprocess.run([*cmd, "--schema", str(tmp_path / "s.json")], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [f"gateway gw1 epoch {schema.epoch} seq 7: 1 readings",
                                      f"{T0 + 1000}\tmeter1\tfrequency\t50.0"]
