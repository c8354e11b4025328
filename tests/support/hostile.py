"""Hostile messages for every consumer of the wire (issue "nothing stops silently", item 8).

Used by tests/test_hostile_gateway.py, test_hostile_fleet.py and test_hostile_ingest.py (the
verifier's own JSON helpers are a different module, tests/support/hostile_json.py).

A consumer (the gateway's control plane on ``desired/config``, the fleet service on
``reported``/``health``/``state``, the ingest on ``data``) must answer anything a broken or
hostile peer can publish by refusing it and going on consuming. This module makes such
messages: plain functions for the concrete cases the regression tests name one by one, and
hypothesis strategies that mix them with generated ones for the property tests.

JSON text is made with ``json.dumps`` (``ensure_ascii``): a lone surrogate in a Python string
becomes the escape ``\\ud800`` in the text, which is valid JSON syntax and which ``json.loads``
turns back into a string that no UTF-8 encoder accepts.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

from edge_agent.codecs.batch_v2 import VERSION_CODEC
from edge_agent.codecs.wire import varint
from edge_agent.protocol.bundle import HEADER, MAGIC, split_bundle
from edge_agent.protocol.verify import MAX_ENVELOPE, MAX_PAYLOAD

LONE = "\ud800"             # a lone high surrogate
LONE_LOW = "\udfff"         # a lone low surrogate
HUGE_INT = 10**30
DEPTH = 100_000             # "100,000 nested ["
HEALTH_CAP = 20_000         # the fleet registry truncates a stored health document here



class Hostile:
    """One hostile message: what it is (for reports) and its bytes.

    A plain class (not a dataclass, which hypothesis would print field by field) made inside
    a composite strategy (``labelled``; a ``.map`` would have hypothesis print its input), so
    a falsifying example reads ``Hostile('100,000 nested [', 100008 bytes: ...)``.
    """

    __slots__ = ("blob", "name")

    def __init__(self, name: str, blob: bytes) -> None:
        self.name = name
        self.blob = blob

    def __repr__(self) -> str:
        more = "..." if len(self.blob) > 40 else ""
        return f"Hostile({self.name!r}, {len(self.blob)} bytes: {self.blob[:40]!r}{more})"


@st.composite
def labelled(draw: st.DrawFn, name: str, blobs: st.SearchStrategy[bytes]) -> Hostile:
    """The bytes ``blobs`` makes, labelled ``name``."""
    return Hostile(name, draw(blobs))


# ------------------------------------------------------------------ plain builders


def json_text(doc: object) -> bytes:
    """``doc`` as JSON bytes; lone surrogates become ``\\udXXX`` escapes (valid syntax)."""
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def deep_brackets(depth: int = DEPTH) -> bytes:
    """``depth`` unclosed ``[``: valid JSON up to the end of input, nested past any stack."""
    return b"[" * depth


def deep_objects(depth: int = DEPTH) -> bytes:
    """``{"a":`` nested ``depth`` times and closed again: syntactically valid, deeply nested."""
    return b'{"a":' * depth + b"1" + b"}" * depth


def frame(envelope: bytes, payload: bytes = b"", *, magic: bytes = MAGIC,
          declared: int | None = None) -> bytes:
    """Bundle wire bytes around any envelope text (``declared`` overrides its length field)."""
    length = len(envelope) if declared is None else declared
    return HEADER.pack(magic, length) + envelope + payload


def envelope_of(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The envelope (as a new dict, the roots included) and the payload of a genuine bundle."""
    env, payload = split_bundle(blob, 1 << 24)
    return copy.deepcopy(env), bytes(payload)


def reframe(env: dict[str, Any], payload: bytes) -> bytes:
    """Wire bytes of an edited envelope with its payload (no signing: the edit breaks it)."""
    return frame(json_text(env), payload)


def with_signed_field(blob: bytes, key: str, value: object) -> bytes:
    """A genuine bundle with ``signed[key] = value`` (so the signatures no longer match)."""
    env, payload = envelope_of(blob)
    env["signed"][key] = value
    return reframe(env, payload)


def surrogate_envelope(blob: bytes) -> bytes:
    """A genuine bundle whose signed part holds a lone surrogate (``"\\ud800"`` in its JSON)."""
    return with_signed_field(blob, "note", LONE)


def surrogate_target(blob: bytes) -> bytes:
    """A genuine bundle whose target gateway list holds a lone surrogate string."""
    env, payload = envelope_of(blob)
    env["signed"]["targets"]["gateways"] = [f"gw{LONE}"]
    return reframe(env, payload)


def list_keyid(blob: bytes) -> bytes:
    """A genuine bundle whose first signature's key id is a list where a string belongs."""
    env, payload = envelope_of(blob)
    env["signatures"][0]["keyid"] = [env["signatures"][0]["keyid"]]
    return reframe(env, payload)


def list_sig(blob: bytes) -> bytes:
    """A genuine bundle whose first signature value is a list where a hex string belongs."""
    env, payload = envelope_of(blob)
    env["signatures"][0]["sig"] = [env["signatures"][0]["sig"]]
    return reframe(env, payload)


def huge_version(blob: bytes) -> bytes:
    """A genuine bundle claiming version 10**30."""
    return with_signed_field(blob, "version", HUGE_INT)


def deep_envelope() -> bytes:
    """A bundle frame whose envelope is 100,000 nested ``[`` (under the envelope cap)."""
    return frame(deep_brackets())


def wrong_magic(blob: bytes) -> bytes:
    """A genuine bundle with another magic."""
    return b"EFB2" + blob[4:]


def huge_declared_length(blob: bytes) -> bytes:
    """A genuine bundle whose envelope length field says 4 GiB - 1."""
    return blob[:4] + struct.pack(">I", 0xFFFF_FFFF) + blob[8:]


def oversized_bundle() -> bytes:
    """A frame above the whole-message cap (envelope cap + payload cap): ~1.3 MB of zeros."""
    return frame(b"{}", b"\0" * (MAX_ENVELOPE + MAX_PAYLOAD + 64))


def oversized_envelope() -> bytes:
    """A frame whose envelope (valid JSON) is longer than the envelope cap."""
    return frame(json_text({"pad": "x" * (MAX_ENVELOPE + 16)}))


def truncated(blob: bytes, keep: int) -> bytes:
    """The first ``keep`` bytes of ``blob`` (strictly shorter, never empty)."""
    return blob[:max(1, min(keep, len(blob) - 1))]


# Report/health/state documents for the fleet service.

def big_health(chars: int = 25_000) -> bytes:
    """A health document over the registry's 20,000-character cap."""
    return json_text({"gateway": "x", "pad": "x" * chars})


# Data batches for the ingest.

def v2_batch(header: dict[str, Any] | bytes, body: bytes) -> bytes:
    """A version 2 batch from any header (a dict is written as JSON) and codec body bytes."""
    raw = header if isinstance(header, bytes) else json_text(header)
    return bytes([VERSION_CODEC]) + varint(len(raw)) + raw + body


def codec_claiming(points: int, name: bytes = b"d/p") -> bytes:
    """A codec body of one int series that claims ``points`` points and carries none."""
    return (bytes([2]) + b"EC" + varint(1) + varint(len(name)) + name + varint(points)
            + bytes([1]))


def empty_codec() -> bytes:
    """A codec body with no series (a valid batch of extras only)."""
    return bytes([2]) + b"EC" + varint(0)


def amplified_codec(points: int, name: str = "d/p") -> bytes:
    """A small valid codec body decoding to ``points`` readings (regular grid, one value)."""
    from edge_agent import codecs

    return codecs.encode_batch({name: (list(range(0, points * 1000, 1000)),
                                        [1] * points)})


def surrogate_extras_header(gateway: str, epoch: int, seq: int) -> dict[str, Any]:
    """A v2 header whose extras hold a reading of the series ``d\\ud800/p``."""
    return {"g": gateway, "e": epoch, "s": seq, "x": [[f"d{LONE}/p", 1000, 0, None, 1]]}


def rejection_counters(doc: object, path: str = "") -> dict[str, int]:
    """Every integer under a key mentioning rejection in a service's status document, by path:
    a service that exposes such counters must see them go up under hostile input. (Keys about
    publishes, such as the uplink's ``rejected_publishes``, count what the broker refused of
    ours, not input refused: they are left out.)"""
    out: dict[str, int] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = f"{path}.{key}"
            name = str(key).lower()
            if ("reject" in name and "publish" not in name and isinstance(value, int)
                    and not isinstance(value, bool)):
                out[here] = value
            out.update(rejection_counters(value, here))
    return out


# ------------------------------------------------------------------ hypothesis strategies

_SPECIAL_LEAVES: list[object] = [
    HUGE_INT, -HUGE_INT, 2**63, 2**64, -(2**63) - 1, LONE, LONE_LOW, f"a{LONE}b",
    f"{LONE_LOW}{LONE}", "", None, True, False, 0, -1, 1.5, float("nan"), float("inf"),
    "\x00", "/", "+", "#", "\u2028",
]


_SURROGATE_LEAVES = [LONE, LONE_LOW, f"a{LONE}b", f"gw-{LONE_LOW}"]


def hostile_leaves() -> st.SearchStrategy[object]:
    """Scalars that break naive consumers: huge ints, lone surrogates (often: the one value
    that parses and then cannot be written anywhere), NaN, odd strings."""
    return st.one_of(st.sampled_from(_SURROGATE_LEAVES), st.sampled_from(_SPECIAL_LEAVES),
                     st.integers(), st.text(max_size=8),
                     st.floats(allow_nan=True, allow_infinity=True))


def hostile_values() -> st.SearchStrategy[object]:
    """JSON-able values (lists and objects of hostile leaves) to put where a scalar belongs."""
    return st.recursive(
        hostile_leaves(),
        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                st.dictionaries(st.text(max_size=4), inner, max_size=3)),
        max_leaves=6)


def raw_json_texts() -> st.SearchStrategy[bytes]:
    """Texts a JSON parser chokes on or that parse to something unexpected."""
    return st.one_of(
        st.sampled_from([deep_brackets(), deep_objects(), b"[" * 2000, b"{" * 2000,
                         b"1" * 5000, b"NaN", b"-Infinity", b"1e999", b'"\\ud800"',
                         b"[\"\\udfff\"]", b"\xff\xfe\xfd", b"\xef\xbb\xbf{}", b"null",
                         b'{"a":1,"a":2}', b"{}", b"[]"]),
        st.binary(min_size=1, max_size=256),
        hostile_values().map(json_text))


def _paths(doc: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    out: list[tuple[str | int, ...]] = []
    items: list[tuple[str | int, object]] = []
    if isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


def _replace(doc: Any, path: Sequence[str | int], value: object) -> Any:
    """A deep copy of ``doc`` with the value at ``path`` replaced."""
    new = copy.deepcopy(doc)
    cur = new
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return new


@st.composite
def edited_envelopes(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` (a genuine bundle) with one value of its envelope replaced by a hostile one."""
    env, payload = envelope_of(blob)
    paths = _paths(env)
    # Half the time inside what the verifier reads first (the signed part, the signatures);
    # otherwise anywhere, the root chain included.
    focused = [p for p in paths if p[0] in ("signed", "signatures")]
    inside = bool(focused) and draw(st.booleans())
    path = draw(st.sampled_from(focused if inside else paths))
    return reframe(_replace(env, path, draw(hostile_values())), payload)


@st.composite
def byte_mutations(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` with a few bytes replaced, inserted or deleted."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            data[i] ^= draw(st.integers(1, 255))  # never 0: the byte always changes
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif len(data) > 1:
            del data[i]
    return bytes(data)


def bundle_messages(own: bytes, other: bytes) -> st.SearchStrategy[Hostile]:
    """Hostile messages for a gateway's ``desired/config`` topic; none may be accepted.

    ``own`` is a genuine bundle for the gateway under test (only truncated or reframed: no
    such message can be authentic), ``other`` a genuine bundle for another gateway (edited
    and mutated: an edit that keeps it authentic still targets someone else).
    """
    makers: list[tuple[str, Callable[[], bytes]]] = [
        ("lone surrogate in signed", lambda: surrogate_envelope(other)),
        ("lone surrogate in targets", lambda: surrogate_target(other)),
        ("list as keyid", lambda: list_keyid(other)),
        ("list as sig", lambda: list_sig(other)),
        ("version 10**30", lambda: huge_version(other)),
        ("100,000 nested [", deep_envelope),
        ("wrong magic", lambda: wrong_magic(own)),
        ("envelope length 4 GiB", lambda: huge_declared_length(own)),
        ("envelope over its cap", oversized_envelope)]
    fixed = [Hostile(name, make()) for name, make in makers]
    return st.one_of(
        labelled("random bytes", st.binary(min_size=1, max_size=512)),
        labelled("truncated", st.integers(1, len(own) - 1).map(lambda n: truncated(own, n))),
        labelled("mutated", byte_mutations(other)),
        labelled("edited envelope", edited_envelopes(other)),
        labelled("framed hostile JSON", raw_json_texts().map(frame)),
        st.sampled_from(fixed),
        labelled("random magic", st.binary(min_size=4, max_size=4)
                 .filter(lambda m: m != MAGIC).map(lambda m: m + own[4:])),
        labelled("random envelope length", st.integers(0, 2**32 - 1)
                 .map(lambda n: own[:4] + struct.pack(">I", n) + own[8:])),
    )


_REPORT_KEYS = ["version", "committed", "result", "reason", "kind", "status", "ts", "epoch",
                "gateway", "trial", "good"]


def report_documents() -> st.SearchStrategy[Hostile]:
    """Hostile payloads for a gateway's ``reported``, ``health`` or ``state`` topic."""
    docs = st.dictionaries(st.one_of(st.sampled_from(_REPORT_KEYS), st.text(max_size=4)),
                           hostile_values(), max_size=6).map(json_text)
    fixed = [Hostile("version 10**30", json_text({"version": HUGE_INT})),
             Hostile("committed 10**30", json_text({"committed": HUGE_INT})),
             Hostile("lone surrogate reason", json_text({"reason": LONE, "result": "rejected"})),
             Hostile("lone surrogate result", json_text({"result": LONE})),
             Hostile("100,000 nested [", deep_brackets()),
             Hostile("health over 20,000 characters", big_health())]
    return st.one_of(
        labelled("hostile document", docs), labelled("hostile JSON text", raw_json_texts()),
        labelled("big health", st.integers(HEALTH_CAP, 2 * HEALTH_CAP).map(big_health)),
        st.sampled_from(fixed),
    )


@st.composite
def v2_headers(draw: st.DrawFn, gateway: str) -> dict[str, Any]:
    """A v2 batch header that may lie in any field: gateway, epoch, seq or extras."""
    ints = st.one_of(st.sampled_from([0, 2**63 - 1, 2**63, HUGE_INT, -1]),
                     st.integers(0, 2**63 - 1), hostile_values())
    series = st.one_of(st.sampled_from(["d/p", f"d{LONE}/p", f"d/{LONE_LOW}", "/p", "d/",
                                        "nodevice", f"{LONE}/{LONE}"]), hostile_values())
    extra = st.one_of(
        st.tuples(series, st.one_of(st.integers(0, 2**63 - 1), hostile_values()),
                  st.one_of(st.integers(0, 3), hostile_values()),
                  st.one_of(st.none(), st.integers(0, 255), hostile_values()),
                  hostile_values()).map(list),
        hostile_values())
    return {
        "g": draw(st.one_of(st.just(gateway), st.just(gateway + LONE), hostile_values())),
        "e": draw(ints), "s": draw(ints), "x": draw(st.lists(extra, max_size=3)),
    }


def data_messages(gateway: str, genuine: bytes) -> st.SearchStrategy[Hostile]:
    """Hostile payloads for ``{prefix}/{gateway}/data`` (``genuine`` is one of its batches)."""
    bodies = st.one_of(st.just(b""), st.just(empty_codec()), st.binary(max_size=64),
                       st.sampled_from([codec_claiming(10**7), codec_claiming(2**63),
                                        codec_claiming(2**64 - 1)]))
    fixed = [Hostile("lone surrogate series in extras",
                     v2_batch(surrogate_extras_header(gateway, 1, 1), empty_codec())),
             Hostile("claims 10 million points", v2_batch({"g": gateway, "e": 1, "s": 2,
                                                          "x": []}, codec_claiming(10**7))),
             Hostile("seq 2**63-1", v2_batch({"g": gateway, "e": 2**63 - 1, "s": 2**63 - 1,
                                              "x": []}, empty_codec()))]
    return st.one_of(
        labelled("random bytes", st.binary(min_size=1, max_size=512)),
        labelled("version byte + random", st.tuples(st.sampled_from([b"\x01", b"\x02"]),
                                                    st.binary(max_size=256))
                 .map(lambda t: t[0] + t[1])),
        labelled("mutated", byte_mutations(genuine)),
        labelled("truncated", st.integers(1, len(genuine) - 1)
                 .map(lambda n: truncated(genuine, n))),
        labelled("hostile v2 header", st.tuples(v2_headers(gateway), bodies)
                 .map(lambda t: v2_batch(*t))),
        labelled("hostile v2 header text", st.tuples(raw_json_texts(), bodies)
                 .map(lambda t: v2_batch(*t))),
        st.sampled_from(fixed),
    )
