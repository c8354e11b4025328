"""The one error path of both command lines, and the broker login a command line takes: a bad
argument or file is a ``prog: error: ...`` line and status 2, never a traceback, and a password
never travels in (or is echoed from) a broker URL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import cli as agent_cli
from edge_agent.fleet import cli as fleet_cli
from edge_agent.protocol.errors import CommandError, ConfigError, EdgeError
from edge_agent.protocol.shell import (
    PASSWORD_ENV,
    broker_password,
    check_broker_url,
    check_db_url,
    cli_command,
    run_cli,
    shown_url,
)

SECRET = "s3cret-pw"


def fail(exc: BaseException) -> int:
    raise exc


def test_run_cli_prints_each_problem_on_its_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("edge-x", fail, ConfigError(["a.toml: one", "a.toml: two"])) == 2
    assert capsys.readouterr().err.splitlines() == ["edge-x: error: a.toml: one",
                                                    "edge-x: error: a.toml: two"]


def test_run_cli_names_a_file_and_its_reason(capsys: pytest.CaptureFixture[str]) -> None:
    def read() -> int:
        return len(Path("/nonexistent/f").read_bytes())

    assert run_cli("edge-x", read) == 2
    assert capsys.readouterr().err == \
        "edge-x: error: /nonexistent/f: No such file or directory\n"


def test_run_cli_keeps_a_command_errors_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("edge-x", fail, CommandError("cannot watch", status=1)) == 1
    assert run_cli("edge-x", fail, ValueError("bad number")) == 2
    assert run_cli("edge-x", fail, EdgeError("refused")) == 2
    assert capsys.readouterr().err.splitlines() == [
        "edge-x: error: cannot watch", "edge-x: error: bad number", "edge-x: error: refused"]


def test_run_cli_lets_a_bug_through() -> None:
    # only errors about the input are messages; anything else is a bug and keeps its traceback
    with pytest.raises(KeyError):
        run_cli("edge-x", fail, KeyError("x"))


def test_cli_command_passes_arguments_and_the_status_through() -> None:
    @cli_command("edge-x")
    def command(argv: list[str], extra: int = 0) -> int:
        if not argv:
            raise CommandError("needs an argument")
        return len(argv) + extra

    assert command(["a", "b"], extra=1) == 3
    assert command([]) == 2
    assert command.__doc__ is None and command.__name__ == "command"


def test_the_password_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    assert broker_password("ingest", pw, env={}) == SECRET
    assert broker_password("ingest", pw, env={PASSWORD_ENV: "other"}) == SECRET  # file first
    assert broker_password("ingest", None, env={PASSWORD_ENV: SECRET}) == SECRET
    assert broker_password(None, None, env={}) is None
    assert broker_password("ingest", None, env={}) is None
    with pytest.raises(CommandError, match="needs --username"):
        broker_password(None, pw, env={})
    with pytest.raises(CommandError, match=rf"\${PASSWORD_ENV}\) needs --username"):
        broker_password(None, None, env={PASSWORD_ENV: SECRET})
    pw.write_text("\n")
    with pytest.raises(CommandError, match="the file is empty"):
        broker_password("ingest", pw, env={})


def test_a_url_with_credentials_is_refused_without_repeating_them() -> None:
    assert check_broker_url("mqtt://127.0.0.1:1883") == "mqtt://127.0.0.1:1883"
    assert check_broker_url("not a url ::") == "not a url ::"  # the URL parser's business
    for url in (f"mqtt://u:{SECRET}@h:1883", "mqtt://u@h", f"mqtts://:{SECRET}@h"):
        with pytest.raises(CommandError, match="credentials do not go in the URL") as caught:
            check_broker_url(url)
        assert SECRET not in str(caught.value)
    assert shown_url(f"postgresql://fleet:{SECRET}@db:5432/x") == "postgresql://fleet:***@db:5432/x"
    assert shown_url("sqlite:///x.db") == "sqlite:///x.db"


def test_edge_agent_reports_bad_files_in_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert agent_cli.main(["decode", str(tmp_path / "nope.bin")]) == 2
    assert agent_cli.main(["run", str(missing)]) == 2
    assert agent_cli.main(["read", "-c", str(missing), "meter", "energy"]) == 2
    assert agent_cli.main(["doctor", "-c", str(missing), "--no-broker"]) == 1  # a report
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x09junk")
    assert agent_cli.main(["decode", str(junk)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"edge-agent decode: error: {tmp_path / 'nope.bin'}: No such file" in err
    assert "edge-agent run: error: " in err and "edge-agent read: error: " in err
    assert f"edge-agent decode: error: {junk}: " in err


def test_edge_agent_run_refuses_a_login_in_the_broker_url(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = agent_cli.main(["run", str(tmp_path / "site.toml"), "--broker",
                         f"mqtt://gw:{SECRET}@127.0.0.1:1883"])
    err = capsys.readouterr().err
    assert rc == 2 and "credentials do not go in the URL" in err and SECRET not in err, err


def test_edge_agent_tail_takes_a_password_file_not_a_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        agent_cli.main(["tail", "--password", SECRET])
    assert stopped.value.code == 2
    assert "use --password-file PATH" in capsys.readouterr().err
    assert agent_cli.main(["tail", "--broker", f"mqtt://u:{SECRET}@h", "--count", "1"]) == 2
    assert agent_cli.main(["tail", "--password-file", str(tmp_path / "pw"), "--username", "u",
                           "--count", "1"]) == 1  # cannot watch: no password file
    err = capsys.readouterr().err
    assert SECRET not in err and "Traceback" not in err, err
    assert f"{tmp_path / 'pw'}: No such file or directory" in err


def run_fleet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = fleet_cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_edge_fleet_ingest_checks_its_arguments_before_touching_the_database(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ingest.db"
    rc, _, err = run_fleet(capsys, "ingest", "--db", str(db), "--broker",
                           f"mqtt://ingest:{SECRET}@127.0.0.1:1883")
    assert rc == 2 and "credentials do not go in the URL" in err and SECRET not in err, err
    rc, _, err = run_fleet(capsys, "ingest", "--db", str(db))
    assert rc == 2 and "edge-fleet ingest: error: --broker is required" in err
    rc, _, err = run_fleet(capsys, "ingest", "--db", str(db), "--broker", "mqtt://h",
                           "--password-file", str(tmp_path / "pw"), "--username", "ingest")
    assert rc == 2 and f"{tmp_path / 'pw'}: No such file or directory" in err
    rc, _, err = run_fleet(capsys, "ingest", "--db", str(db), "--broker", "http://h")
    assert rc == 2 and "scheme 'http'" in err
    assert not db.exists()
    rc, out, _ = run_fleet(capsys, "ingest", "--db", str(db), "--report")
    assert rc == 0 and "0 open gaps, 0 rejected messages" in out


def test_edge_fleet_hides_a_database_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://fleet:{SECRET}@127.0.0.1:1/none?connect_timeout=2"
    rc, _, err = run_fleet(capsys, "ingest", "--db", url, "--report")
    assert rc == 2 and "Traceback" not in err and SECRET not in err, err
    assert "--db postgresql://fleet:***@127.0.0.1:1/none" in err


@pytest.mark.parametrize("url", [
    f"postgresql://fleet:{SECRET}@127.0.0.1:1/none",
    f"postgres://fleet:{SECRET}@db.internal/fleet?sslmode=require",
    f"postgresql://fleet@127.0.0.1:1/none?password={SECRET}&connect_timeout=2",
    f"postgresql://127.0.0.1/none?PassWord={SECRET}"])
def test_a_password_in_a_db_url_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(CommandError) as info:
        check_db_url(url)
    text = str(info.value)
    assert SECRET not in text and "***" in text, text
    assert "$PGPASSWORD" in text and "~/.pgpass" in text and "passfile=" in text, text


@pytest.mark.parametrize("url", ["sqlite:///fleet.db", "ingest.db", "/var/lib/x.db",
                                 "postgresql://fleet@db.internal/fleet?sslmode=require",
                                 "postgresql://fleet:@h/db",
                                 "postgresql://fleet@h/db?passfile=/etc/edge/pgpass"])
def test_a_db_url_without_a_password_is_taken_as_is(url: str) -> None:
    assert check_db_url(url) == url


# Every edge-fleet command that takes --db, with what else it needs to get that far.
DB_COMMANDS = [("gateways",), ("keygen", "k"), ("root", "show"), ("rollout", "status", "x"),
               ("enroll-token", "--gateway", "gw-1", "--site", "north"),
               ("serve", "--broker", "mqtt://h"), ("broker-config", "--out", "auth"),
               ("ingest", "--report"), ("sign", "--version", "1", "--payload", "p", "--key", "k",
                                        "--out", "o")]


@pytest.mark.parametrize("argv", DB_COMMANDS, ids=[a[0] for a in DB_COMMANDS])
def test_every_db_command_refuses_a_password_before_doing_anything(
        argv: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://fleet:{SECRET}@127.0.0.1:1/none"
    rc, out, err = run_fleet(capsys, *argv, "--db", url)
    assert rc == 2 and SECRET not in out + err and "Traceback" not in err, err
    assert "--db postgresql://fleet:***@127.0.0.1:1/none: a password does not go in the URL" \
        in err and "$PGPASSWORD" in err, err
    assert list(tmp_path.iterdir()) == []  # no key, no auth dir, no database file
    # The same URL from the environment's default is refused the same way.
    monkeypatch.setenv("EDGE_FLEET_DB", url)
    if argv[0] != "ingest":  # the ingest's --db has its own default, not EDGE_FLEET_DB
        rc, out, err = run_fleet(capsys, *argv)
        assert rc == 2 and SECRET not in out + err and "$PGPASSWORD" in err, err


def test_an_ingest_client_id_a_gateway_could_take_is_warned_about(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'ingest.db'}"
    rc, _, err = run_fleet(capsys, "ingest", "--db", db, "--report", "--client-id", "gw-7")
    assert rc == 0 and "warning: --client-id 'gw-7' is not one of the fleet's reserved" in err
    for cid in ("edge-ingest", "edge-ingest-2", "ingest-north"):
        rc, _, err = run_fleet(capsys, "ingest", "--db", db, "--report", "--client-id", cid)
        assert rc == 0 and "warning" not in err, (cid, err)


def test_edge_fleet_serve_refuses_a_login_in_either_broker_url(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    for extra in (["--broker", f"mqtt://fleet:{SECRET}@h"],
                  ["--broker", "mqtt://h", "--public-broker", f"mqtt://gw:{SECRET}@h"]):
        rc, _, err = run_fleet(capsys, "serve", "--db", db, *extra)
        assert rc == 2 and "credentials do not go in the URL" in err and SECRET not in err, err
    rc, _, err = run_fleet(capsys, "serve", "--db", db, "--broker", "mqtt://h", "--http", "x")
    assert rc == 2 and "expected HOST:PORT" in err


def test_edge_agent_ingest_is_an_alias_that_never_imports_the_fleet(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edge_agent", "ingest", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "edge-fleet ingest" in done.stdout and "--password-file" in done.stdout
    done = subprocess.run([sys.executable, "-m", "edge_agent", "ingest", "--db",
                           str(tmp_path / "i.db"), "--report"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "0 open gaps" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "edge_agent", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "alias of `edge-fleet ingest`" in done.stdout
    probe = ("import sys, edge_agent.cli; "
             "sys.exit(any(m.startswith('edge_agent.fleet') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], timeout=60,
                          check=False).returncode == 0
