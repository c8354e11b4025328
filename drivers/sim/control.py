"""Fault control of a running simulator: JSON lines over a unix socket, one JSON reply each.

Requests (replies always carry ``"ok"``; on failure ``"error"`` says what was wrong):

- ``{"device": NAME, "fault": "silent"|"exception"|"bad_crc"|"none", "code": 4}``: silent never
  answers (a clean unplug), exception answers every request with ``code`` (default 4), bad_crc
  sends replies with a corrupted CRC (on MBAP-framed TCP: a corrupted protocol identifier).
  For a DL/T 645 meter ``code`` is the error byte of its abnormal replies (default 1, "other
  error") and bad_crc flips the checksum byte.
  ``"libmodbus"`` (Modbus RTU devices only) makes the device read the line as libmodbus's RTU
  slave does: the frame after a request for another unit, within 0.5 s, is taken for that
  unit's reply and ignored (``sim.confirmation``); ``stats`` counts those as ``ignored``.
- ``{"cmd": "freeze", "on": true}``: stop (or restart) value evolution for every device.
- ``{"cmd": "registers", "device": NAME}``: ``registers`` = {table: {address: register or bit}}
  (addresses as decimal strings, JSON keys), plus ``values`` = the engineering values.
- ``{"cmd": "set", "device": NAME, "point": P, "value": V}``: force a point (``null`` releases it).
- ``{"cmd": "stats", "device": NAME}``: requests seen and replies sent (all devices without NAME).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edge_agent.drivers.sim.device import Fault
from edge_agent.drivers.sim.meter import MeterSim
from edge_agent.drivers.sim.server import SiteSim
from edge_agent.protocol.errors import ConfigError

MAX_LINE = 64 * 1024


def handle(site: SiteSim, msg: Any) -> dict[str, Any]:
    """Apply one control request and build its reply (pure apart from the site's state)."""
    if not isinstance(msg, dict):
        return {"ok": False, "error": f"expected a JSON object, got {type(msg).__name__}"}
    try:
        return {"ok": True, **_dispatch(site, msg)}
    except (KeyError, ValueError, TypeError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return {"ok": False, "error": str(text)}


def _dispatch(site: SiteSim, msg: dict[str, Any]) -> dict[str, Any]:
    cmd = msg.get("cmd")
    if cmd is None and "fault" in msg:
        dev = site.device(_str(msg, "device"))
        try:
            fault = Fault(msg["fault"])
        except ValueError:
            raise ValueError(f"fault {msg['fault']!r}: expected one of "
                             f"{', '.join(f.value for f in Fault)}") from None
        code = msg.get("code", 1 if isinstance(dev, MeterSim) else 4)
        if not isinstance(code, int) or isinstance(code, bool):
            raise ValueError(f"code {code!r}: expected an integer Modbus exception code")
        dev.set_fault(fault, code)
        return {"device": dev.name, "fault": fault.value, "code": dev.exception_code}
    if cmd == "freeze":
        on = msg.get("on", True)
        if not isinstance(on, bool):
            raise ValueError(f"on {on!r}: expected true or false")
        site.freeze(on)
        return {"frozen": on, "t": site.now()}
    if cmd == "registers":
        dev = site.device(_str(msg, "device"))
        t = site.now()
        return {"device": dev.name, "unit_id": dev.unit_id, "t": t,
                "registers": dev.registers_json(t), "values": dev.values(t)}
    if cmd == "set":
        dev = site.device(_str(msg, "device"))
        point = _str(msg, "point")
        if "value" not in msg:
            raise ValueError("set: missing 'value' (null releases the point)")
        if msg["value"] is None:
            dev.clear_point(point)
        else:
            dev.set_point(point, msg["value"], site.now())
        return {"device": dev.name, "point": point, "value": msg["value"]}
    if cmd == "stats":
        if "device" in msg:
            return site.device(_str(msg, "device")).stats()
        return {"devices": [*(d.stats() for d in site.devices.values()),
                            *(m.stats() for m in site.meters.values())]}
    raise ValueError(f"unknown request {json.dumps(msg)[:120]}: expected 'cmd' freeze, "
                     "registers, set or stats, or a 'device' with a 'fault'")


def _str(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} {value!r}: expected a string")
    return value


@contextlib.asynccontextmanager
async def control_server(site: SiteSim, path: Path) -> AsyncIterator[None]:
    """Serve control requests on the unix socket ``path`` until the context exits."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"control socket {path}: a file that is not a socket is there")
        path.unlink()
    writers: set[asyncio.StreamWriter] = set()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer each request line of one connection until the peer closes it."""
        writers.add(writer)
        try:
            while line := await reader.readline():
                try:
                    reply = handle(site, json.loads(line))
                except json.JSONDecodeError as exc:
                    reply = {"ok": False, "error": f"not JSON: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass  # peer went away, or sent a line over the limit
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_LINE)
    try:
        yield
    finally:
        server.close()
        for w in list(writers):
            w.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def sim_control(path: Path | str, msg: dict[str, Any]) -> dict[str, Any]:
    """Send one control request to a running simulator and return its reply."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    try:
        writer.write(json.dumps(msg).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    if not line:
        raise ConnectionError(f"simulator control {path}: closed without a reply")
    reply: dict[str, Any] = json.loads(line)
    return reply


def sim_control_sync(path: Path | str, msg: dict[str, Any], timeout: float = 5.0
                     ) -> dict[str, Any]:
    """Blocking ``sim_control`` for tests and scripts."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(msg).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"simulator control {path}: closed without a reply")
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply
