"""Signed commands: the document, signing, and the gateway's pure verifier (docs/commands.md).

A command is a TUF-shaped envelope like a bundle (``edge_agent.protocol.bundle``), signed by
the ``operator`` role that the pinned root delegates, published as JSON on
``{prefix}/{gateway}/cmd/{id}``::

    {"signed": {"_type": "command", "spec": 1, "id": ID, "action": A, "args": {...},
                "targets": {"gateways": [...], "sites": [...], "tags": [...]},
                "issued": T, "expires": T},
     "signatures": [{"keyid": HEX, "sig": HEX}, ...],
     "roots": [root envelope, ...]}        (optional: the root chain, as bundles carry it)

Actions and their arguments (a table, ``ACTIONS``): ``switch`` lamps on/off, ``dim`` lamps to a
level, each optionally ``for_s`` seconds (a lighting-schedule override that ends by itself),
``override-clear`` (the schedule takes the lamps back), ``plan`` (a signal cabinet's timing
plan) and ``flash`` (a signal cabinet to flashing amber, or back to automatic).

``verify_command`` is total like ``verify_bundle``: any bytes end in a ``CommandVerdict``.
Checks, in order: size; strict JSON under limits; the schema of every field; the root chain
(TUF 5.3.4, shared with bundles); the operator role's threshold of signatures over the
canonical bytes of "signed"; the targets; issued not in the future and not expired (with the
clock-skew allowance, against max(gateway clock, the latest issued time verified)); a lifetime
of at most ``MAX_LIFETIME_S``. Idempotency by id is the gateway's journal, not the verifier's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol.bundle import (
    MAX_INT,
    MAX_NAME,
    MAX_ROOTS,
    MAX_STR,
    SPEC,
    _int,
    _list,
    _object,
    _typed,
    check_root_envelope,
    check_signatures,
    sign_envelope,
)
from edge_agent.protocol.canonical import check_canonical
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict, show
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import (
    CLOCK_SKEW_S,
    count_signatures,
    role_keys,
    update_root,
)

MAX_COMMAND = 256 * 1024   # the envelope with its root chain; a command alone is ~1 KiB
MAX_DEPTH = 7              # as bundles: roots[i].signed.roles.root.keyids
MAX_ITEMS = 4096
MAX_LAMPS = 256            # lamps and groups named in one command
MAX_LIFETIME_S = 86_400    # a command lives a day at most: no long-lived replayable orders
MAX_FOR_S = 7 * 86_400     # an override lasts a week at most
MAX_PLAN = 255
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # one topic level, no wildcards
ID_RULE = "1-64 characters of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or digit"

LAMPS, LEVEL, ON, FOR_S, DEVICE, PLAN = "lamps", "level_pct", "on", "for_s", "device", "plan"
# action -> (required arguments, optional arguments)
ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "switch": ((LAMPS, ON), (FOR_S,)),
    "dim": ((LAMPS, LEVEL), (FOR_S,)),
    "override-clear": ((LAMPS,), ()),
    "plan": ((DEVICE, PLAN), ()),
    "flash": ((DEVICE, ON), ()),
}

ACCEPTED = "accepted"
REJECTED = "rejected"
# The reason's prefix when the backstop caught an exception: a verifier bug (tests assert it
# never appears), as bundles' ``protocol.verify.FAULT``.
FAULT = "verifier fault, command refused"


@dataclass(frozen=True, slots=True)
class Command:
    """A verified command: what to do, to what, and until when the order holds."""

    id: str
    action: str
    args: dict[str, Any]
    issued: int
    expires: int
    signed: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CommandVerdict:
    """The verifier's answer: accepted with the command, or rejected with the reason."""

    code: str
    reason: str
    command: Command | None = None
    claimed_id: str | None = None  # the id the command claims (unverified), for the answer


def check_command_id(value: object) -> str:
    """``value`` if it is a valid command id (usable as one topic level), else ValueError."""
    if type(value) is not str or not ID_RE.fullmatch(value):
        raise ValueError(f"command id {show(value)}: expected {ID_RULE}")
    return value


def _name(value: Any, where: str) -> str:
    if type(value) is not str or not 1 <= len(value) <= MAX_NAME:
        raise VerificationError(f"{where} is {show(value)}, expected a name of 1..{MAX_NAME} "
                                "characters")
    return value


def _check_args(action: str, args: Any) -> dict[str, Any]:
    """The arguments of ``action``, each of its exact type and range (the ``ACTIONS`` table)."""
    required, optional = ACTIONS[action]
    doc = _object(args, f"command {action} args", required, optional)
    if LAMPS in doc:
        for i, lamp in enumerate(_list(doc[LAMPS], f"args {LAMPS}", MAX_LAMPS, 1)):
            _name(lamp, f"args {LAMPS}[{i}]")
    if DEVICE in doc:
        _name(doc[DEVICE], f"args {DEVICE}")
    if ON in doc and type(doc[ON]) is not bool:
        raise VerificationError(f"args {ON} is {show(doc[ON])}, expected true or false")
    if LEVEL in doc:
        _int(doc, LEVEL, "args", 0, 100)
    if FOR_S in doc:
        _int(doc, FOR_S, "args", 1, MAX_FOR_S)
    if PLAN in doc:
        _int(doc, PLAN, "args", 1, MAX_PLAN)
    return doc


def check_command_signed(signed: Any) -> dict[str, Any]:
    """``signed`` if it is a command document of exactly the documented shape."""
    doc = _object(_typed(signed, "command", "command"), "command",
                  ("_type", "spec", "id", "action", "args", "targets", "issued", "expires"))
    try:
        check_command_id(doc["id"])
    except ValueError as exc:
        raise VerificationError(str(exc)) from None
    if type(doc["action"]) is not str or doc["action"] not in ACTIONS:
        raise VerificationError(f"command action is {show(doc['action'])}, expected one of "
                                f"{sorted(ACTIONS)}")
    _check_args(doc["action"], doc["args"])
    _int(doc, "issued", "command", 0)
    _int(doc, "expires", "command", 0)
    targets = _object(doc["targets"], "command targets", (), ("gateways", "sites", "tags"))
    for field, names in targets.items():
        for i, name in enumerate(_list(names, f"command targets {field}", MAX_ITEMS)):
            _name(name, f"command targets {field}[{i}]")
    return doc


def command_signed(command_id: str, action: str, args: dict[str, Any], *, issued: int,
                   expires: int, gateways: Iterable[str] = (), sites: Iterable[str] = (),
                   tags: Iterable[str] = ()) -> dict[str, Any]:
    """The signed part of a command; ValueError (or VerificationError) if gateways would
    refuse it, so the fleet never signs what they refuse."""
    targets = {"gateways": sorted(set(gateways)), "sites": sorted(set(sites)),
               "tags": sorted(set(tags))}
    if not any(targets.values()):
        raise ValueError("a command needs at least one target (gateway, site or tag)")
    if not 0 < expires - issued <= MAX_LIFETIME_S:
        raise ValueError(f"a command lives 1..{MAX_LIFETIME_S} s (got {issued}..{expires})")
    return check_command_signed({
        "_type": "command", "spec": SPEC, "id": check_command_id(command_id), "action": action,
        "args": args, "targets": targets, "issued": issued, "expires": expires})


def encode_command(signed: dict[str, Any], keys: Iterable[PrivateKey],
                   roots: Sequence[dict[str, Any]] = ()) -> bytes:
    """The wire bytes of a command signed by ``keys``, optionally with the root chain."""
    doc = sign_envelope(signed, keys)
    if roots:
        doc["roots"] = list(roots)
    check_canonical(doc)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def claimed_id(doc: Any) -> str | None:
    """The id a parsed command claims (unverified; None unless it is a valid id)."""
    signed = doc.get("signed") if isinstance(doc, dict) else None
    value = signed.get("id") if isinstance(signed, dict) else None
    return value if type(value) is str and ID_RE.fullmatch(value) else None


def verify_command(blob: bytes | bytearray | memoryview, trust: TrustedState, now: float, *,
                   skew_s: int = CLOCK_SKEW_S, max_bytes: int = MAX_COMMAND) -> CommandVerdict:
    """Verify the wire bytes of a command for this gateway at wall time ``now`` (pure)."""
    doc: Any = None
    try:
        doc = _read(blob, max_bytes)
        return _verify(doc, trust, now, skew_s)
    except VerificationError as exc:
        return CommandVerdict(REJECTED, str(exc), claimed_id=claimed_id(doc))
    except Exception as exc:
        # Totality backstop, as verify_bundle's: a bug here must refuse, never crash-loop.
        return CommandVerdict(REJECTED, f"{FAULT}: {type(exc).__name__}: {show(str(exc))}",
                              claimed_id=claimed_id(doc))


def _read(blob: Any, max_bytes: int) -> Any:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise VerificationError(f"a command is bytes, got {type(blob).__name__}")
    if len(bytes(blob)) > max_bytes:
        raise VerificationError(f"command of {len(bytes(blob))} bytes exceeds the cap of "
                                f"{max_bytes} bytes")
    try:
        return loads_strict(blob, max_bytes=max_bytes, max_depth=MAX_DEPTH,
                            max_items=MAX_ITEMS, max_str=MAX_STR, int_min=0, int_max=MAX_INT)
    except UnsafeJsonError as exc:
        raise VerificationError(f"command JSON refused at {exc.path}: {exc.problem}") from None


def _verify(doc: Any, trust: TrustedState, now: float, skew_s: int) -> CommandVerdict:
    if not isinstance(now, int | float) or not math.isfinite(now):
        raise VerificationError(f"gateway clock reads {show(now)}, not a time")
    env = _object(doc, "command envelope", ("signed", "signatures"), ("roots",))
    signed = check_command_signed(env["signed"])
    check_signatures(env["signatures"], "command")
    chain = env.get("roots")
    if chain is not None:
        for i, root in enumerate(_list(chain, "command roots", MAX_ROOTS)):
            check_root_envelope(root, f"roots[{i}]")
    root = update_root(trust.root, chain)["signed"]
    effective_now = max(int(now), trust.time_floor)
    if effective_now > root["expires"] + skew_s:
        raise VerificationError(f"root v{root['version']} expired at {root['expires']}")
    # Signatures before any other field is believed; only the operator role signs commands
    # (a release key that signs configs cannot order a lamp off).
    keys, threshold = role_keys(root, "operator")
    got = count_signatures(env, keys)
    if got < threshold:
        raise VerificationError(f"command has {got} valid signatures from operator keys of "
                                f"root v{root['version']}, needs {threshold}")
    cid, issued, expires = signed["id"], signed["issued"], signed["expires"]
    targets = signed["targets"]
    if not (trust.gateway_id in targets.get("gateways", ())
            or trust.site in targets.get("sites", ())
            or set(trust.tags) & set(targets.get("tags", ()))):
        raise VerificationError(f"command {cid} does not target gateway {trust.gateway_id!r} "
                                f"(site {trust.site!r}, tags {list(trust.tags)})")
    if expires - issued > MAX_LIFETIME_S or expires <= issued:
        raise VerificationError(f"command {cid} lives {issued}..{expires}: expected 1.."
                                f"{MAX_LIFETIME_S} s")
    if effective_now > expires + skew_s:
        raise VerificationError(f"command {cid} expired at {expires}; gateway time is "
                                f"{effective_now} (allowance {skew_s} s)")
    if issued > int(now) + skew_s:
        raise VerificationError(f"command {cid} issued at {issued}, in the future of gateway "
                                f"time {int(now)} (allowance {skew_s} s)")
    command = Command(cid, signed["action"], dict(signed["args"]), issued, expires, signed)
    return CommandVerdict(ACCEPTED, f"command {cid} verified ({got} of {threshold} "
                          "signatures)", command, cid)
