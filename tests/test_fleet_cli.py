"""The ``edge-fleet`` operator CLI, in process against a SQLite registry: keys, roots (init,
rotate, show), sign, enroll-token, gateways, rollout start/status/pause/resume/abort,
broker-config. Every error is a message and exit code 2, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.fleet.cli import main
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import verify_bundle


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_operator_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'fleet.db'}"]
    k = tmp_path / "keys"
    for name in ("root1", "root2", "root3", "rel1", "rel2"):
        assert run(capsys, "keygen", name, "--dir", str(k), *db)[0] == 0
    assert (k / "root1.key").stat().st_mode & 0o777 == 0o600
    rc, _, err = run(capsys, "keygen", "root1", "--dir", str(k), *db)
    assert rc == 2 and "refusing to overwrite" in err
    # root init needs its threshold of signatures
    rc, _, err = run(capsys, "root", "init", *db, "--root-key", str(k / "root1.pub"),
                     "--root-key", str(k / "root2.pub"), "--threshold", "2",
                     "--release-key", str(k / "rel1.pub"), "--sign", str(k / "root1.key"))
    assert rc == 2 and "needs 2 signatures" in err
    rc, out, _ = run(capsys, "root", "init", *db, "--root-key", str(k / "root1.pub"),
                     "--root-key", str(k / "root2.pub"), "--threshold", "2",
                     "--release-key", str(k / "rel1.pub"), "--sign", str(k / "root1.key"),
                     "--sign", str(k / "root2.key"))
    assert rc == 0 and "root v1 stored" in out
    # rotation signed by the new keys only is refused before it is stored
    rc, _, err = run(capsys, "root", "rotate", *db, "--root-key", str(k / "root3.pub"),
                     "--release-key", str(k / "rel2.pub"), "--sign", str(k / "root3.key"))
    assert rc == 2 and "would not verify on gateways" in err and "from root v1" in err
    rc, out, _ = run(capsys, "root", "rotate", *db, "--root-key", str(k / "root2.pub"),
                     "--root-key", str(k / "root3.pub"), "--threshold", "2",
                     "--release-key", str(k / "rel2.pub"), "--sign", str(k / "root1.key"),
                     "--sign", str(k / "root2.key"), "--sign", str(k / "root3.key"))
    assert rc == 0 and "root v2 stored" in out
    rc, out, _ = run(capsys, "root", "show", *db)
    assert "root v2" in out and "fingerprint" in out and "release: 1 of 1" in out

    # tokens, gateways
    rc, token, _ = run(capsys, "enroll-token", *db, "--gateway", "gw-1", "--site", "north",
                       "--tag", "lamps")
    assert rc == 0 and len(token.strip()) > 20
    rc, _, err = run(capsys, "enroll-token", *db, "--gateway", "gw/1", "--site", "north")
    assert rc == 2 and "must not contain '/'" in err
    reg = Registry(db[1])
    reg.add_gateway("gw-1", "north", ["lamps"], 0)
    reg.add_gateway("gw-2", "south", [], 0)
    rc, out, _ = run(capsys, "gateways", *db)
    assert "gw-1" in out and "lamps" in out and "2 gateways" in out

    # an offline-signed bundle verifies against the rotated root
    payload = tmp_path / "site.toml"
    payload.write_text("[gateway]\n")
    rc, out, _ = run(capsys, "sign", *db, "--version", "9", "--payload", str(payload),
                     "--key", str(k / "rel2.key"), "--site", "north", "--out",
                     str(tmp_path / "b.bin"))
    assert rc == 0
    trust = TrustedState("gw-1", "north", (), reg.latest_root())
    assert verify_bundle((tmp_path / "b.bin").read_bytes(), trust, "config",
                         time.time()).accepted

    # rollouts
    rc, _, err = run(capsys, "rollout", "start", *db, "--config", str(payload), "--target",
                     "site:nowhere", "--key", str(k / "rel2.key"))
    assert rc == 2 and "match no enrolled gateway" in err
    rc, _, err = run(capsys, "rollout", "start", *db, "--config", str(payload), "--target",
                     "all", "--key", str(k / "rel2.key"), "--waves", "10,50")
    assert rc == 2 and "ending at 100" in err
    rc, out, _ = run(capsys, "rollout", "start", *db, "--config", str(payload), "--target",
                     "all", "--key", str(k / "rel2.key"), "--waves", "50,100",
                     "--abort-above", "20")
    assert rc == 0 and "started" in out and "2 gateways" in out
    rid = out.split()[1]
    rc, out, _ = run(capsys, "rollout", "status", *db)
    assert rid in out and "running" in out and "offered 1" in out
    for verb in ("pause", "resume", "abort"):
        rc, out, _ = run(capsys, verb, rid, *db)
        assert rc == 0 and f"{verb} queued" in out
    assert RolloutStore(reg).load(rid)[2] == "abort:by hand"  # the latest command wins
    rc, _, err = run(capsys, "rollout", "pause", "nope", *db)
    assert rc == 2 and "no rollout 'nope'" in err

    # broker config from the registry
    reg.add_gateway("gw-3", "south", [], 0, "$7$101$c2FsdA==$aGFzaA==")
    (tmp_path / "fleet.pw").write_text("pw\n")
    rc, out, _ = run(capsys, "broker-config", *db, "--out", str(tmp_path / "auth"),
                     "--fleet-password-file", str(tmp_path / "fleet.pw"))
    assert rc == 0 and "2 users" in out and "fleet's listener is 127.0.0.1:1884" in out
    passwd = (tmp_path / "auth" / "passwd").read_text()
    assert passwd == "gw-3:$7$101$c2FsdA==$aGFzaA==\n"
    assert (tmp_path / "auth" / "fleet-passwd").read_text().startswith("fleet:$7$101$")
    rc, _, err = run(capsys, "broker-config", *db, "--out", str(tmp_path / "auth2"),
                     "--fleet-listener", "ops.internal")
    assert rc == 2 and "expected HOST:PORT" in err and not (tmp_path / "auth2").exists()
    assert "pattern read edge/%u/desired/#" in (tmp_path / "auth" / "acl").read_text()
    reg.close()
