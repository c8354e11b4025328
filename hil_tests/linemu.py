"""The line emulator process: pseudo-terminals joined by the paced RS-485 line of ``line.py``.

    python -m hil_tests.linemu --line PATH --drop NAME=PTY [--drop ...] --control SOCK
                               [--baud 9600] [--parity N] [--stopbits 1] [--seed 0]
                               [--latency-ms 0] [--protocol modbus|dlt645]

``--line PATH`` becomes a symlink to a new pseudo-terminal: the client under test (the
agent, ``edge-agent scan``, pymodbus) opens it like a USB RS-485 adapter. Each ``--drop``
is a device-side pseudo-terminal to join to the line, such as the end the simulator of
``edge-agent simulate`` serves on. Bytes are delivered at the character rate of the
line's baud rate and framing (Linux PTYs themselves ignore the baud rate). The baud rate
the client set on its port is read back from the PTY (the master side of a pseudo-terminal
reports the slave's termios), so a client at the wrong speed gets no answer, as on a real
line. PTYs refuse even and odd parity, so clients open the line with parity N whatever the
line's framing; the emulator paces with the framing it was given.

Control: JSON lines on the unix socket ``SOCK``, one JSON reply each (``ok`` and, on
failure, ``error``):

- ``{"cmd": "set", "baudrate": 19200, "parity": "E", "stopbits": 1, "crc_rate": 0.01,
  "drop_rate": 0.0, "echo": false, "seed": 5}``: any subset; a new seed restarts the
  random stream;
- ``{"cmd": "drop", "drop": NAME, "plugged": false, "latency_ms": 20}``: unplug, replug,
  or set a device's turnaround;
- ``{"cmd": "noise", "bytes": 32}``: a noise burst;
- ``{"cmd": "stats", "reset": false}``: line counters, per-drop counters and settings.

The process prints ``line ready PATH seed N`` once it serves, and exits cleanly on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import termios
import time
import tty
from collections import deque
from pathlib import Path
from typing import Any

from hil_tests.line import MASTER, Delivery, LineModel, Stats

# termios speed constant -> baud rate, for reading back what the client set.
_SPEEDS = {getattr(termios, f"B{b}"): b for b in (
    300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)}
READ_CHUNK = 4096


def _raw(fd: int) -> None:
    """Raw mode, no echo: the PTY passes bytes untouched."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class Emulator:
    """The select loop: PTY ends, the control socket, and the per-listener delivery queues."""

    def __init__(self, model: LineModel, line_link: Path, drops: dict[str, Path],
                 control: Path) -> None:
        self.model = model
        self.sel = selectors.DefaultSelector()
        self.queues: dict[str, deque[tuple[float, int]]] = {MASTER: deque()}
        self.fds: dict[str, int] = {}
        self.overflow = 0  # bytes a listener's full buffer refused
        self.running = True
        self.master_fd, self._slave_fd = os.openpty()
        # Keeping our own slave fd open stops reads on the master failing with EIO while
        # no client has the port open; we never read from it.
        _raw(self._slave_fd)
        os.set_blocking(self.master_fd, False)
        self.fds[MASTER] = self.master_fd
        self.line_link = line_link
        if line_link.is_symlink():
            line_link.unlink()
        line_link.symlink_to(os.ttyname(self._slave_fd))
        self.sel.register(self.master_fd, selectors.EVENT_READ, MASTER)
        for name, path in drops.items():
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            _raw(fd)
            self.fds[name] = fd
            self.queues[name] = deque()
            model.add_drop(name)
            self.sel.register(fd, selectors.EVENT_READ, name)
        self.control_path = control
        with contextlib.suppress(FileNotFoundError):
            control.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(control))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.conns: dict[socket.socket, bytearray] = {}

    def master_baud(self) -> int | None:
        """The baud rate the client set on its end of the line (None if unknown)."""
        try:
            return _SPEEDS.get(termios.tcgetattr(self.master_fd)[5])
        except termios.error:
            return None

    def _enqueue(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            self.queues[d.to].extend(zip(d.due, d.data, strict=True))

    def _flush(self, now: float) -> float | None:
        """Write every byte that is due; return the next due time."""
        nxt: float | None = None
        for name, q in self.queues.items():
            if not q:
                continue
            out = bytearray()
            while q and q[0][0] <= now:
                out.append(q.popleft()[1])
            if out:
                try:
                    written = os.write(self.fds[name], bytes(out))
                    self.overflow += len(out) - written
                except (BlockingIOError, OSError):
                    self.overflow += len(out)
            if q and (nxt is None or q[0][0] < nxt):
                nxt = q[0][0]
        return nxt

    def _read(self, name: str) -> None:
        fd = self.fds[name]
        try:
            data = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO: nobody on the other end right now
        if not data:
            return
        now = time.monotonic()
        if name == MASTER:
            self._enqueue(self.model.from_master(data, now, self.master_baud()))
        else:
            self._enqueue(self.model.from_drop(name, data, now))

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            conn, _ = self.listener.accept()
            conn.setblocking(False)
            self.conns[conn] = bytearray()
            self.sel.register(conn, selectors.EVENT_READ, "conn")

    def _serve(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.sel.unregister(conn)
            del self.conns[conn]
            conn.close()
            return
        buf = self.conns[conn]
        buf += chunk
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            try:
                reply = self.handle(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                reply = {"ok": False, "error": str(exc)}
            conn.setblocking(True)
            conn.sendall(json.dumps(reply).encode() + b"\n")
            conn.setblocking(False)

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Apply one control request."""
        cmd = msg.get("cmd")
        m = self.model
        if cmd == "set":
            unknown = set(msg) - {"cmd", "baudrate", "parity", "stopbits", "crc_rate",
                                  "drop_rate", "echo", "seed"}
            if unknown:
                raise ValueError(f"set: unknown keys {sorted(unknown)}")
            if "parity" in msg and msg["parity"] not in ("N", "E", "O"):
                raise ValueError(f"parity {msg['parity']!r}: expected N, E or O")
            for key in ("crc_rate", "drop_rate"):
                if key in msg and not 0 <= float(msg[key]) <= 1:
                    raise ValueError(f"{key} {msg[key]!r}: expected a share from 0 to 1")
            if "baudrate" in msg and int(msg["baudrate"]) not in _SPEEDS.values():
                raise ValueError(f"baudrate {msg['baudrate']!r}: expected one of "
                                 f"{sorted(_SPEEDS.values())}")
            for key in ("baudrate", "stopbits"):
                if key in msg:
                    setattr(m, key, int(msg[key]))
            for key in ("crc_rate", "drop_rate"):
                if key in msg:
                    setattr(m, key, float(msg[key]))
            if "parity" in msg:
                m.parity = msg["parity"]
            if "echo" in msg:
                m.echo = bool(msg["echo"])
            if "seed" in msg:
                m.seed = int(msg["seed"])
                m.rng.seed(m.seed)
            return {"ok": True, **m.settings()}
        if cmd == "drop":
            drop = m.drops.get(str(msg.get("drop")))
            if drop is None:
                raise ValueError(f"drop {msg.get('drop')!r}: expected one of {sorted(m.drops)}")
            if "plugged" in msg:
                drop.plugged = bool(msg["plugged"])
            if "latency_ms" in msg:
                drop.latency_s = float(msg["latency_ms"]) / 1000
            return {"ok": True, "drop": drop.name, "plugged": drop.plugged,
                    "latency_ms": drop.latency_s * 1000}
        if cmd == "noise":
            n = int(msg.get("bytes", 16))
            if not 1 <= n <= 4096:
                raise ValueError(f"bytes {n}: expected 1 to 4096")
            self._enqueue(m.noise(n, time.monotonic()))
            return {"ok": True, "bytes": n}
        if cmd == "stats":
            doc = {"ok": True, "line": m.stats.as_dict(), "overflow_bytes": self.overflow,
                   "drops": {d.name: {"frames_in": d.frames_in, "frames_out": d.frames_out,
                                      "lost_unplugged": d.lost_unplugged}
                             for d in m.drops.values()},
                   "settings": m.settings()}
            if msg.get("reset"):
                m.stats = Stats()
                for d in m.drops.values():
                    d.frames_in = d.frames_out = d.lost_unplugged = 0
            return doc
        raise ValueError(f"unknown request {json.dumps(msg)[:100]}: expected cmd set, drop, "
                         "noise or stats")

    def run(self) -> None:
        """Serve until ``running`` is cleared by a signal."""
        nxt: float | None = None
        while self.running:
            timeout = 0.5 if nxt is None else max(0.0, nxt - time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.data == "listen":
                    self._accept()
                elif key.data == "conn":
                    assert isinstance(key.fileobj, socket.socket)
                    self._serve(key.fileobj)
                else:
                    self._read(key.data)
            nxt = self._flush(time.monotonic())

    def close(self) -> None:
        """Close every fd and remove the links this process made."""
        for conn in list(self.conns):
            conn.close()
        self.listener.close()
        self.sel.close()
        for fd in {*self.fds.values(), self._slave_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)
        for path in (self.line_link, self.control_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _drop_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(prog="python -m hil_tests.linemu", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line", type=Path, required=True, help="symlink to create for the client")
    ap.add_argument("--drop", type=_drop_arg, action="append", default=[],
                    help="NAME=PTY of a device-side port (repeatable)")
    ap.add_argument("--control", type=Path, required=True, help="control unix socket")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--parity", choices=["N", "E", "O"], default="N")
    ap.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="device turnaround added to every drop's replies")
    ap.add_argument("--protocol", choices=["modbus", "dlt645"], default="modbus",
                    help="the frames the line carries (default: %(default)s)")
    args = ap.parse_args(argv)
    model = LineModel(baudrate=args.baud, parity=args.parity, stopbits=args.stopbits,
                      seed=args.seed, protocol=args.protocol)
    try:
        emu = Emulator(model, args.line, dict(args.drop), args.control)
    except OSError as exc:
        print(f"line emulator: cannot start: {exc}", file=sys.stderr)
        return 2
    for d in model.drops.values():
        d.latency_s = args.latency_ms / 1000

    def stop(*_: object) -> None:
        emu.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"line ready {args.line} seed {args.seed} "
          f"{args.baud} 8{args.parity}{args.stopbits}", flush=True)
    try:
        emu.run()
    finally:
        emu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
