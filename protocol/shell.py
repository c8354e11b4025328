"""The process shell both command lines share: logging set-up, a graceful end on a signal, the
one error path every command goes through, and the broker login a command line may take."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from edge_agent.protocol.broker import url_has_credentials
from edge_agent.protocol.errors import CommandError, ConfigError, EdgeError

P = ParamSpec("P")
T = TypeVar("T")
USAGE_STATUS = 2
PASSWORD_ENV = "EDGE_MQTT_PASSWORD"


def setup_logging(verbose: bool) -> None:
    """Log to stderr in a format that reads well in journald and a terminal."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` on a fresh loop; SIGINT/SIGTERM set ``stop`` for a graceful end."""
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


# ---- the one error path of every command ---------------------------------------------------

def error_lines(exc: BaseException) -> list[str]:
    """The lines a user reads for an error: every problem of a ConfigError, an OSError's file
    and reason (its errno is noise to an installer), else the message."""
    if isinstance(exc, ConfigError) and exc.problems:
        return list(exc.problems)
    if isinstance(exc, OSError) and exc.strerror:
        return [f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror]
    return str(exc).splitlines() or [type(exc).__name__]


def run_cli(prog: str, fn: Callable[P, int], *args: P.args, **kwargs: P.kwargs) -> int:
    """``fn(...)``'s exit status; an error it raises for bad input is printed on stderr as
    ``prog: error: ...`` lines and ends it with status 2 (or a CommandError's own status)."""
    try:
        return fn(*args, **kwargs)
    except (EdgeError, ValueError, OSError) as exc:
        # ValueError and OSError are what argument conversions and opening a named file raise;
        # a traceback for those would read as a crash of the product.
        for line in error_lines(exc):
            print(f"{prog}: error: {line}", file=sys.stderr)
        return exc.status if isinstance(exc, CommandError) else USAGE_STATUS


def cli_command(prog: str) -> Callable[[Callable[P, int]], Callable[P, int]]:
    """Turn a command function that raises on bad input into an entry point (see run_cli)."""
    def wrap(fn: Callable[P, int]) -> Callable[P, int]:
        @functools.wraps(fn)
        def entry(*args: P.args, **kwargs: P.kwargs) -> int:
            return run_cli(prog, fn, *args, **kwargs)

        return entry

    return wrap


# ---- the broker login of a command line ----------------------------------------------------

class _NoPassword(argparse.Action):
    """``--password``, refused: without it argparse would take it for ``--password-file``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        parser.error(f"{option_string}: a password on the command line shows in ps and shell "
                     f"history; use --password-file PATH or ${PASSWORD_ENV}")


def add_broker_login(ap: argparse.ArgumentParser) -> None:
    """``--username`` and ``--password-file``: a login that never travels in the broker URL
    (a URL is visible in ``ps``, shell history and logs)."""
    ap.add_argument("--username", help="broker user name")
    ap.add_argument("--password-file", type=Path, metavar="PATH",
                    help=f"file holding the broker password (default: ${PASSWORD_ENV} if set)")
    ap.add_argument("--password", action=_NoPassword, help=argparse.SUPPRESS)


def host_port(value: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` of a listening option; CommandError naming the option if it is not one."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise CommandError(f"{option} {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def check_broker_url(url: str, option: str = "--broker") -> str:
    """``url`` if it carries no credentials, else CommandError (which does not repeat them)."""
    if url_has_credentials(url):
        raise CommandError(f"{option} {shown_url(url)}: credentials do not go in the URL (it "
                           "shows in ps, shell history and logs); use --username with "
                           f"--password-file or ${PASSWORD_ENV}")
    return url


def check_db_url(url: str, option: str = "--db") -> str:
    """``url`` if it carries no password (in its user info or a ``password=`` parameter), else
    CommandError saying how libpq takes one instead; the password is not repeated."""
    try:
        parts = urlsplit(url)
        in_userinfo = bool(parts.password)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:  # not a URL at all (a bare file path): no password in it
        return url
    if not in_userinfo and not any(k.lower() == "password" for k, _ in query):
        return url
    # Shown with the password replaced, wherever it was, so the user sees which URL it is.
    shown = urlsplit(shown_url(url))
    shown = shown._replace(query=urlencode(
        [(k, "***" if k.lower() == "password" else v) for k, v in query], safe="*/:"))
    raise CommandError(f"{option} {urlunsplit(shown)}: a password does not go in the URL (it "
                       "shows in ps, shell history and logs); leave it out and let libpq read "
                       "it from $PGPASSWORD, from ~/.pgpass ($PGPASSFILE), or from a password "
                       "file named in the URL (?passfile=/path/to/pgpass, mode 0600)")


def broker_password(username: str | None, password_file: Path | None,
                    env: Mapping[str, str] | None = None) -> str | None:
    """The broker password from ``password_file``, else $EDGE_MQTT_PASSWORD, else None."""
    env = os.environ if env is None else env
    password: str | None
    if password_file is not None:
        password = password_file.read_text().strip()
        if not password:
            raise CommandError(f"--password-file {password_file}: the file is empty")
    else:
        password = env.get(PASSWORD_ENV) or None
    if password is not None and not username:
        # aiomqtt sends no password without a user name: refuse rather than connect anonymously
        source = f"--password-file {password_file}" if password_file else f"${PASSWORD_ENV}"
        raise CommandError(f"a broker password ({source}) needs --username")
    return password


def opened(option: str, url: str, opener: Callable[[], T]) -> T:
    """``opener()``; a database driver's own exception becomes an EdgeError naming the option
    and its URL (password hidden), since the driver's types are no error of ours."""
    try:
        return opener()
    except (EdgeError, OSError):
        raise
    except Exception as exc:
        raise EdgeError(f"{option} {shown_url(url)}: {type(exc).__name__}: {exc}") from exc


def shown_url(url: str) -> str:
    """``url`` fit for an error message or a log: a password in it is replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL at all (a bare path): nothing in it to hide
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
