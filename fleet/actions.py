"""Operator actions shared by the CLI, the service and tests: roots, tokens, enrolment, rollouts.

Each function takes the registry and plain values and returns values; nothing here talks to
the broker (the service publishes what these store).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

from edge_agent.fleet import rollout as ro
from edge_agent.fleet.brokerconf import mosquitto_hash
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.protocol.bundle import make_bundle, root_signed, sign_envelope, split_bundle
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.ids import check_gateway_id, check_site, check_tag
from edge_agent.protocol.keys import PrivateKey, PublicKey
from edge_agent.protocol.verify import count_signatures, role_keys, update_root

DAY_S = 86_400


def now_s() -> int:
    """Wall time in whole seconds (metadata times are integers)."""
    return int(time.time())


def init_root(registry: Registry, root_keys: Sequence[PublicKey], threshold: int,
              release_keys: Sequence[PublicKey], release_threshold: int,
              signers: Sequence[PrivateKey], *, expires_days: int = 365,
              now: int | None = None, operator_keys: Sequence[PublicKey] = (),
              operator_threshold: int = 1) -> dict[str, Any]:
    """Create root v1, signed by at least ``threshold`` of its root keys; store it.

    ``operator_keys`` delegates the operator role, whose keys sign commands."""
    issued = now_s() if now is None else now
    if registry.roots():
        raise ConfigError("the registry already has a root: use 'edge-fleet root rotate'")
    signed = root_signed(1, root_keys, threshold, release_keys, release_threshold,
                         issued=issued, expires=issued + expires_days * DAY_S,
                         operator_keys=operator_keys, operator_threshold=operator_threshold)
    env = sign_envelope(signed, signers)
    keys, k = role_keys(signed, "root")
    got = count_signatures(env, keys)
    if got < k:
        raise ConfigError(f"root v1 needs {k} signatures from its root keys, got {got}: "
                          "pass more --sign keys")
    registry.add_root(env)
    return env


def rotate_root(registry: Registry, root_keys: Sequence[PublicKey], threshold: int,
                release_keys: Sequence[PublicKey], release_threshold: int,
                signers: Sequence[PrivateKey], *, expires_days: int = 365,
                now: int | None = None, operator_keys: Sequence[PublicKey] = (),
                operator_threshold: int = 1) -> dict[str, Any]:
    """Create the next root, signed by the old root's threshold and the new one's; store it.

    A rotation is how a fleet whose root predates commands delegates the operator role."""
    issued = now_s() if now is None else now
    old = registry.latest_root()
    version = int(old["signed"]["version"]) + 1
    signed = root_signed(version, root_keys, threshold, release_keys, release_threshold,
                         issued=issued, expires=issued + expires_days * DAY_S,
                         operator_keys=operator_keys, operator_threshold=operator_threshold)
    env = sign_envelope(signed, signers)
    try:
        update_root(old, [env])  # the gateways' own check, run before anything is stored
    except Exception as exc:
        raise ConfigError(f"root v{version} would not verify on gateways: {exc}") from exc
    registry.add_root(env)
    return env


def check_identity(gateway: object, site: object,
                   tags: Sequence[object]) -> tuple[str, str, list[str]]:
    """(gateway, site, tags) if each follows the id rule (edge_agent.protocol.ids), else
    ConfigError naming the bad value and the rule."""
    try:
        return check_gateway_id(gateway), check_site(site), [check_tag(t) for t in tags]
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def issue_token(registry: Registry, gateway: str, site: str, tags: Sequence[str], *,
                ttl_s: int = 3600, now_ms: int | None = None) -> str:
    """A new single-use enrolment token for ``gateway`` (returned once, stored hashed)."""
    if isinstance(tags, str):  # ("lamps") for ("lamps",): one tag per character otherwise
        raise ConfigError(f"tags must be a list of names, got the string {tags!r}")
    gateway, site, tag_list = check_identity(gateway, site, tags)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    token = secrets.token_urlsafe(24)
    registry.add_token(token, gateway, site, tag_list, now + ttl_s * 1000)
    return token


def enroll(registry: Registry, token: str, *, broker_url: str, prefix: str = "edge",
           now_ms: int | None = None) -> dict[str, Any]:
    """Redeem a token: register the gateway with fresh broker credentials; the answer to send."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    root = registry.latest_root()
    gateway, site, tags = registry.redeem_token(token, now)
    # Tokens issued before ids were checked may name anything: such a token is spent, and
    # its gateway refused before it gets broker credentials.
    gateway, site, tags = check_identity(gateway, site, tags)
    password = secrets.token_urlsafe(24)
    registry.add_gateway(gateway, site, tags, now, mosquitto_hash(password))
    return {"gateway_id": gateway, "site": site, "tags": tags,
            "mqtt": {"url": broker_url, "username": gateway, "password": password,
                     "topic_prefix": prefix},
            "root": root}


def parse_waves(text: str) -> list[int]:
    """'1,10,50,100' -> [1, 10, 50, 100]."""
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise ConfigError(f"--waves {text!r}: expected comma-separated percentages") from exc


def _wave_order(rollout_id: str, gateways: list[str]) -> list[str]:
    # A stable pseudo-random order, so the first waves are not always the same gateways.
    return sorted(gateways, key=lambda g: hashlib.sha256(f"{rollout_id}/{g}".encode()).digest())


def bundle_targets(registry: Registry, selectors: Sequence[str]) -> dict[str, list[str]]:
    """The signed targets of a rollout's bundle, as compact as its selectors.

    A bundle names whom it is for (verify step 6: the gateway's id, site or a tag). Listing
    every selected gateway by id made the bundle grow with the fleet, and so every gateway's
    download and check of it: 10,000 gateways each took a 10,000-id bundle, a cost growing
    with the square of the fleet. "site:X" and "tag:Y" are signed as that site or tag, "gw:ID"
    as that id, and "all" as every site the fleet has; the same gateways match.
    """
    out: dict[str, set[str]] = {"gateways": set(), "sites": set(), "tags": set()}
    for sel in selectors:
        what, _, name = sel.partition(":")
        if sel == "all":
            out["sites"].update(r[0] for r in registry.fetchall(
                "SELECT DISTINCT site FROM gateways"))
        else:
            out[{"gw": "gateways", "site": "sites", "tag": "tags"}[what]].add(name)
    return {k: sorted(v) for k, v in out.items() if v}


def start_rollout(registry: Registry, payload: bytes, selectors: Sequence[str],
                  keys: Sequence[PrivateKey], *, kind: str = "config",
                  waves: Sequence[int] = (1, 10, 50, 100), abort_above_pct: float = 10.0,
                  abort_min_count: int = 3, wave_deadline_s: float = 600.0,
                  expires_days: int = 30, now_ms: int | None = None,
                  rollout_id: str | None = None, version: int | None = None) -> dict[str, Any]:
    """Sign the bundle (and each gateway's previous config under a newer version, for an abort)
    and store a running rollout; the service starts offering it on its next tick."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    gateways = registry.select_gateways(selectors)
    if not gateways:
        raise ConfigError(f"targets {list(selectors)} match no enrolled gateway")
    rid = rollout_id or uuid.uuid4().hex[:10]
    roots = registry.roots()
    issued, expires = now // 1000, now // 1000 + expires_days * DAY_S
    # a release's bundle version is its release number (the gateways' anti-rollback floor)
    version = version if version is not None else registry.next_version(kind)
    targets = bundle_targets(registry, selectors)
    blob = make_bundle(kind, version, payload, keys, issued=issued, expires=expires,
                       roots=roots, **targets)
    sha = hashlib.sha256(payload).hexdigest()
    bundle_id = registry.add_bundle(kind, version, sha, blob, now)
    # Previous configs grouped by payload: one re-signed bundle per group, all at one version.
    previous: dict[str, tuple[bytes, list[str]]] = {}
    # One read for the whole selection, each distinct bundle opened once: at 10,000 gateways,
    # one query per gateway was most of the time it took to start a rollout on PostgreSQL.
    by_bundle: dict[str, list[str]] = {}
    # A committed release is never taken back: software rollouts have no previous bundle.
    for gw, bid in registry.desired() if kind != "software" else ():
        by_bundle.setdefault(bid, []).append(gw)
    selected = set(gateways)
    for bid, holders in sorted(by_bundle.items()):
        gws_here = sorted(selected.intersection(holders))
        if not gws_here:
            continue
        try:
            env, old_payload = split_bundle(registry.bundle(bid), 1 << 20)
        except ConfigError:  # its bundle is gone: nothing to offer back
            continue
        if env["signed"]["kind"] != kind:
            continue
        p = bytes(old_payload)
        previous.setdefault(hashlib.sha256(p).hexdigest(), (p, []))[1].extend(gws_here)
    revert: dict[str, str] = {}
    revert_version = registry.next_version(kind) if previous else 0
    for old_sha, (p, gws) in previous.items():
        # Previous configs that were one for the whole selection take its compact targets.
        back = targets if len(gws) == len(gateways) else {"gateways": sorted(gws)}
        rblob = make_bundle(kind, revert_version, p, keys, issued=issued, expires=expires,
                            roots=roots, **back)
        rid_bundle = registry.add_bundle(kind, revert_version, old_sha, rblob, now)
        revert.update(dict.fromkeys(gws, rid_bundle))
    plan = ro.Plan(id=rid, kind=kind, version=version, bundle_id=bundle_id,
                   gateways=_wave_order(rid, gateways), waves_pct=list(waves),
                   wave_deadline_s=wave_deadline_s, abort_above_pct=abort_above_pct,
                   abort_min_count=abort_min_count, revert_version=revert_version,
                   revert=revert)
    try:
        state = ro.start(plan, now)
    except ValueError as exc:
        raise ConfigError(f"rollout: {exc}") from exc
    RolloutStore(registry).create(state, now)
    return state
